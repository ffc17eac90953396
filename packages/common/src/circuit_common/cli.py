"""The one error-to-exit-code policy and the command-line plumbing every tool uses."""

import sys
from collections.abc import Callable
from functools import cached_property

from .backend import StateBackend, open_backend
from .config import Settings, load_settings, split_global_options
from .errors import CircuitError, UsageError

INTERNAL_ERROR = 70


class Context:
    """What a command handler gets: the merged settings and the state store."""

    def __init__(self, settings: Settings, store: StateBackend | None = None):
        self.settings = settings
        if store is not None:
            self.store = store  # the cached property's slot

    @cached_property
    def store(self) -> StateBackend:
        """The state backend of --state: the directory, or the backend registered for the
        URL's scheme (circuit_common.backend)."""
        return open_backend(self.settings)


class Arguments(dict):
    """docopt's answer; a command or option of another usage line is None."""

    def __missing__(self, key):
        return None


def parse(doc: str, argv: list[str]) -> dict:
    """docopt over argv; a malformed line becomes one UsageError line naming the right usage."""
    from docopt import DocoptExit, docopt

    try:
        args = Arguments(docopt(for_command(doc, argv), argv=argv, default_help=True))
    except DocoptExit:
        raise UsageError(_usage_hint(doc, argv)) from None
    for key, value in args.items():  # `--ifname ''` was the default ifname, silently
        if key.startswith("--") and (value == "" or (isinstance(value, list) and "" in value)):
            raise UsageError(f"option {key} is given an empty value; give a value or leave "
                             "the option out")
    return args


def for_command(doc: str, argv: list[str]) -> str:
    """doc with only the usage lines of the command argv names (docopt then parses a tenth
    of the patterns: ≈ 3 ms less on every command); all of it for help, or no such command."""
    words = [a for a in argv if not a.startswith("-")]
    head, found, rest = doc.partition("Usage:")
    if not words or not found or {"-h", "--help"} & set(argv):
        return doc
    usage, blank, after = rest.partition("\n\n")
    lines = usage.strip("\n").splitlines()
    prog = lines[0].split()[0]
    kept, keeping = [], False
    for line in lines:
        tokens = line.split()
        if tokens[:1] == [prog]:
            keeping = tokens[1:2] == words[:1]
        if keeping:
            kept.append(line)
    return f"{head}Usage:\n" + "\n".join(kept) + blank + after if kept else doc


def _usage_hint(doc: str, argv: list[str]) -> str:
    usage = doc.split("Usage:", 1)[1].split("\n\n", 1)[0]
    lines = [u.strip() for u in usage.strip().splitlines()]
    prog = lines[0].split()[0]
    words = [a for a in argv if not a.startswith("-")]
    matches = [u for u in lines if words and u.split()[1:2] == words[:1]]
    if matches:
        return f"bad arguments; usage: {matches[0]}  (see {prog} --help)"
    if words:
        return f"unknown command {words[0]!r}; see {prog} --help"
    return f"missing command; see {prog} --help"


def run(handler: Callable[[list[str], Context], int | None], argv: list[str] | None = None) -> int:
    """Run a tool's handler under the shared policy: CircuitError → one line and its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        options, rest = split_global_options(argv)
        ctx = Context(load_settings(options))
        ctx.store  # noqa: B018 (a --state no backend serves is refused before any command)
        return handler(rest, ctx) or 0
    except CircuitError as e:
        if debug:
            print_traceback()
        print(f"circuit: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in circuit, not the user's mistake
        if debug:
            print_traceback()
        print(f"circuit: internal error: {e!r} (run again with --debug for the traceback)",
              file=sys.stderr)
        return INTERNAL_ERROR


MAX_ERROR_LINE = 2000


def one_line(text: str) -> str:
    """An error as one line of at most MAX_ERROR_LINE characters: a value it quotes (a 10 MB
    stdin line) is cut in the middle."""
    text = text.replace("\n", " ")
    if len(text) <= MAX_ERROR_LINE:
        return text
    return f"{text[:MAX_ERROR_LINE - 200]} … ({len(text) - MAX_ERROR_LINE + 100} characters " \
           f"cut) … {text[-100:]}"


def print_traceback() -> None:
    """The current exception's traceback on stderr (--debug): traceback loads only then."""
    import traceback

    traceback.print_exc()
