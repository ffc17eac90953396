"""Table circuit_lb through circuit_common.nft (`nft -j -f -`: one JSON document, one
transaction; state read back as JSON), with nft's refusals in circuit-lb's words."""

from circuit_common import nft
from circuit_common.errors import Conflict, KernelUnsupported

# What nft says when the kernel's objects are not those a change was computed against.
DRIFT = ("No such file or directory", "File exists", "Device or resource busy")


def transaction(commands: list[dict]) -> None:
    """Carry out commands ({"add": …}, {"delete": …}, …) in one nftables transaction."""
    try:
        nft.transaction(commands)
    except nft.NftRefused as e:
        if any(word in e.reason for word in DRIFT):
            raise Conflict(f"the kernel's nftables table differs from circuit's ({e.reason}); "
                           "`circuit lb list` shows how, `circuit restore` makes the kernel "
                           "match") from None
        raise KernelUnsupported(f"nftables refused circuit's change: {e.reason}") from None


def list_table(family: str, name: str) -> list[dict]:
    """The objects of a table as `nft -j list table` gives them; [] when there is none."""
    return nft.objects("table", family, name)


def list_chain(name: str) -> list[dict]:
    """The objects of chain name of table circuit_lb; [] when it (or the table) is absent."""
    from .table import TABLE

    return nft.objects("chain", TABLE["family"], TABLE["table"], name)
