"""Output shared by every tool: aligned tables in the seed README's style, JSON, names only."""

import json
import sys
from collections.abc import Sequence

FORMATS = ("table", "json")


def check_format(value: str | None, quiet: bool = False) -> str:
    """The --format value, refused unless it is one circuit knows; with quiet (-q, names
    only) json is refused: the two ask for different output."""
    from .errors import InvalidInput, UsageError

    fmt = value or "table"
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if quiet and fmt == "json":
        raise UsageError("-q prints names only, --format json the whole listing; give one of "
                         "them")
    return fmt


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 details: dict[int, list[str]] | None = None,
                 min_width: int = 20, padding: int = 3) -> str:
    """Columns at least min_width wide (as Go's tabwriter in the original); details follow rows."""
    widths = [max(min_width, max((len(str(r[i])) for r in rows), default=0) + padding,
                  len(h) + padding) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).ljust(w) for c, w in zip(cells[:-1], widths, strict=False)]
        return ("".join(padded) + str(cells[-1])).rstrip()

    out = [line([h.upper() for h in headers])]
    for i, row in enumerate(rows):
        out.append(line(row))
        out.extend((details or {}).get(i, []))
    return "\n".join(out) + "\n"


def emit(text: str) -> None:
    sys.stdout.write(text)


def emit_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def emit_names(names: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{n}\n" for n in names))
