"""Network test harness shared by the integration and kernel tiers: a throwaway "host" netns per
test, containers as processes (or runc containers) in netns of their own, circuit run inside the
host netns with a temporary state dir; everything removed on every path.

By concern: netns (namespaces, hosts, the leak check), bundles (runc), traffic (servers and
clients), health (killable backends, lb agent, the IPVS table), forked (the kernel tier's
warm runner), forkserver (circuit's fork server), qos (a kernel without netem).
tests/conftest.py loads the modules with fixtures as pytest plugins; tests import the helpers
from here."""

from harness.bundles import BUSYBOX_APPLETS, Runc, documented_hooks, make_rootfs, runc_config
from harness.forked import dispatcher, run_forked
from harness.forkserver import DISPATCHER_ONLY, ForkServer
from harness.health import Backend, Forked, connect_in, get_on, ipvs_table, lb_agent, states
from harness.health import backends as http_backends
from harness.health import health as lb_health
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
    "Backend",
    "Container",
    "ForkServer",
    "Forked",
    "Host",
    "Runc",
    "answered_by",
    "bridge_conf",
    "connect_in",
    "dispatcher",
    "documented_hooks",
    "get_on",
    "host_veth",
    "http_backends",
    "http_get_bodies",
    "httpd",
    "iperf_mbit",
    "ipv4_of",
    "ipv6_bridge_conf",
    "ipvs_table",
    "lb_agent",
    "lb_health",
    "make_rootfs",
    "min_rtt",
    "netns_names",
    "port_open",
    "root_links",
    "run_forked",
    "runc_config",
    "sh",
    "snapshot",
    "states",
    "terminate",
    "udp_answers",
    "udp_responder",
    "wait_for",
    "web_backends",
]
