"""nftables through `nft -j -f -`: one JSON document is one transaction (all of it or nothing,
as `nft -f` loads a file), and state is read back as JSON, never by parsing `nft list` text."""

import json

from circuit_common.errors import Conflict, KernelUnsupported, NotFound

# What nft says when the kernel's objects are not those a change was computed against.
DRIFT = ("No such file or directory", "File exists", "Device or resource busy")


def transaction(commands: list[dict]) -> None:
    """Carry out commands ({"add": …}, {"delete": …}, …) in one nftables transaction."""
    if not commands:
        return
    proc = _nft(["-j", "-f", "-"], json.dumps({"nftables": commands}, separators=(",", ":")))
    if proc.returncode != 0:
        reason = _reason(proc)
        if any(word in reason for word in DRIFT):
            raise Conflict(f"the kernel's nftables table differs from circuit's ({reason}); "
                           "`circuit lb list` shows how, `circuit restore` makes the kernel "
                           "match")
        raise KernelUnsupported(f"nftables refused circuit's change: {reason}")


def list_table(family: str, name: str) -> list[dict]:
    """The objects of a table as `nft -j list table` gives them; [] when there is none."""
    proc = _nft(["-j", "list", "table", family, name])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return []
        raise KernelUnsupported(f"nft cannot list table {family} {name}: {_reason(proc)}")
    return [item for item in json.loads(proc.stdout)["nftables"] if "metainfo" not in item]


def _nft(args: list[str], stdin: str | None = None):
    import subprocess

    try:
        return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        raise NotFound("nft is not installed; circuit-lb needs nftables") from None


def _reason(proc) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if "Error:" in line]
    return lines[0].split("Error:", 1)[1].strip() if lines else f"nft exited {proc.returncode}"
