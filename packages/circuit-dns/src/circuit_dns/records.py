"""The names of DNS-enabled networks in the state, and the files made for their containers.

State:  dns/<network>.json          {"network", "entries": {"<cid>@<ifname>": {"names": [the
                                    container id, its aliases], "ips": [...], "pid",
                                    "start_time", "servers": [the CNI result's nameservers]}}}:
                                    what the server answers (a cluster network's other hosts'
                                    containers: from the cluster's view, cluster/view.json)
        dns/<network>/resolv.conf   nameserver the gateway(s), search NETWORK and the host's
        dns/<network>/hosts         localhost, then every name of the network
        dns/server-<netns>.pid      the server of this state in that netns: {pid, start_time}

No dnslib here: the hook's path comes through this module.
"""

import os

from circuit_common.extensions import Attachment
from circuit_common.validate import DNS_NAME_RE, check_name

HOST_RESOLV_CONF = "/etc/resolv.conf"
MAX_UPSTREAMS = 3
LOCALHOST = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def record_path(store, network: str) -> str:
    return store.path("dns", f"{check_name(network, 'network name')}.json")


def files_dir(store, network: str) -> str:
    return store.path("dns", check_name(network, "network name"))


def resolv_conf_path(store, network: str) -> str:
    return os.path.join(files_dir(store, network), "resolv.conf")


def hosts_path(store, network: str) -> str:
    return os.path.join(files_dir(store, network), "hosts")


def check_record(record: dict, path: str) -> None:
    """A network's names as circuit-dns wrote them (ValueError: what is wrong)."""
    if not isinstance(record.get("network"), str) \
            or os.path.basename(path) != f"{record['network']}.json":
        raise ValueError("it names another network than its file")
    entries = record.get("entries")
    if not isinstance(entries, dict):
        raise ValueError("its 'entries' must be an object")
    for key, entry in entries.items():
        names, ips = entry.get("names"), entry.get("ips")
        if not isinstance(names, list) or not all(
                isinstance(n, str) and n for n in names) or not isinstance(ips, list) \
                or not all(isinstance(ip, str) for ip in ips) \
                or not all(type(entry.get(k)) is int for k in ("pid", "start_time")) \
                or not isinstance(entry.get("servers", []), list) \
                or not all(isinstance(s, str) for s in entry.get("servers", [])):
            raise ValueError(f"entry {key!r} needs names, ips, pid and start_time")


def load(store, network: str) -> dict:
    return store.read(record_path(store, network), check=check_record) or {
        "network": network, "entries": {}}


def dns_networks(store) -> list[str]:
    """The networks circuit-dns keeps names for."""
    return [os.path.basename(p)[:-len(".json")] for p in store.records(store.path("dns"))]


def names(container_id: str, aliases) -> list[str]:
    """The names a container answers to on its network: its aliases first (the first is the
    one reverse lookups give), then its container id when that is a host name."""
    found = [a.lower() for a in aliases]
    cid = container_id.lower()
    if DNS_NAME_RE.fullmatch(cid) and cid not in found:
        found.append(cid)
    return found


def names_of(attachment: Attachment) -> list[str]:
    return names(attachment.container_id, attachment.aliases)


def entry(attachment: Attachment) -> dict:
    dns = attachment.result.get("dns")
    servers = dns.get("nameservers") if isinstance(dns, dict) else None
    return {"names": names_of(attachment),
            "ips": [ip["address"].partition("/")[0]
                    for ip in attachment.result.get("ips", []) if "address" in ip],
            "pid": attachment.pid, "start_time": attachment.start_time,
            "servers": [s for s in servers if isinstance(s, str)]
            if isinstance(servers, list) else []}


def view_path(store) -> str:
    """Where the cluster's agent keeps the other hosts' attachments (circuit_cluster.member)."""
    return store.path("cluster", "view.json")


def peer_entries(store, network: str) -> list[dict]:
    """The names and addresses of the containers other hosts of the cluster attached to
    network, as the last reconcile pass saw them; what is not as circuit publishes it is
    left out."""
    view = store.read(view_path(store)) or {}
    found = []
    for peer in (view.get("attachments") or {}).get(network) or []:
        aliases, ips = peer.get("aliases", []), peer.get("ips")
        if not isinstance(peer.get("containerId"), str) or not isinstance(ips, list) \
                or not isinstance(aliases, list) or not all(
                    isinstance(a, str) and DNS_NAME_RE.fullmatch(a) for a in aliases):
            continue
        found.append({"names": names(peer["containerId"], aliases),
                      "ips": [ip.partition("/")[0] for ip in ips if isinstance(ip, str)]})
    return found


def save(store, record: dict) -> None:
    """The names, then the network's hosts file made from them."""
    store.write(record_path(store, record["network"]), record)
    lines = [f"{ip}\t{' '.join(e['names'])}\n" for e in record["entries"].values()
             for ip in e["ips"] if e["names"]]
    store.write_bytes(hosts_path(store, record["network"]),
                      (LOCALHOST + "".join(lines)).encode(), durable=False)


def host_resolvers(path: str | None = None) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) of the host's resolv.conf (CIRCUIT_DNS_RESOLV_CONF
    overrides its path): at most 3 nameservers, as the libc resolver takes."""
    path = path or os.environ.get("CIRCUIT_DNS_RESOLV_CONF") or HOST_RESOLV_CONF
    servers, search = [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return servers, search
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1].partition("%")[0])
        elif words and words[0] in ("search", "domain"):
            search = [w.rstrip(".").lower() for w in words[1:] if DNS_NAME_RE.fullmatch(
                w.rstrip("."))]
    return servers[:MAX_UPSTREAMS], search


def server_addresses(netconf: dict, entries: dict | None = None) -> list[str]:
    """Where a network's DNS server listens: the nameservers its attachments' CNI results
    name (a cluster network: this host's gateway), else those its config gives them (a
    network from flags: its gateways)."""
    found = [s for e in (entries or {}).values() for s in e.get("servers", ())]
    if found:
        return list(dict.fromkeys(found))
    for plugin in netconf["plugins"]:
        dns = plugin.get("dns")
        if isinstance(dns, dict) and isinstance(dns.get("nameservers"), list):
            return [s for s in dns["nameservers"] if isinstance(s, str)]
    return []


def write_resolv_conf(store, name: str, servers: list[str]) -> None:
    """dns/<network>/resolv.conf, for a runc bundle to bind-mount as /etc/resolv.conf (servers:
    where this host's server listens); written only when it changes."""
    _, host_search = host_resolvers()
    search = list(dict.fromkeys([name.lower(), *host_search]))
    lines = [f"search {' '.join(search)}\n"]
    lines += [f"nameserver {s}\n" for s in servers]
    text = "".join(lines).encode()
    path = resolv_conf_path(store, name)
    try:
        with open(path, "rb") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    store.write_bytes(path, text)
