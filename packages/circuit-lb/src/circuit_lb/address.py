"""ADDR:PORT as users write it: 192.168.100.235:80 or [2001:db8::1]:80; a target may also
be CONTAINER:PORT (a runc id, a container's name or PID: Named)."""

import re
from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from collections import namedtuple

from circuit_common.errors import InvalidInput
from circuit_common.validate import ascii_number


class Endpoint(namedtuple("Endpoint", "ip port")):
    """An IP address and a port."""

    __slots__ = ()

    @property
    def version(self) -> int:
        return 6 if ":" in self.ip else 4

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.version == 6 else f"{self.ip}:{self.port}"


class Named(namedtuple("Named", "name port")):
    """A target given as CONTAINER:PORT, before its address is looked up."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


# a container's name: not an address (an IPv6 one has ':', an IPv4 one only digits and dots)
NAME_RE = re.compile(r"(?![0-9.]*$)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}|[0-9]{1,10}")


def parse_target(text: str, what: str = "target") -> "Endpoint | Named":
    """ADDR:PORT as parse_endpoint reads it, or CONTAINER:PORT (Named)."""
    name, sep, port = str(text).rpartition(":")
    if sep and NAME_RE.fullmatch(name):
        number = ascii_number(port)
        if number is None or not 1 <= number <= 65535:
            raise InvalidInput(f"invalid port {port!r} in {what} {text!r}: use 1-65535, as "
                               f"{name}:80")
        return Named(name, number)
    try:
        return parse_endpoint(text, what)
    except InvalidInput as e:
        if "use ADDR:PORT" not in str(e):
            raise
        raise InvalidInput(f"invalid {what} {text!r}: use ADDR:PORT or CONTAINER:PORT, e.g. "
                           "192.168.100.235:80, [2001:db8::1]:80 or web-00:80") from None


def parse_endpoint(text: str, what: str = "address") -> Endpoint:
    """An Endpoint from ADDR:PORT, refused with one clear line when malformed."""
    host, sep, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # a bare IPv6 address needs brackets around it
    try:
        if not sep:
            raise ValueError
        ip = normal_ip(host)
        number = ascii_number(port)
        if number is None:
            raise ValueError
    except ValueError:
        raise InvalidInput(f"invalid {what} {text!r}: use ADDR:PORT, e.g. 192.168.100.235:80 "
                           "or [2001:db8::1]:80") from None
    if not 1 <= number <= 65535:
        raise InvalidInput(f"invalid port {port} in {what} {text!r}: use 1-65535")
    return Endpoint(ip, number)


def unusable(ip: str) -> str | None:
    """Why an address (in normal_ip's spelling) can be neither a VIP nor a target, None when
    it can: traffic to or from it is never balanced (unspecified, multicast, broadcast,
    reserved), stays on this host (loopback) or needs an interface it does not name (IPv6
    link-local); an IPv4-mapped IPv6 address is the IPv4 one. Cheap: one call per target."""
    if ":" in ip:
        group = ip.split(":", 1)[0]
        if ip in ("::", "::1"):
            return "the unspecified address" if ip == "::" else "the loopback address"
        if len(group) == 4 and group.startswith("ff"):
            return "a multicast address"
        if len(group) == 4 and group[:3] in ("fe8", "fe9", "fea", "feb"):
            return "a link-local address (it needs an interface, which ADDR:PORT cannot name)"
        if ip.startswith("::ffff:") and "." in ip:
            return f"an IPv4-mapped address (write it as {ip.removeprefix('::ffff:')})"
        return None
    first = int(ip.split(".", 1)[0])
    if first == 0:
        return "in 0.0.0.0/8 (this host, unspecified)"
    if first == 127:
        return "a loopback address (127.0.0.0/8 never leaves this host)"
    if first >= 224:
        return "a multicast address" if first < 240 else "a reserved or the broadcast address"
    return None


def check_usable(where: Endpoint, what: str) -> None:
    """InvalidInput when where's address can be no VIP or target (unusable)."""
    reason = unusable(where.ip)
    if reason:
        raise InvalidInput(f"invalid {what} {where}: {where.ip} is {reason}; give a unicast "
                           "address that traffic can reach")


def ip_family(ip: str) -> int:
    """AF_INET or AF_INET6: the family an address is written in."""
    return AF_INET6 if ":" in ip else AF_INET


def normal_ip(text: str) -> str:
    """The one spelling of an IP address (IPv6 compressed); ValueError when it is none."""
    family = ip_family(text)
    try:
        return inet_ntop(family, inet_pton(family, text))
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None
