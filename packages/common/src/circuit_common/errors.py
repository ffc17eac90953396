"""One exception hierarchy for every circuit tool; each class carries its stable exit code."""


class CircuitError(Exception):
    """A failure the user can act on: printed as one line, never as a traceback."""

    exit_code = 1


class UsageError(CircuitError):
    """The command line is malformed."""

    exit_code = 2


class InvalidInput(CircuitError):
    """A value (name, address, file, rate) is not acceptable."""

    exit_code = 3


class NotFound(CircuitError):
    """A named network, service, container or attachment does not exist."""

    exit_code = 4


class Conflict(CircuitError):
    """The request clashes with what exists (duplicate, still in use, already connected)."""

    exit_code = 5


class LockTimeout(CircuitError):
    """Another circuit process held a lock for longer than lock_timeout."""

    exit_code = 6


class PluginError(CircuitError):
    """A CNI plugin failed, timed out or returned something unusable."""

    exit_code = 7


class KernelUnsupported(CircuitError):
    """The running kernel lacks a feature the command needs."""

    exit_code = 8


class StateCorrupt(CircuitError):
    """A record in the state directory cannot be read."""

    exit_code = 9


class EnvironmentFault(CircuitError):
    """The machine refuses: no permission, a read-only or full disk, no memory."""

    exit_code = 10


class Unavailable(CircuitError):
    """A shared store (etcd) could not be reached or has no quorum; nothing local changed."""
    exit_code = 11


class AccessDenied(CircuitError):
    """A shared store (etcd) refused this client: its TLS certificate or ours, or the user and
    password; trying again will not help; nothing local changed."""

    exit_code = 12
