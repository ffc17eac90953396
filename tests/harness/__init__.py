"""Network test harness shared by the integration and kernel tiers: a throwaway "host" netns per
test, containers as processes (or runc containers) in netns of their own, circuit run inside the
host netns with a temporary state dir; everything removed on every path.

By concern: netns (namespaces, hosts, the leak check), bundles (runc), traffic (servers and
clients), forked (the kernel tier's warm runner), forkserver (circuit's fork server).
tests/conftest.py loads the modules with fixtures as pytest plugins; tests import the helpers
from here."""

from harness.bundles import BUSYBOX_APPLETS, Runc, documented_hooks, make_rootfs, runc_config
from harness.forked import dispatcher, run_forked
from harness.forkserver import DISPATCHER_ONLY, ForkServer
from harness.netns import (
    CIRCUIT,
    PREFIX,
    ROOT,
    Container,
    Host,
    bridge_conf,
    host_veth,
    ipv6_bridge_conf,
    netns_names,
    root_links,
    sh,
    snapshot,
    terminate,
)
from harness.traffic import (
    answered_by,
    http_get_bodies,
    httpd,
    iperf_mbit,
    ipv4_of,
    min_rtt,
    port_open,
    udp_answers,
    udp_responder,
    wait_for,
    web_backends,
)

__all__ = [
    "BUSYBOX_APPLETS",
    "CIRCUIT",
    "DISPATCHER_ONLY",
    "PREFIX",
    "ROOT",
    "Container",
    "ForkServer",
    "Host",
    "Runc",
    "answered_by",
    "bridge_conf",
    "dispatcher",
    "documented_hooks",
    "host_veth",
    "http_get_bodies",
    "httpd",
    "iperf_mbit",
    "ipv4_of",
    "ipv6_bridge_conf",
    "make_rootfs",
    "min_rtt",
    "netns_names",
    "port_open",
    "root_links",
    "run_forked",
    "runc_config",
    "sh",
    "snapshot",
    "terminate",
    "udp_answers",
    "udp_responder",
    "wait_for",
    "web_backends",
]
