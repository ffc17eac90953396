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
