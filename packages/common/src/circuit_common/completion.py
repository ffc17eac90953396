"""Shell completion for bash and zsh: commands and flags from the tools' usage text, network
and service names from the state, runc container ids from runc's state directory.

`circuit completion bash|zsh` prints the script; the script asks
`circuit completion words -- WORD...` (the words up to the cursor, the last one being
completed) and gets one candidate a line, or ::files / ::dirs for the shell's own.
"""

import os
import re
from importlib import import_module

from .cli import Context, run
from .config import GLOBAL_HELP, load_settings, split_global_options
from .errors import CircuitError, UsageError
from .output import emit, emit_names
from .usage import Usage, parse_options, slots, tool_name
from .validate import NAME_RE

FILES, DIRS = "::files", "::dirs"
RUNC_ROOT = "/run/runc"
RUNC_ID_RE = re.compile(r"[\w+.-]+", re.ASCII)  # runc's own rule for container ids
# What a placeholder stands for, by tool; the default row applies to every tool.
SOURCES = {
    None: {"NETWORK": "networks", "NAME": "networks", "TARGET": "containers",
           "PATH": FILES, "FILE": FILES, "DIR": DIRS, "DIRS": DIRS, "BUNDLE": DIRS},
    "circuit-lb": {"NAME": "services", "TARGET": None},
}

BASH = """\
# bash completion for {tools} (circuit completion bash)
_circuit() {{
    local IFS=$'\\n' cur=${{COMP_WORDS[COMP_CWORD]}} reply
    reply=$(circuit completion words -- "${{COMP_WORDS[@]:0:COMP_CWORD+1}}" 2>/dev/null) || return
    case $reply in
        {files}) compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur")) ;;
        {dirs}) compopt -o filenames; COMPREPLY=($(compgen -d -- "$cur")) ;;
        *) COMPREPLY=($reply) ;;
    esac
}}
complete -F _circuit {tools}
"""

ZSH = """\
#compdef {tools}
# zsh completion for {tools} (circuit completion zsh): as _circuit in $fpath, or sourced
_circuit() {{
    local -a reply
    reply=(${{(f)"$(circuit completion words -- "${{(@Q)words[1,CURRENT]}}" 2>/dev/null)"}})
    case $reply[1] in
        {files}) _files ;;
        {dirs}) _files -/ ;;
        *) compadd -a reply ;;
    esac
}}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _circuit "$@"
else
    compdef _circuit {tools}
fi
"""


def script(shell: str, tools: list[str]) -> str:
    templates = {"bash": BASH, "zsh": ZSH}
    if shell not in templates:
        raise UsageError(f"no completion for shell {shell!r}; use bash or zsh")
    return templates[shell].format(tools=" ".join(tools), files=FILES, dirs=DIRS)


class Completer:
    """Candidates for the last word of a command line, from the usage texts.

    doc: the dispatcher's usage; groups: command words → the tool module that handles them
    (as bin/circuit dispatches), e.g. ("network", "qos") → "circuit_qos.cli"; aliases: a
    command word → the words it stands for, e.g. "top" → ("metrics", "top")."""

    def __init__(self, doc: str, groups: dict[tuple[str, ...], str],
                 aliases: dict[str, tuple[str, ...]] | None = None):
        self.doc = doc
        self.groups = groups
        self.aliases = aliases or {}
        self.global_options = parse_options(GLOBAL_HELP)

    def tool_doc(self, module: str) -> str:
        return import_module(module).__doc__

    def candidates(self, words: list[str]) -> list[str]:
        prog, typed, cur = os.path.basename(words[0]), words[1:-1], words[-1]
        value_options = {n: o for o in self.global_options if o.value for n in o.names}
        if typed and typed[-1] in value_options:
            return _for_placeholder(value_options[typed[-1]].value, {}, None)
        options, positional = split_global_options_leniently(typed, value_options)
        if prog == "circuit":
            positional = self.expand(positional)
        doc, positional, extra = self.doc_for(prog, positional)
        usage = Usage(doc)
        tool = usage.prog if usage.prog != "circuit" else None
        option_values = {n: o for o in usage.options if o.value for n in o.names}
        if positional and positional[-1] in option_values and typed[-1] == positional[-1]:
            option = option_values[positional[-1]]
            return _matching(_for_placeholder(option.value, options, tool, option.help), cur)
        positional = [w for i, w in enumerate(positional)
                      if not w.startswith("-")
                      and not (i and positional[i - 1] in option_values)]
        lines = [slots(line) for line in usage.lines]
        fitting = [(s, o) for s, o in lines if _fits(s, positional)]
        if cur.startswith("-"):
            names = {n for _, opts in fitting for n in opts} | {"--help"}
            names |= {n for o in self.global_options for n in o.names}
            return _matching(sorted(names), cur)
        found: list[str] = list(extra)
        for s, _ in fitting:
            slot = _slot(s, len(positional))
            if isinstance(slot, set):
                found += sorted(slot)
            elif slot is not None:
                found += _for_placeholder(slot.rstrip("."), options, tool)
        if FILES in found or DIRS in found:
            return [FILES if FILES in found else DIRS]
        return _matching(sorted(set(found)), cur)

    def expand(self, positional: list[str]) -> list[str]:
        """The words with the command word replaced by what it is an alias of."""
        for i, word in enumerate(positional):
            if not word.startswith("-"):
                return [*positional[:i], *self.aliases.get(word, (word,)), *positional[i + 1:]]
        return positional

    def doc_for(self, prog: str, positional: list[str]) -> tuple[str, list[str], list[str]]:
        """The usage text that governs the words, the words it sees, and sub-groups' words."""
        modules = [m for m in self.groups.values() if tool_name(m) == prog]
        if modules:
            return self.tool_doc(modules[0]), positional, []
        words = [w for w in positional if not w.startswith("-")]
        for key in sorted(self.groups, key=len, reverse=True):
            if tuple(words[:len(key)]) == key:
                rest = list(positional)
                for word in key:
                    rest.remove(word)
                deeper = [k[len(key)] for k in self.groups
                          if len(k) > len(key) and k[:len(key)] == key]
                return self.tool_doc(self.groups[key]), rest, deeper if rest == [] else []
        return self.doc, positional, []


def split_global_options_leniently(words: list[str], value_options: dict) -> tuple[dict, list]:
    """The global options among the words typed so far (a bad one is ignored), and the rest."""
    try:
        return split_global_options(words)
    except CircuitError:
        return {}, [w for w in words if w not in value_options]


def _fits(slots_: list, positional: list[str]) -> bool:
    """True when the words typed so far match a usage line's first slots."""
    for i, word in enumerate(positional):
        slot = _slot(slots_, i)
        if slot is None or (isinstance(slot, set) and word not in slot):
            return False
    return True


def _slot(slots_: list, i: int):
    if i < len(slots_):
        return slots_[i]
    if slots_ and isinstance(slots_[-1], str) and slots_[-1].endswith("..."):
        return slots_[-1]
    return None


def _for_placeholder(placeholder: str, options: dict, tool: str | None,
                     help_text: str = "") -> list[str]:
    """Candidates for a PLACEHOLDER: the values its help lists (`table or json`), names from
    the state or runc, or ::files / ::dirs."""
    listed = _listed_values(help_text)
    if listed:
        return listed
    source = {**SOURCES[None], **SOURCES.get(tool, {})}.get(placeholder)
    if source in (FILES, DIRS):
        return [source]
    if source is None:
        return []
    try:  # a path typed as ~/dir: the shell expands it only when the command runs
        settings = load_settings({k: os.path.expanduser(v) if isinstance(v, str) else v
                                  for k, v in options.items()})
    except CircuitError:
        return []
    if source == "containers":
        directory = settings.runc_root or RUNC_ROOT
        return _names(directory, lambda n: RUNC_ID_RE.fullmatch(n)
                      and os.path.isdir(os.path.join(directory, n)))
    directory = os.path.join(settings.state_dir, source)
    return [n[:-len(".json")] for n in _names(
        directory, lambda n: n.endswith(".json") and NAME_RE.fullmatch(n[:-len(".json")]))]


def _listed_values(help_text: str) -> list[str]:
    """`masq, route or tunnel [default: masq]` → masq route tunnel; prose → nothing."""
    head = re.sub(r"\(.*?\)", "", help_text).split("[", 1)[0].split(";", 1)[0]
    head = head.strip().rstrip(", .")
    words = head.replace(" or ", ", ").split(", ")
    return words if head and all(w.isalnum() and w.islower() for w in words) else []


def _names(directory: str, keep) -> list[str]:
    """The entries of directory that keep accepts: only names circuit or runc would make reach
    the shell (a file called `*.json` would be a glob in bash's completion)."""
    try:
        return sorted(n for n in os.listdir(directory) if keep(n))
    except OSError:
        return []


def _matching(candidates: list[str], cur: str) -> list[str]:
    return [c for c in candidates if c.startswith(cur)]


def main(argv: list[str], doc: str, groups: dict[tuple[str, ...], str],
         aliases: dict[str, tuple[str, ...]] | None = None) -> int:
    """`circuit completion bash|zsh`, and the scripts' `circuit completion words -- WORD...`."""
    def handle(rest: list[str], ctx: Context) -> int:
        if rest[:2] == ["words", "--"] and len(rest) > 2:
            emit_names(Completer(doc, groups, aliases).candidates(rest[2:]))
        elif len(rest) == 1:
            emit(script(rest[0], ["circuit", *map(tool_name, dict.fromkeys(groups.values()))]))
        else:
            raise UsageError("usage: circuit completion bash|zsh")
        return 0

    return run(handle, argv)
