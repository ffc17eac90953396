"""What the benchmarks share: timing a call, the 5,000 LB targets, and ratios reported per run.

A ratio is taken within each run (circuit and anchor measured back to back) and the median of
those is reported with their spread: the VM's speed drifts between runs and between boots
(TCG, a busy host), which moves both sides of one run together but not the medians of many."""

import statistics
import time

TARGETS = 5000
VIP = "10.100.99.1:80"


def lb_targets() -> list[str]:
    """TARGETS distinct ADDR:PORT targets."""
    return [f"10.{200 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}:80" for i in range(TARGETS)]


def timed(call) -> float:
    """How long call() takes, in ms."""
    start = time.monotonic()
    call()
    return (time.monotonic() - start) * 1000


def ratio_line(what: str, circuit: list[float], anchor: list[float], anchor_name: str,
               budget: float | None = None, floor: list[float] | None = None) -> str:
    """circuit against anchor: medians, the median of the per-run ratios and their spread;
    with floor (python -c pass of each run), the ratios of what is left after it."""
    ratios = [c / a for c, a in zip(circuit, anchor, strict=True)]
    line = (f"{what}: {anchor_name} {statistics.median(anchor):.0f} ms, circuit "
            f"{statistics.median(circuit):.0f} ms; ratio {statistics.median(ratios):.2f} "
            f"(runs {min(ratios):.2f}-{max(ratios):.2f})")
    if floor is not None:
        net = [(c - f) / a for c, a, f in zip(circuit, anchor, floor, strict=True)]
        line += (f"; without python's start ({statistics.median(floor):.0f} ms) "
                 f"{statistics.median(net):.2f} (runs {min(net):.2f}-{max(net):.2f})")
    if budget is not None:
        judged = statistics.median(net if floor is not None else ratios)
        line += f" - budget {budget:g}: {'met' if judged <= budget else 'MISSED'}"
    return line


def difference_line(what: str, circuit: list[float], base: list[float], base_name: str,
                    budget: float | None = None) -> str:
    """What circuit costs over base, in ms: the median of the per-run differences (each run
    measures both back to back) and their spread."""
    extra = [c - b for c, b in zip(circuit, base, strict=True)]
    line = (f"{what}: {base_name} {statistics.median(base):.0f} ms, circuit "
            f"{statistics.median(circuit):.0f} ms; circuit adds {statistics.median(extra):+.0f} ms "
            f"(runs {min(extra):+.0f}…{max(extra):+.0f})")
    if budget is not None:
        line += (f" - budget +{budget:g} ms: "
                 f"{'met' if statistics.median(extra) <= budget else 'MISSED'}")
    return line


def fake_network(name: str, subnet: str) -> dict:
    """A network record as circuit writes it, for a bridge the benchmark never makes."""
    return {"name": name, "source": "bench", "created": "2026-11-28T00:00:00Z",
            "config": {"cniVersion": "1.0.0", "name": name,
                       "plugins": [{"type": "bridge", "bridge": f"{name}0",
                                    "ipam": {"type": "host-local", "subnet": subnet}}]}}


def fake_attachment(name: str, index: int, pid: int, start_time: int, prefix: str) -> dict:
    """Attachment record number index of network name, for the container whose process is
    (pid, start_time), with an address in prefix (a /16): no plugin ran for it."""
    cid = f"bench{index}"
    return {"kind": "cniCacheV1", "containerId": cid, "config": "", "ifName": "eth0",
            "networkName": name, "netns": f"/proc/{pid}/ns/net", "cniArgs": [],
            "capabilityArgs": {},
            "circuit": {"pid": pid, "start_time": start_time, "target": cid,
                        "created": "2026-11-28T00:00:00Z"},
            "result": {"cniVersion": "1.0.0",
                       "interfaces": [{"name": f"veth{index:08x}", "mac": "02:00:00:00:00:01"},
                                      {"name": "eth0", "mac": "02:00:00:00:00:02",
                                       "sandbox": f"/proc/{pid}/ns/net"}],
                       "ips": [{"address": f"{prefix}.{index // 250}.{index % 250 + 2}/16",
                                "interface": 1}]}}
