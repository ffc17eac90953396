"""Man pages (roff, section 1) made from the tools' docopt usage text, so they cannot drift.

NAME from the summary line, SYNOPSIS from the usage lines, DESCRIPTION from the other
paragraphs, OPTIONS and GLOBAL OPTIONS from the option lists, EXAMPLES from an "Examples:"
paragraph, ENVIRONMENT from the variables the global options name ("env NAME"), FILES from
the defaults, EXIT STATUS from the error classes.
"""

import os
import re

from . import VERSION, errors
from .cli import INTERNAL_ERROR, Context, run
from .config import DEFAULT_CNI_CACHE_DIR, DEFAULT_CONFIG, DEFAULT_STATE_DIR, GLOBAL_HELP
from .errors import EnvironmentFault, UsageError
from .usage import Option, Usage, parse_options


def escape(text: str) -> str:
    """Text as roff shows it: backslashes and hyphens kept, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def exit_codes() -> list[tuple[int, str]]:
    """(code, meaning) of every error class, and the internal error."""
    classes = {c.exit_code: c.__doc__.strip() for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.CircuitError)}
    return [(0, "Success."), *sorted(classes.items()),
            (INTERNAL_ERROR, "An internal error: a bug in circuit (--debug shows the traceback).")]


def _options(options: list[Option]) -> list[str]:
    out = []
    for o in options:
        names = ", ".join(f"\\fB{escape(n)}\\fR" for n in o.names)
        out += [".TP", names + (f" \\fI{escape(o.value)}\\fR" if o.value else ""), escape(o.help)]
    return out


def _paragraph(block: str) -> list[str]:
    """A paragraph as flowing text; its indented lines (lists, examples) kept as they are."""
    out: list[str] = []
    for line in block.splitlines():
        if line.startswith(" "):
            out += [".nf", escape(line), ".fi"]
        else:
            out.append(escape(line))
    return [".PP", *out]


FILES = ((DEFAULT_CONFIG, "the config file: keys as the global options, e.g. state, cni_path"),
         (DEFAULT_STATE_DIR, "the state: networks, attachments, intents, QoS policies, services"),
         (DEFAULT_CNI_CACHE_DIR, "libcni's cache: CNI results, host-local's reservations"),
         ("/run/runc", "runc's root, where runc container ids are looked up"))
ALIASES = {"circuit-network": "circuit-net"}  # `circuit network` is circuit-net


def environment() -> list[tuple[str, str]]:
    """(variable, meaning) of each environment variable a global option stands for."""
    found = []
    for option in parse_options(GLOBAL_HELP):
        for name in re.findall(r"\benv ([A-Z_]+)(?: or ([A-Z_]+))?", option.help):
            found += [(n, f"as {option.names[0]}") for n in name if n]
    return found


def render(doc: str, see_also: list[str]) -> str:
    """The man page of the tool whose docopt text is doc."""
    usage = Usage(doc)
    page = [f'.TH "{usage.prog.upper()}" 1 "" "circuit {VERSION}" "User Commands"',
            ".SH NAME", f"{escape(usage.prog)} \\- {escape(usage.summary)}",
            ".SH SYNOPSIS", ".nf", *(escape(line) for line in usage.lines), ".fi",
            ".SH DESCRIPTION"]
    examples = [b for b in usage.paragraphs if b.startswith("Examples:")]
    for block in usage.paragraphs:
        if block not in examples:
            page += _paragraph(block)
    if usage.options:
        page += [".SH OPTIONS", *_options(usage.options)]
    page += [".SH GLOBAL OPTIONS", "They may stand anywhere on the command line.",
             *_options(parse_options(GLOBAL_HELP))]
    for block in examples:
        page += [".SH EXAMPLES", *_paragraph(block.partition("\n")[2])[1:]]
    page += [".SH ENVIRONMENT"]
    for name, meaning in environment():
        page += [".TP", f"\\fB{name}\\fR", escape(meaning)]
    page += [".SH FILES"]
    for path, meaning in FILES:
        page += [".TP", f"\\fI{escape(path)}\\fR", escape(meaning)]
    page += [".SH EXIT STATUS"]
    for code, meaning in exit_codes():
        page += [".TP", f"\\fB{code}\\fR", escape(meaning)]
    page += [".SH SEE ALSO", ", ".join(f"\\fB{escape(n)}\\fR(1)" for n in see_also
                                      if n != usage.prog)]
    return "\n".join(page) + "\n"


def write_all(directory: str, docs: dict[str, str]) -> list[str]:
    """name.1 in directory for every tool name → docopt text; the paths written."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, doc in docs.items():
        path = os.path.join(directory, f"{name}.1")
        with open(path, "w") as f:
            f.write(render(doc, list(docs)))
        paths.append(path)
    for alias, name in ALIASES.items():
        if name in docs:
            path = os.path.join(directory, f"{alias}.1")
            with open(path, "w") as f:
                f.write(f".so man1/{name}.1\n")
            paths.append(path)
    return paths


def main(argv: list[str], docs: dict[str, str]) -> int:
    """`circuit manpages DIR`: writes the man pages and prints their paths."""
    def handle(rest: list[str], ctx: Context) -> int:
        if len(rest) != 1:
            raise UsageError("usage: circuit manpages DIR")
        try:
            paths = write_all(rest[0], docs)
        except OSError as e:
            raise EnvironmentFault(f"cannot write man pages in {rest[0]}: {e.strerror}") from None
        print("\n".join(paths))
        return 0

    return run(handle, argv)
