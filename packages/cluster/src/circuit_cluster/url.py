"""The etcd:// state URL: the members to try and the key prefix circuit keeps below."""

from circuit_common.errors import InvalidInput


class EtcdState:
    """Where shared state lives when --state is an etcd:// URL: the members to try, in order,
    and the key prefix below which circuit keeps everything."""

    def __init__(self, endpoints: list[str], prefix: str):
        self.endpoints = endpoints
        self.prefix = prefix


ETCD_PREFIX = "/circuit"


def parse_etcd_url(url: str) -> EtcdState:
    """etcd://HOST:PORT[,HOST:PORT...][/PREFIX] checked: ports in range, a prefix of plain
    path characters (default /circuit)."""
    hosts, slash, prefix = url.removeprefix("etcd://").partition("/")
    prefix = "/" + prefix.strip("/") if slash and prefix.strip("/") else ETCD_PREFIX
    endpoints = [h for h in hosts.split(",") if h]
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
        name = host[1:-1] if bracketed else host
        if not name or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536) \
                or ("[" in name or "]" in name) \
                or (":" in name and not bracketed) \
                or not all(c.isascii() and (c.isalnum() or c in ".-:") for c in name):
            raise InvalidInput(f"bad etcd endpoint {endpoint!r} in {url!r}: use HOST:PORT, "
                               "as 10.0.0.1:2379 or [fd00::1]:2379")
    if not endpoints:
        raise InvalidInput(f"no etcd endpoint in {url!r}: use etcd://HOST:PORT[,HOST:PORT...]")
    if not all(c.isalnum() or c in "/._-" for c in prefix) or "//" in prefix or ".." in prefix:
        raise InvalidInput(f"bad etcd key prefix {prefix!r} in {url!r}: use letters, digits, "
                           "'.', '_', '-' and '/'")
    return EtcdState(endpoints, prefix)
