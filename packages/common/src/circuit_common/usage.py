"""A tool's docopt text read as data: its summary, usage lines, options and other paragraphs.

The man pages and the shell completion are made from these, so neither can drift from the
usage the tools parse.
"""

import re
from collections import namedtuple

Option = namedtuple("Option", "names value help")  # names ("-q",) or ("--format",); value "FMT"

# an option's names, each with its value or not ("-p SPEC, --publish SPEC"), then its help
_OPTION_LINE = re.compile(r"\s*((?:-\w|--[\w-]+)(?: [A-Z][A-Z0-9_]*)?"
                          r"(?:,? (?:-\w|--[\w-]+)(?: [A-Z][A-Z0-9_]*)?)*)(?:\s{2,}(.*))?$")


class Usage:
    """The parts of one docopt text."""

    def __init__(self, doc: str):
        head, _, rest = doc.strip().partition("\n")
        self.prog, _, self.summary = head.partition(": ")
        blocks = re.split(r"\n\s*\n", rest.strip())
        self.lines: list[str] = []
        self.options: list[Option] = []
        self.paragraphs: list[str] = []
        for block in blocks:
            title, _, body = block.partition("\n")
            if title == "Usage:":
                self.lines = _usage_lines(body, self.prog)
            elif title == "Options:":
                self.options = parse_options(body)
            else:
                self.paragraphs.append(block)


def _usage_lines(body: str, prog: str) -> list[str]:
    """One string per usage line: continuation lines joined, explanations (after 2+ spaces) cut."""
    lines: list[str] = []
    for raw in body.splitlines():
        words = re.split(r"\s{2,}", raw.strip())[0]
        if words.split(" ", 1)[0] == prog or not lines:
            lines.append(words)
        else:
            lines[-1] += " " + words
    return lines


def parse_options(body: str) -> list[Option]:
    """Options of an Options: block (or circuit's global options help), descriptions joined."""
    options: list[Option] = []
    for line in body.splitlines():
        found = _OPTION_LINE.match(line)
        if found and line.lstrip().startswith("-"):
            names = tuple(re.findall(r"--?\w[\w-]*", found[1]))
            value = re.search(r" ([A-Z][A-Z0-9_]*)", found[1])
            options.append(Option(names, value[1] if value else "", found[2] or ""))
        elif options and line.strip():
            last = options[-1]
            options[-1] = last._replace(help=f"{last.help} {line.strip()}".strip())
    return options


def slots(line: str) -> tuple[list[set[str] | str], list[str]]:
    """A usage line's positional slots after the program name, each a set of literal words or a
    PLACEHOLDER ("NAME..." repeats), and the options it names (an option's value is no slot)."""
    words = re.sub(r"[\[\]()]", " ", line).replace("|", " | ").split()[1:]
    positional: list[set[str] | str] = []
    options: list[str] = []
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        if word.startswith("-"):
            options.append(word)
        elif word in ("|", "...") or (word.isupper() and before.startswith("-")):
            continue
        elif word.rstrip(".").isupper():
            positional.append(word)
        elif before == "|" and positional and isinstance(positional[-1], set):
            positional[-1].add(word)
        else:
            positional.append({word})
    return positional, options


def tool_name(module: str) -> str:
    """The console script of a tool's module: circuit_net.cli → circuit-net."""
    return module.split(".")[0].replace("_", "-")
