"""The etcd:// state URL (etcds://: over TLS): the members to try, the key prefix circuit
keeps below, and how circuit reaches them (the --etcd-* settings)."""

from circuit_common.config import read_small_file
from circuit_common.errors import InvalidInput
from circuit_common.validate import ascii_number


class EtcdState:
    """Where shared state lives when --state is an etcd:// or etcds:// URL: the members to
    try, in order, the key prefix below which circuit keeps everything, and how to reach them:
    TLS (etcds://) with a CA and a client certificate, a user of etcd's auth."""

    def __init__(self, endpoints: list[str], prefix: str, tls: bool = False):
        self.endpoints = endpoints
        self.prefix = prefix
        self.tls = tls
        self.cafile: str | None = None  # None: the system's CAs
        self.certfile: str | None = None
        self.keyfile: str | None = None
        self.username: str | None = None
        self.password: str | None = None  # or read from password_file when it is needed
        self.password_file: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def read_password(self) -> str | None:
        """The password, from password_file when one is given (its first line): read when
        circuit authenticates, so a changed file is taken up by a running agent."""
        if self.password_file is None:
            return self.password
        data = read_small_file(self.password_file, "etcd password file")
        try:
            password = data.decode().splitlines()[0] if data.strip() else ""
        except UnicodeDecodeError:
            raise InvalidInput(f"etcd password file {self.password_file} is not UTF-8 "
                               "text") from None
        if not password:
            raise InvalidInput(f"etcd password file {self.password_file} is empty")
        return password


ETCD_PREFIX = "/circuit"


def parse_etcd_url(url: str) -> EtcdState:
    """etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (etcds://: over TLS) checked: ports in range,
    a prefix of plain path characters (default /circuit)."""
    scheme = url.partition("://")[0] + "://"
    hosts, slash, prefix = url.removeprefix(scheme).partition("/")
    prefix = "/" + prefix.strip("/") if slash and prefix.strip("/") else ETCD_PREFIX
    endpoints = [h for h in hosts.split(",") if h]
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
        name = host[1:-1] if bracketed else host
        if not name or not 0 < (ascii_number(port) or 0) < 65536 \
                or ("[" in name or "]" in name) \
                or (":" in name and not bracketed) \
                or not all(c.isascii() and (c.isalnum() or c in ".-:") for c in name):
            raise InvalidInput(f"bad etcd endpoint {endpoint!r} in {url!r}: use HOST:PORT, "
                               "as 10.0.0.1:2379 or [fd00::1]:2379")
    if not endpoints:
        raise InvalidInput(f"no etcd endpoint in {url!r}: use {scheme}HOST:PORT[,HOST:PORT...]")
    if not all(c.isalnum() or c in "/._-" for c in prefix) or "//" in prefix or ".." in prefix:
        raise InvalidInput(f"bad etcd key prefix {prefix!r} in {url!r}: use letters, digits, "
                           "'.', '_', '-' and '/'")
    return EtcdState(endpoints, prefix, tls=scheme == "etcds://")


def etcd_state(settings) -> EtcdState:
    """The state URL of settings with its --etcd-* settings, refused in one line when they
    cannot work together."""
    state = parse_etcd_url(settings.state_url)
    given = settings.etcd
    if (given["certfile"] is None) != (given["keyfile"] is None):
        raise InvalidInput("--etcd-certfile and --etcd-keyfile go together: give both or "
                           "neither")
    if not state.tls and (given["cafile"] or given["certfile"]):
        raise InvalidInput("--etcd-cafile and --etcd-certfile are for TLS: use an etcds:// "
                           "state URL (etcd over https)")
    has_password = given["password"] is not None or given["password_file"] is not None
    if (given["username"] is None) == has_password:
        raise InvalidInput("--etcd-username and --etcd-password (or --etcd-password-file) go "
                           "together: give both or neither")
    for name, value in given.items():
        setattr(state, name, value)
    return state
