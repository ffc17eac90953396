"""Settings: option over environment over config file over default."""

import pytest

from circuit_common.config import load_settings, split_global_options
from circuit_common.errors import InvalidInput


def test_defaults_without_a_config_file(tmp_path):
    s = load_settings({}, env={"CIRCUIT_CONFIG": str(tmp_path / "none.toml")})
    assert str(s.state_dir) == "/var/lib/circuit"
    assert s.cni_path == ["/usr/lib/cni", "/opt/cni/bin"]
    assert s.lock_timeout == 30


def test_precedence(tmp_path):
    conf = tmp_path / "circuit.toml"
    conf.write_text('state_dir = "/from/file"\ncni_path = ["/a", "/b"]\nlock_timeout = 5\n')
    env = {"CIRCUIT_CONFIG": str(conf)}
    s = load_settings({}, env=env)
    assert (str(s.state_dir), s.cni_path, s.lock_timeout) == ("/from/file", ["/a", "/b"], 5)
    env |= {"CIRCUIT_STATE_DIR": "/from/env", "CNI_PATH": "/c:/d"}
    s = load_settings({}, env=env)
    assert (str(s.state_dir), s.cni_path) == ("/from/env", ["/c", "/d"])
    s = load_settings({"state": "/from/option", "cni_path": "/e", "lock_timeout": "2"}, env=env)
    assert (str(s.state_dir), s.cni_path, s.lock_timeout) == ("/from/option", ["/e"], 2)


def test_bad_config_file_is_one_clear_error(tmp_path):
    conf = tmp_path / "circuit.toml"
    conf.write_text("state_dir = ")
    with pytest.raises(InvalidInput, match="cannot read config file"):
        load_settings({}, env={"CIRCUIT_CONFIG": str(conf)})
    conf.write_text("stat_dir = '/x'")
    with pytest.raises(InvalidInput, match="unknown key 'stat_dir'"):
        load_settings({}, env={"CIRCUIT_CONFIG": str(conf)})
    with pytest.raises(InvalidInput, match="lock timeout"):
        load_settings({"lock_timeout": "soon"}, env={"CIRCUIT_CONFIG": str(tmp_path / "x")})


def test_global_options_stand_anywhere():
    found, rest = split_global_options(
        ["--state", "/s", "list", "--cni-path=/p", "--debug", "--", "--state"])
    assert found == {"state": "/s", "cni_path": "/p", "debug": True}
    assert rest == ["list", "--", "--state"]
    with pytest.raises(InvalidInput, match="--state needs a value"):
        split_global_options(["list", "--state"])


def test_a_config_file_named_by_the_option_must_exist(tmp_path):
    with pytest.raises(InvalidInput, match=r"no config file .*none.toml; give an existing"):
        load_settings({"config": str(tmp_path / "none.toml")}, env={})


@pytest.mark.parametrize("text", ["state = [", "state = [\n", "state_dir = ["])
def test_an_unfinished_list_is_a_broken_file_not_an_empty_list(tmp_path, text):
    conf = tmp_path / "circuit.toml"
    conf.write_text(text)
    with pytest.raises(InvalidInput, match="cannot read config file"):
        load_settings({}, env={"CIRCUIT_CONFIG": str(conf)})


def test_a_relative_state_directory_in_the_config_file_or_a_file_url_is_refused(tmp_path):
    conf = tmp_path / "circuit.toml"
    conf.write_text('state_dir = "var/state"\n')
    with pytest.raises(InvalidInput, match=r"in config file .* must be an absolute path"):
        load_settings({}, env={"CIRCUIT_CONFIG": str(conf)})
    with pytest.raises(InvalidInput, match="in a file:// URL must be an absolute path"):
        load_settings({"state": "file://var/state"}, env={"CIRCUIT_CONFIG": str(tmp_path / "x")})


@pytest.mark.parametrize("value", ["1e-300", "0.05", "5e-05"])
def test_a_lock_timeout_too_short_for_any_plugin_is_refused(tmp_path, value):
    with pytest.raises(InvalidInput, match=r"lock timeout must be a number of seconds from 0\.1"):
        load_settings({"lock_timeout": value}, env={"CIRCUIT_CONFIG": str(tmp_path / "x")})


def test_a_hook_gets_the_etcd_files_and_never_a_password(tmp_path):
    env = {"CIRCUIT_CONFIG": str(tmp_path / "none.toml")}
    tls = {"state": "etcds://h:1", "local_state": "/l", "etcd_cafile": "/ca.pem",
           "etcd_certfile": "/c.pem", "etcd_keyfile": "/c.key", "etcd_username": "u"}
    given = load_settings(tls | {"etcd_password_file": "/pw"}, env=env).as_environment()
    assert {k: v for k, v in given.items() if k.startswith("CIRCUIT_ETCD_")} == {
        "CIRCUIT_ETCD_CAFILE": "/ca.pem", "CIRCUIT_ETCD_CERTFILE": "/c.pem",
        "CIRCUIT_ETCD_KEYFILE": "/c.key", "CIRCUIT_ETCD_USERNAME": "u",
        "CIRCUIT_ETCD_PASSWORD_FILE": "/pw"}
    given = load_settings(tls | {"etcd_password": "hunter2"}, env=env).as_environment()
    assert "hunter2" not in repr(given) and "CIRCUIT_ETCD_USERNAME" not in given
