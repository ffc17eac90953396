"""circuit-cluster: hosts that share networks, addresses and services through etcd.

Usage:
  circuit-cluster join --address IP [--name HOST] [--ttl SEC]
  circuit-cluster leave
  circuit-cluster forget HOST
  circuit-cluster list [--format FMT] [-q]
  circuit-cluster sync [--format FMT]
  circuit-cluster agent
  circuit-cluster (-h | --help)

Also reached as `circuit cluster ...`; needs --state etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
(etcds://... for TLS, with --etcd-cafile, --etcd-certfile, --etcd-keyfile).
`join` makes this host a member: its name is kept alive by an etcd lease (TTL seconds) that
`agent` renews. Cluster networks (`circuit network create NAME --subnet CIDR --overlay vxlan`)
lease each host a subnet on its first attach and reach the other hosts' subnets through VXLAN.
`sync` runs one reconcile pass; `agent` runs one whenever etcd or this host's attachments
change, until SIGTERM. `leave` gives back this host's subnets and removes it; `forget HOST`
does the same in etcd for a host whose lease lapsed and that will not come back.

Options:
  --address IP   this host's underlay address (IPv4), where the others send VXLAN
  --name HOST    this host's name in the cluster (default: this machine's hostname)
  --ttl SEC      the lease: how long the host stays alive without its agent [default: 10]
  --format FMT   table or json [default: table]
  -q             names only (not with --format json)

Examples:
  export CIRCUIT_STATE=etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379
  circuit cluster join --address 10.0.0.11
  systemctl enable --now circuit-cluster-agent.service
  circuit network create shared --subnet 10.200.0.0/16 --overlay vxlan
  circuit cluster list
"""

import ipaddress
import os
import socket
import time

from circuit_common import cli, output
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import Conflict, InvalidInput, NotFound, UsageError
from circuit_common.validate import ascii_number, check_name

from . import overlay
from .member import Member
from .replica import ReplicatedStore
from .sync import Reconciler, json_object, run_agent


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    if not isinstance(ctx.store, ReplicatedStore):
        raise UsageError("circuit cluster needs the state in etcd: give --state "
                         "etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (or CIRCUIT_STATE)")
    member: Member = ctx.store.member
    if a["join"]:
        host = join(ctx, member, a["--address"], host_name(a["--name"]), a["--ttl"])
        print(f"joined the cluster as {host['name']} ({host['address']})")
    elif a["leave"]:
        name = leave(member)
        print(f"{name} left the cluster")
    elif a["forget"]:
        released = forget(member, check_name(a["HOST"], "host name"))
        print(f"{a['HOST']} forgotten; {released} subnet(s) released")
    elif a["list"]:
        fmt = output.check_format(a["--format"], a["-q"])
        rows = hosts(member)
        if a["-q"]:
            output.emit_names([r["name"] for r in rows])
        elif fmt == "json":
            output.emit_json(rows)
        else:
            output.emit(output.render_table(
                ["name", "address", "state", "subnets", "last seen"],
                [(r["name"], r["address"], r["state"],
                  ", ".join(f"{n} {s}" for n, s in r["subnets"].items()) or "-",
                  ago(r["lastSeen"])) for r in rows]))
    elif a["sync"]:
        fmt = output.check_format(a["--format"])  # before the pass, not after
        reconciler = Reconciler(ctx)
        reconciler.heartbeat()
        report = reconciler.reconcile()
        if fmt == "json":
            output.emit_json({**report, "mirrored": sorted(report["mirrored"])})
        else:
            print(f"synced at revision {report['revision']}: "
                  f"{len(report['mirrored'])} records mirrored, "
                  f"{report['published']} attachments published, "
                  f"{report['overlays']} overlays programmed")
    elif a["agent"]:
        member.host()  # joined, or one line now rather than from the loop
        return run_agent(ctx)
    return 0


def host_name(given: str | None) -> str:
    """This host's name in the cluster: --name, or the machine's hostname when not given (an
    empty --name is refused, not replaced)."""
    return check_name(socket.gethostname() if given is None else given, "host name")


def join(ctx: cli.Context, member: Member, address: str, name: str, ttl: str) -> dict:
    """Make this host a member (again): its etcd lease and alive key, its host record, the
    local join record, then one pass."""
    check_name(name, "host name")
    try:
        if ipaddress.ip_address(address).version != 4:
            raise ValueError
    except ValueError:
        raise InvalidInput(f"bad --address {address!r}: this host's IPv4 underlay address, "
                           "as 192.168.1.10") from None
    if not 2 <= (ascii_number(ttl) or 0) <= 3600:
        raise InvalidInput(f"bad --ttl {ttl!r}: whole seconds from 2 to 3600")
    overlay.check_address(address)
    store = member.store
    joined = member.joined()
    if joined is not None and joined["name"] != name:
        raise Conflict(f"this host joined as {joined['name']}; run `circuit cluster leave` "
                       "before joining under another name")
    if joined is None:
        refuse_single_host_records(store)
    host = {"name": name, "address": address, "ttl": int(ttl),
            "joined": (joined or {}).get("joined") or time.time(),
            "lease": (joined or {}).get("lease", 0), "prefix": ctx.store.etcd_state.prefix}
    with store.lock("cluster", "host"):
        store.write(member.host_path, host)
        try:
            reconciler = Reconciler(ctx, member)
            reconciler.heartbeat()
        except BaseException:
            if joined is None:
                store.remove(member.host_path)
            raise
    reconciler.reconcile()
    return host


def refuse_single_host_records(store) -> None:
    """Conflict when the local state dir holds networks, policies or services that etcd does
    not: a single host's, which the first pass would delete as gone from the cluster."""
    records = store.etcd.range(store.etcd.key("records", ""))[1]
    start = len(store.etcd.key("records", ""))
    theirs = {kv.key[start:].decode(errors="replace") for kv in records}
    mine = sorted(set(store.local_records()) - theirs)
    if mine:
        listed = ", ".join(mine[:3]) + (", ..." if len(mine) > 3 else "")
        raise Conflict(f"{store.root} holds records that are not the cluster's ({listed}): a "
                       "single host's state; join with another --local-state directory")


def leave(member: Member) -> str:
    """Give back this host's subnets, unpublish it and end its lease, take the cluster's
    services and policies out of this host's kernel and drop the mirror; refused while
    containers here are attached."""
    store, etcd = member.store, member.store.etcd
    host = member.host()
    attached = [p for net in _dirs(store.path("attachments"))
                for p in store.records(store.path("attachments", net))]
    if attached:
        raise Conflict(f"{len(attached)} container interface(s) on this host are attached to "
                       "networks; disconnect them before leaving")
    with store.lock("cluster", "host"):
        for lease in member.leases():
            member.release(lease)
        overlay.program_masquerade({})
        for kv in etcd.range(etcd.key("subnets", ""))[1]:  # those without a local lease too
            if (json_object(kv.value) or {}).get("host") == host["name"]:
                etcd.swap(kv.key, kv.value, None)
        etcd.delete(etcd.key("attachments", host["name"], ""), prefix=True)
        etcd.delete(etcd.key("alive", host["name"]))
        etcd.delete(etcd.key("hosts", host["name"]))
        if host.get("lease"):
            etcd.revoke(host["lease"])
    with store.local_lock_all():
        before = store.refresh(records={})
    store.resync(before)
    store.remove(member.view_path)
    store.remove(member.host_path)
    return host["name"]


def forget(member: Member, name: str) -> int:
    """Remove a lapsed host from etcd: its subnets (free for others again), its published
    attachments, its host record; refused while its lease is alive. The subnets released."""
    etcd = member.store.etcd
    if etcd.get(etcd.key("alive", name)) is not None:
        raise Conflict(f"host {name} is alive; run `circuit cluster leave` on it instead")
    if etcd.get(etcd.key("hosts", name)) is None:
        raise NotFound(f"no host named {name!r} in the cluster (see `circuit cluster list`)")
    released = 0
    for kv in etcd.range(etcd.key("subnets", ""))[1]:
        if (json_object(kv.value) or {}).get("host") == name and etcd.swap(kv.key, kv.value,
                                                                           None):
            released += 1
    etcd.delete(etcd.key("attachments", name, ""), prefix=True)
    etcd.delete(etcd.key("hosts", name))
    return released


def _dirs(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def hosts(member: Member) -> list[dict]:
    """Every host in etcd: address, alive or lapsed, its subnets, when last seen."""
    reconciler = Reconciler(None, member)
    snap = reconciler.snapshot()
    subnets: dict[str, dict[str, str]] = {}
    for network, value in snap.subnets:
        lease = json_object(value) or {}
        if isinstance(lease.get("host"), str) and isinstance(lease.get("subnet"), str):
            subnets.setdefault(lease["host"], {})[network] = lease["subnet"]
    return [{"name": name, "address": h.get("address"),
             "state": "alive" if name in snap.alive else "lapsed",
             "subnets": subnets.get(name, {}), "lastSeen": h.get("lastSeen")}
            for name, h in sorted(snap.hosts.items())]


def ago(stamp: float | None) -> str:
    if not stamp:
        return "-"
    seconds = max(0, int(time.time() - stamp))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
