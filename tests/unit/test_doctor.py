"""`circuit version` names etcd3gw; `circuit doctor`'s cluster line asks the etcd members of an
etcd:// state (fake ones on loopback here) and fails with 11 only when none answers."""

import json

from test_cli import circuit
from test_machine import closed_port, etcd  # noqa: F401 (a fixture)

from circuit_cluster.doctor import NOT_CONFIGURED, cluster_check
from circuit_common.errors import NotFound, Unavailable


def cluster_line(proc) -> dict:
    return next(c for c in json.loads(proc.stdout) if c["feature"] == "cluster")


def test_version_names_etcd3gw():
    from importlib.metadata import version

    assert f"\netcd3gw {version('etcd3gw')}\n" in circuit("version").stdout
    assert json.loads(circuit("version", "--format", "json").stdout)["etcd3gw"] == version(
        "etcd3gw")


def test_without_etcd_state_the_cluster_is_not_configured(tmp_path):
    proc = circuit("--state", tmp_path, "doctor", "--format", "json")
    assert cluster_line(proc) == {"feature": "cluster", "ok": True, "used": False,
                                  "detail": NOT_CONFIGURED, "fix": "", "exit_code": 0}
    assert f"cluster       ok          {NOT_CONFIGURED}\n" in circuit(
        "--state", tmp_path, "doctor").stdout


def test_doctor_names_the_etcd_endpoints_that_answered(tmp_path, etcd):  # noqa: F811
    endpoint, asked = etcd
    dead = closed_port()
    state = ("--state", f"etcd://{dead},{endpoint}/circuit", "--local-state", tmp_path)
    proc = circuit(*state, "doctor", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert cluster_line(proc) | {"detail": None} == {
        "feature": "cluster", "ok": True, "used": True, "detail": None, "fix": "",
        "exit_code": 0}
    assert cluster_line(proc)["detail"] == (f"etcd 3.4.23 answers at {endpoint}; "
                                            f"no answer: {dead} connection refused")
    assert asked == ["/version"]
    proc = circuit(*state, "doctor", importtime=True)
    assert "ok (in use)   etcd 3.4.23 answers at" in proc.stdout
    assert "etcd3gw" not in proc.stderr  # doctor asks with urllib; the client costs ~130 ms


def test_doctor_fails_with_11_when_no_etcd_endpoint_answers(tmp_path):
    dead = [closed_port(), closed_port()]
    config = tmp_path / "circuit.toml"
    config.write_text(f'state = "etcd://{",".join(dead)}"\n'
                      f'local_state_dir = "{tmp_path / "local"}"\n')
    proc = circuit("--config", config, "doctor")
    assert proc.returncode == Unavailable.exit_code, proc.stderr
    assert (f"cluster       FAILS (in use)   no etcd endpoint answers: {dead[0]} connection "
            f"refused; {dead[1]} connection refused\n    fix: start etcd") in proc.stdout
    assert not (tmp_path / "local").exists()  # doctor reads the state, never writes it


def test_the_cluster_line_without_etcd3gw():
    assert cluster_check(None, None) == (
        "cluster", False, False, f"no etcd3gw; {NOT_CONFIGURED}",
        "reinstall circuit (just install)", NotFound.exit_code)
    assert cluster_check(None, [{"endpoint": "10.0.0.1:2379", "version": "3.4.23"}]) == (
        "cluster", False, True, "no etcd3gw", "reinstall circuit (just install)",
        NotFound.exit_code)


def test_every_member_that_answered_is_named_with_its_version():
    check = cluster_check("2.7.0", [{"endpoint": "a:2379", "version": "3.4.23"},
                                    {"endpoint": "b:2379", "version": "3.5.9"},
                                    {"endpoint": "c:2379", "error": "timed out"}])
    assert check.ok and check.used and check.exit_code == 0
    assert check.detail == ("etcd 3.4.23, 3.5.9 answers at a:2379, b:2379; "
                            "no answer: c:2379 timed out")


def rows(proc, feature: str) -> list[dict]:
    return [c for c in json.loads(proc.stdout) if c["feature"] == feature]


NO_IPVS = {"kernel": {"ipvs": "no", "nftables": "builtin"}, "nft": {"version": "1.0.6"}}


def test_without_ipvs_the_lb_line_names_nftables_and_ipvs_is_a_note_until_a_service_needs_it():
    from circuit_lb import doctor

    nft_service = {"name": "web", "backend": "nftables"}
    serving = doctor.backend_check(NO_IPVS, [nft_service, nft_service])
    assert serving.ok and serving.exit_code == 0 and serving.detail == (
        "new services use nftables (this kernel has no IPVS); services: 2 nftables")
    note = doctor.ipvs_check(NO_IPVS["kernel"], in_use=False)
    assert (note.ok, note.used) == (False, False)  # so doctor exits 0 for it
    assert note.detail == "ipvs no; no service needs it"
    assert note.fix.startswith("only for --backend ipvs: ")
    broken = doctor.ipvs_check(NO_IPVS["kernel"], in_use=True)  # a stored IPVS service
    assert (broken.ok, broken.used, broken.exit_code) == (False, True, 8)
    with_ipvs = {"kernel": {"ipvs": "module", "nftables": "builtin"}, "nft": None}
    assert doctor.backend_check(with_ipvs, [{"name": "old"}]).detail == (
        "new services use ipvs; services: 1 ipvs")
    none = doctor.backend_check({"kernel": {"ipvs": "no", "nftables": "no"}, "nft": None}, [])
    assert not none.ok and not none.used


def test_iptables_is_checked_and_fails_only_when_a_network_runs_it(tmp_path):
    from circuit_common.store import Store

    state = tmp_path / "state"
    conf = {"cniVersion": "1.0.0", "name": "web", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.89.0.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    bare = tmp_path / "bin"  # a PATH without iptables
    bare.mkdir()
    proc = circuit("--state", state, "doctor", "--format", "json", env={"PATH": str(bare)})
    assert rows(proc, "iptables") == [{
        "feature": "iptables", "ok": False, "used": False,
        "detail": "no iptables or ip6tables on PATH", "exit_code": 4,
        "fix": "apt-get install iptables (portmap, firewall and a masquerading bridge run it)"}]
    assert proc.returncode == 0
    Store(str(state)).write(str(state / "networks" / "web.json"), {
        "name": "web", "config": conf, "source": "flags", "created": "now", "bridges": []})
    proc = circuit("--state", state, "doctor", "--format", "json", env={"PATH": str(bare)})
    assert rows(proc, "iptables")[0]["used"] and proc.returncode == 4
    proc = circuit("--state", state, "doctor")
    assert "\niptables      ok (in use)   iptables 1." in proc.stdout, proc.stdout
