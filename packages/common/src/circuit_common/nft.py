"""nftables through `nft -j -f -`: one JSON document is one transaction (all of it or nothing,
as `nft -f` loads a file), and state is read back as JSON, never by parsing `nft list` text."""

import json

from .errors import CircuitError, NotFound


class NftRefused(CircuitError):
    """nft refused a transaction or a listing; reason is its own words."""

    def __init__(self, reason: str):
        super().__init__(f"nftables refused: {reason}")
        self.reason = reason


def transaction(commands: list[dict]) -> None:
    """Carry out commands ({"add": …}, {"delete": …}, …) in one nftables transaction."""
    if commands:
        # no circular check: ≈ 25 % of encoding 5,000 LB targets' elements
        proc = _nft(["-j", "-f", "-"], json.dumps({"nftables": commands}, check_circular=False,
                                                  separators=(",", ":")))
        if proc.returncode != 0:
            raise NftRefused(_reason(proc))


def objects(*what: str) -> list[dict]:
    """What `nft -j list WHAT…` gives (a table, a chain, …), without metainfo; [] when the
    object does not exist."""
    proc = _nft(["-j", "list", *what])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return []
        raise NftRefused(_reason(proc))
    return [item for item in json.loads(proc.stdout)["nftables"] if "metainfo" not in item]


def _nft(args: list[str], stdin: str | None = None):
    import subprocess

    try:
        return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        raise NotFound("nft is not installed (Debian: nftables); circuit needs it") from None


def _reason(proc) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if "Error:" in line]
    return lines[0].split("Error:", 1)[1].strip() if lines else f"nft exited {proc.returncode}"
