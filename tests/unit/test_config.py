"""Config loading: Consul-compatible files, dirs and flags, and errors that name the culprit."""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from meshd.config import (
    Config,
    ConfigError,
    TLSConfig,
    load_config,
    parse_duration,
)
from meshd.config_model import DNSConfig, Ports

KEY16 = base64.b64encode(b"0123456789abcdef").decode()
KEY32 = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def write(path: Path, content: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def load_json(tmp_path: Path, content: Any, name: str = "a.json", **kw: Any) -> Config:
    return load_config(files=[write(tmp_path / name, content)], **kw)


def json_error(tmp_path: Path, content: Any, name: str = "a.json") -> str:
    with pytest.raises(ConfigError) as exc:
        load_json(tmp_path, content, name)
    assert name in str(exc.value)
    return str(exc.value)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("72h", 259200.0),
        ("1.5h", 5400.0),
        ("300us", 0.0003),
        ("2µs", 2e-6),
        ("100ns", 1e-7),
        ("1h2m3s", 3723.0),
        (".5s", 0.5),
        ("0", 0.0),
        ("10", 10.0),
        ("2.5", 2.5),
        (" 5s ", 5.0),
        (5, 5.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts_go_durations_and_bare_seconds(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "10x",
        "s",
        "1s2",
        "5 s",
        "-5s",
        "-1",
        -1,
        True,
        None,
        [],
        float("inf"),
        float("nan"),
        "1d",
    ],
)
def test_parse_duration_rejects_garbage(bad: Any) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(bad)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- defaults --------------------------------------------------------------------------------


def test_defaults_without_sources() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.dev is False and cfg.server is False and cfg.bootstrap is False
    assert cfg.node_name == socket.gethostname()
    assert cfg.datacenter == "dc1" and cfg.domain == "consul." and cfg.alt_domain is None
    assert cfg.client_addr == cfg.bind_addr == "127.0.0.1"
    assert cfg.ports == Ports(http=8500, https=-1, grpc=8502, dns=8600, server=8300, raft=8301)
    assert cfg.dns_config == DNSConfig()
    assert cfg.dns_config.soa == {"refresh": 3600, "retry": 600, "expire": 86400, "min_ttl": 0}
    assert cfg.dns_config.max_stale == 87600 * 3600
    assert cfg.dns_config.udp_answer_limit == 3 and cfg.dns_config.recursor_timeout == 2.0
    assert cfg.retry_interval == 30.0 and cfg.reconnect_timeout == 72 * 3600
    assert cfg.log_level == "INFO" and cfg.raft_fsync is True
    assert cfg.default_intention_policy == "allow"  # ACLs off (Consul); see the ACL test below
    assert cfg.leave_on_terminate is True  # clients leave on SIGTERM, as in Consul
    assert cfg.tls == TLSConfig()
    assert cfg.http_max_body == 1048576 and cfg.limits == {}
    assert cfg.services == [] and cfg.checks == [] and cfg.retry_join == []


def test_dev_mode_defaults() -> None:
    cfg = load_config(dev=True)
    assert cfg.dev and cfg.server and cfg.bootstrap
    assert cfg.data_dir is None
    assert cfg.client_addr == cfg.bind_addr == "127.0.0.1"
    assert cfg.node_name == socket.gethostname()
    assert cfg.default_intention_policy == "allow"
    assert cfg.leave_on_terminate is False


def test_dev_mode_is_in_memory_even_with_a_data_dir(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"data_dir": str(tmp_path), "server": False}, dev=True)
    assert cfg.data_dir is None and cfg.server


def test_dev_mode_can_come_from_flags_and_keeps_overrides() -> None:
    cfg = load_config(flags={"dev": True, "client": "0.0.0.0"})
    assert cfg.dev and cfg.client_addr == "0.0.0.0"


def test_dev_mode_explicit_intention_policy_wins(tmp_path: Path) -> None:
    assert (
        load_json(tmp_path, {"default_intention_policy": "deny"}, dev=True).default_intention_policy
        == "deny"
    )


@pytest.mark.parametrize(
    ("acl", "explicit", "expected"),
    [
        ({}, None, "allow"),  # ACLs off: allow, as Consul
        ({"enabled": True}, None, "allow"),  # ACLs on, default_policy allow (Consul's default)
        ({"enabled": True, "default_policy": "deny"}, None, "deny"),
        ({"enabled": False, "default_policy": "deny"}, None, "allow"),  # off: the policy is unused
        ({"enabled": True, "default_policy": "deny"}, "allow", "allow"),  # set explicitly: kept
        ({}, "deny", "deny"),
    ],
)
def test_default_intention_policy_follows_the_acl_default_policy(
    tmp_path: Path, acl: dict[str, Any], explicit: str | None, expected: str
) -> None:
    body: dict[str, Any] = {"acl": acl}
    if explicit:
        body["default_intention_policy"] = explicit
    for dev in (False, True):
        if not dev:
            body["data_dir"] = str(tmp_path)
        assert load_json(tmp_path, body, dev=dev).default_intention_policy == expected, dev


def test_hand_built_config_derives_dev_defaults() -> None:
    cfg = Config(dev=True)
    assert cfg.server and cfg.bootstrap and cfg.default_intention_policy == "allow"


def test_dev_rejects_bootstrap_expect() -> None:
    with pytest.raises(ConfigError, match="bootstrap_expect"):
        load_config(dev=True, flags={"bootstrap-expect": 3})


# --- files -----------------------------------------------------------------------------------

FULL_JSON: dict[str, Any] = {
    "server": True,
    "bootstrap_expect": 3,
    "node_name": "node-1",
    "datacenter": "East_1",
    "data_dir": "/var/lib/meshd",
    "client_addr": "0.0.0.0",
    "bind_addr": "10.0.0.5",
    "advertise_addr": "192.0.2.10",
    "addresses": {"http": "127.0.0.1", "dns": "0.0.0.0"},
    "ports": {"http": 8501, "dns": 53, "grpc": -1, "serf_lan": 8311, "serf_wan": 8312},
    "domain": "Example.COM",
    "alt_domain": "alt",
    "recursors": ["8.8.8.8", "1.1.1.1:53"],
    "dns_config": {
        "allow_stale": False,
        "max_stale": "10s",
        "node_ttl": "30s",
        "service_ttl": {"*": "5s", "web*": "1m", "web-api": "2s"},
        "only_passing": True,
        "a_record_limit": 2,
        "udp_answer_limit": 5,
        "enable_truncate": False,
        "recursor_timeout": "500ms",
        "soa": {"min_ttl": 60},
    },
    "services": [{"name": "web", "port": 80}],
    "service": {"Name": "db", "Port": 5432},
    "checks": [{"id": "disk", "ttl": "30s"}],
    "enable_script_checks": True,
    "encrypt": KEY32,
    "retry_join": ["10.0.0.6", "10.0.0.7"],
    "retry_interval": "15s",
    "reconnect_timeout": "8h",
    "log_level": "warn",
    "node_meta": {"rack": "r1", "zone_id": "z-2"},
    "tls": {
        "defaults": {
            "ca_file": "/ca.pem",
            "cert_file": "/c.pem",
            "key_file": "/k.pem",
            "verify_incoming": True,
            "verify_outgoing": True,
        },
        "internal_rpc": {"verify_server_hostname": True},
    },
    "default_intention_policy": "allow",
    "leave_on_terminate": True,
    "raft_fsync": False,
    "limits": {"http_max_body_bytes": 4096, "http_max_conns_per_client": 50},
}

FULL_HCL = f"""
server = true
bootstrap_expect = 3
node_name = "node-1"
datacenter = "East_1"
data_dir = "/var/lib/meshd"
client_addr = "0.0.0.0"
bind_addr = "10.0.0.5"
advertise_addr = "192.0.2.10"
addresses {{
  http = "127.0.0.1"
  dns = "0.0.0.0"
}}
ports {{
  http = 8501
  dns = 53
  grpc = -1
  serf_lan = 8311
  serf_wan = 8312
}}
domain = "Example.COM"
alt_domain = "alt"
recursors = ["8.8.8.8", "1.1.1.1:53"]
dns_config {{
  allow_stale = false
  max_stale = "10s"
  node_ttl = "30s"
  service_ttl {{
    "*" = "5s"
    "web*" = "1m"
    "web-api" = "2s"
  }}
  only_passing = true
  a_record_limit = 2
  udp_answer_limit = 5
  enable_truncate = false
  recursor_timeout = "500ms"
  soa {{ min_ttl = 60 }}
}}
services = [{{ name = "web", port = 80 }}]
service {{
  Name = "db"
  Port = 5432
}}
checks = [{{ id = "disk", ttl = "30s" }}]
enable_script_checks = true
encrypt = "{KEY32}"
retry_join = ["10.0.0.6", "10.0.0.7"]
retry_interval = "15s"
reconnect_timeout = "8h"
log_level = "warn"
node_meta {{
  rack = "r1"
  zone_id = "z-2"
}}
tls {{
  defaults {{
    ca_file = "/ca.pem"
    cert_file = "/c.pem"
    key_file = "/k.pem"
    verify_incoming = true
    verify_outgoing = true
  }}
  internal_rpc {{ verify_server_hostname = true }}
}}
default_intention_policy = "allow"
leave_on_terminate = true
raft_fsync = false
limits {{
  http_max_body_bytes = 4096
  http_max_conns_per_client = 50
}}
"""


def test_full_json_file(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, FULL_JSON)
    assert cfg.server and cfg.bootstrap_expect == 3 and not cfg.bootstrap
    assert cfg.node_name == "node-1"
    assert cfg.datacenter == "east_1"  # Consul lowercases datacenter names
    assert cfg.data_dir == "/var/lib/meshd"
    assert (cfg.client_addr, cfg.bind_addr, cfg.advertise_addr) == (
        "0.0.0.0",
        "10.0.0.5",
        "192.0.2.10",
    )
    assert cfg.addresses == {"http": "127.0.0.1", "dns": "0.0.0.0"}
    assert cfg.ports == Ports(http=8501, https=-1, grpc=-1, dns=53, server=8300, raft=8301)
    assert cfg.domain == "example.com." and cfg.alt_domain == "alt."
    assert cfg.recursors == ["8.8.8.8", "1.1.1.1:53"]
    dns = cfg.dns_config
    assert dns.allow_stale is False and dns.max_stale == 10.0 and dns.node_ttl == 30.0
    assert dns.service_ttl == {"*": 5.0, "web*": 60.0, "web-api": 2.0}
    assert dns.only_passing and dns.a_record_limit == 2 and dns.udp_answer_limit == 5
    assert dns.enable_truncate is False and dns.recursor_timeout == 0.5
    assert dns.soa == {"refresh": 3600, "retry": 600, "expire": 86400, "min_ttl": 60}
    assert cfg.services == [{"name": "web", "port": 80}, {"Name": "db", "Port": 5432}]
    assert cfg.checks == [{"id": "disk", "ttl": "30s"}]
    assert cfg.enable_script_checks and cfg.encrypt == KEY32
    assert cfg.retry_join == ["10.0.0.6", "10.0.0.7"]
    assert cfg.retry_interval == 15.0 and cfg.reconnect_timeout == 8 * 3600
    assert cfg.log_level == "WARN"
    assert cfg.node_meta == {"rack": "r1", "zone_id": "z-2"}
    assert cfg.tls == TLSConfig("/ca.pem", "/c.pem", "/k.pem", True, True, True)
    assert cfg.default_intention_policy == "allow"
    assert cfg.leave_on_terminate is True and cfg.raft_fsync is False
    assert cfg.limits == {"http_max_body_bytes": 4096, "http_max_conns_per_client": 50}
    assert cfg.http_max_body == 4096


def test_hcl_file_equals_json_file(tmp_path: Path) -> None:
    from_json = load_json(tmp_path, FULL_JSON)
    from_hcl = load_config(files=[write(tmp_path / "a.hcl", FULL_HCL)])
    assert from_hcl == from_json


def test_hcl_repeated_blocks_become_lists(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.hcl",
        """
service {
  name = "web"
  check { ttl = "10s" }
}
service { name = "db" }
services { name = "cache" }
check {
  id = "c1"
  ttl = "5s"
}
""",
    )
    cfg = load_config(files=[path])
    # `services` before `service`, as Consul appends them; bodies stay raw
    assert cfg.services == [
        {"name": "web", "check": {"ttl": "10s"}},
        {"name": "db"},
        {"name": "cache"},
    ]
    assert cfg.checks == [{"id": "c1", "ttl": "5s"}]


def test_legacy_top_level_tls_keys_and_tls_shorthand(tmp_path: Path) -> None:
    cfg = load_json(
        tmp_path,
        {
            "ca_file": "/ca",
            "verify_outgoing": True,
            "verify_server_hostname": True,
            "tls": {"cert_file": "/c", "key_file": "/k"},
        },
    )
    assert cfg.tls == TLSConfig("/ca", "/c", "/k", False, True, True)


def test_case_insensitive_keys_and_json_null(tmp_path: Path) -> None:
    cfg = load_json(
        tmp_path, {"Datacenter": "dc2", "Ports": {"HTTP": 9000}, "advertise_addr": None}
    )
    assert cfg.datacenter == "dc2" and cfg.ports.http == 9000 and cfg.advertise_addr is None


def test_empty_strings_mean_unset(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"advertise_addr": "", "alt_domain": "", "encrypt": ""})
    assert cfg.advertise_addr is None and cfg.alt_domain is None and cfg.encrypt is None


def test_encrypt_accepts_16_byte_key(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"encrypt": KEY16}).encrypt == KEY16


def test_service_ttl_wildcards(tmp_path: Path) -> None:
    dns = load_json(
        tmp_path,
        {"dns_config": {"service_ttl": {"*": "5s", "web*": "10s", "web-api*": "20s", "web": "1s"}}},
    ).dns_config
    assert dns.service_ttl == {"*": 5.0, "web*": 10.0, "web-api*": 20.0, "web": 1.0}
    assert dns.ttl_for("web") == 1.0  # exact beats any wildcard
    assert dns.ttl_for("web-api-v2") == 20.0  # longest prefix wins
    assert dns.ttl_for("webby") == 10.0
    assert dns.ttl_for("db") == 5.0
    assert DNSConfig(service_ttl={"web*": 3.0}).ttl_for("db") == 0.0


def test_server_with_data_dir_and_bootstrap(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"server": True, "bootstrap": True, "data_dir": str(tmp_path)})
    assert cfg.server and cfg.bootstrap and cfg.leave_on_terminate is False


# --- merging ---------------------------------------------------------------------------------


def test_dir_files_merge_in_lexical_order(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    write(
        d / "20-b.hcl",
        'datacenter = "second"\nretry_join = ["b"]\n'
        'service { name = "b" }\nports { dns = 8653 }\nnode_meta { z = "2" }',
    )
    write(
        d / "10-a.json",
        {
            "datacenter": "first",
            "log_level": "debug",
            "retry_join": ["a"],
            "services": [{"name": "a"}],
            "ports": {"http": 8555},
            "node_meta": {"a": "1", "z": "1"},
            "dns_config": {"service_ttl": {"*": "1s"}},
        },
    )
    write(d / "30-c.json", {"dns_config": {"service_ttl": {"web*": "2s"}}})
    write(d / "99-ignored.txt", "not config")
    write(d / "README.md", "# nope")
    write(d / "sub" / "00-nested.json", {"datacenter": "nested"})
    cfg = load_config(dirs=[str(d)])
    assert cfg.datacenter == "second"
    assert cfg.log_level == "DEBUG"
    assert cfg.retry_join == ["a", "b"]
    assert cfg.services == [{"name": "a"}, {"name": "b"}]
    assert (cfg.ports.http, cfg.ports.dns) == (8555, 8653)
    assert cfg.node_meta == {"a": "1", "z": "2"}
    assert cfg.dns_config.service_ttl == {"*": 1.0, "web*": 2.0}


def test_files_in_given_order_then_dirs(tmp_path: Path) -> None:
    f1 = write(tmp_path / "one.json", {"datacenter": "one", "recursors": ["1.1.1.1"]})
    f2 = write(tmp_path / "two.hcl", 'datacenter = "two"\nrecursors = ["2.2.2.2"]')
    write(tmp_path / "d" / "x.json", {"recursors": ["3.3.3.3"], "node_name": "from-dir"})
    cfg = load_config(files=[f2, f1], dirs=[tmp_path / "d"])
    assert cfg.datacenter == "one"
    assert cfg.recursors == ["2.2.2.2", "1.1.1.1", "3.3.3.3"]
    assert cfg.node_name == "from-dir"


def test_empty_dir_and_empty_hcl_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (
        load_config(dirs=[str(tmp_path / "empty")], files=[write(tmp_path / "e.hcl", "")])
        == Config()
    )


# --- flags -----------------------------------------------------------------------------------


def test_flags_override_files(tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.json",
        {
            "ports": {"http": 8501, "dns": 8601},
            "client_addr": "127.0.0.1",
            "node_name": "file",
            "datacenter": "dcfile",
            "retry_join": ["from-file"],
            "node_meta": {"a": "file"},
            "log_level": "info",
            "server": True,
            "data_dir": "/data",
        },
    )
    cfg = load_config(
        files=[f],
        flags={
            "http-port": 9500,
            "client": "0.0.0.0",
            "node": "flag",
            "datacenter": "dcflag",
            "retry-join": ("from-flag",),
            "node-meta": ("a:flag", "b:x:y", "c"),
            "log-level": "ERR",
            "bind": "10.1.1.1",
            "advertise": "10.1.1.2",
            "grpc-port": 9502,
            "dns-port": None,
            "https-port": None,
            "encrypt": KEY16,
            "domain": "mesh",
            "alt-domain": "ALT.example",
            "recursor": ["9.9.9.9"],
            "bootstrap-expect": 3,
            "enable-script-checks": True,
            "data-dir": "/flag-data",
            "server-port": 9300,
            "retry-interval": "5s",
            "serf-lan-port": 9301,
        },
    )
    assert cfg.ports.http == 9500 and cfg.ports.dns == 8601 and cfg.ports.grpc == 9502
    assert cfg.ports.server == 9300
    assert cfg.client_addr == "0.0.0.0" and cfg.node_name == "flag"
    assert cfg.datacenter == "dcflag" and cfg.log_level == "ERROR"
    assert cfg.retry_join == ["from-file", "from-flag"]  # lists concatenate, like Consul
    assert cfg.node_meta == {"a": "flag", "b": "x:y", "c": ""}
    assert (cfg.bind_addr, cfg.advertise_addr) == ("10.1.1.1", "10.1.1.2")
    assert cfg.encrypt == KEY16 and cfg.domain == "mesh." and cfg.alt_domain == "alt.example."
    assert cfg.recursors == ["9.9.9.9"] and cfg.bootstrap_expect == 3
    assert cfg.enable_script_checks and cfg.data_dir == "/flag-data"
    assert cfg.retry_interval == 5.0


def test_flags_not_given_are_ignored(tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.json",
        {"server": True, "data_dir": "/d", "retry_join": ["x"], "enable_script_checks": True},
    )
    cfg = load_config(
        files=[f],
        flags={
            "server": False,
            "retry-join": (),
            "node": None,
            "enable-script-checks": False,
            "http-port": None,
        },
    )
    assert cfg.server and cfg.retry_join == ["x"] and cfg.enable_script_checks


def test_flags_accept_click_underscore_names() -> None:
    cfg = load_config(flags={"http_port": 8600 + 1, "data_dir": "/d", "server": True})
    assert cfg.ports.http == 8601 and cfg.data_dir == "/d"


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        ({"http-port": 0}, "-http-port"),
        ({"http-port": "8500"}, "-http-port"),
        ({"bind": "localhost"}, "-bind"),
        ({"datacenter": "dc/1"}, "-datacenter"),
        ({"node": "has space"}, "-node"),
        ({"encrypt": "short"}, "-encrypt"),
        ({"node-meta": ["consul-x:1"]}, "-node-meta"),
        ({"bootstrap-expect": -1}, "-bootstrap-expect"),
        ({"log-level": "chatty"}, "-log-level"),
        ({"no-such-flag": 1}, "-no-such-flag"),
    ],
)
def test_bad_flags_name_the_flag(flags: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(flags=flags)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "dotted"),
    [
        ({"foo": 1}, "foo"),
        ({"ports": {"htp": 1}}, "ports.htp"),
        ({"addresses": {"rpc": "127.0.0.1"}}, "addresses.rpc"),
        ({"dns_config": {"bogus": True}}, "dns_config.bogus"),
        ({"dns_config": {"soa": {"serial": 1}}}, "dns_config.soa.serial"),
        (
            {"tls": {"defaults": {"verify_server_hostname": True}}},
            "tls.defaults.verify_server_hostname",
        ),
        ({"tls": {"https": {}}}, "tls.https"),
        ({"limits": {"nope": 1}}, "limits.nope"),
    ],
)
def test_unknown_keys_are_errors_naming_file_and_dotted_key(
    tmp_path: Path, content: dict[str, Any], dotted: str
) -> None:
    msg = json_error(tmp_path, content)
    assert f"unknown key '{dotted}'" in msg
    assert msg.startswith("config file ")


def test_unknown_key_in_hcl_names_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.hcl", "ports {\n  htpp = 1\n}")
    with pytest.raises(ConfigError, match=r"bad\.hcl: unknown key 'ports\.htpp'"):
        load_config(files=[path])


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"ports": {"http": "8500"}}, "ports.http"),
        ({"ports": {"http": 0}}, "ports.http"),
        ({"ports": {"dns": 70000}}, "ports.dns"),
        ({"ports": {"grpc": -2}}, "ports.grpc"),
        ({"ports": {"server": True}}, "ports.server"),
        ({"ports": {"serf_lan": "x"}}, "ports.serf_lan"),
        ({"ports": "8500"}, "ports"),
        ({"server": "yes"}, "server"),
        ({"bootstrap_expect": -1}, "bootstrap_expect"),
        ({"bootstrap_expect": 1.5}, "bootstrap_expect"),
        ({"datacenter": "dc 1"}, "datacenter"),
        ({"datacenter": ""}, "datacenter"),
        ({"datacenter": "dc1\n"}, "datacenter"),
        ({"node_name": "bad name!"}, "node_name"),
        ({"node_name": ""}, "node_name"),
        ({"data_dir": 5}, "data_dir"),
        ({"client_addr": "localhost"}, "client_addr"),
        ({"client_addr": "127.0.0.1 nope"}, "client_addr"),
        ({"bind_addr": "0.0.0.300"}, "bind_addr"),
        ({"advertise_addr": "example.com"}, "advertise_addr"),
        ({"addresses": {"http": 1}}, "addresses.http"),
        ({"domain": "bad domain"}, "domain"),
        ({"alt_domain": "a..b"}, "alt_domain"),
        ({"recursors": "8.8.8.8"}, "recursors"),
        ({"retry_join": [1]}, "retry_join"),
        ({"services": "web"}, "services"),
        ({"services": [{"name": "ok"}, "web"]}, "services"),
        ({"service": 3}, "service"),
        ({"checks": [[]]}, "checks"),
        ({"encrypt": "not base64!"}, "encrypt"),
        ({"encrypt": base64.b64encode(b"tooshort").decode()}, "encrypt"),
        ({"retry_interval": "soon"}, "retry_interval"),
        ({"retry_interval": "0s"}, "retry_interval"),
        ({"reconnect_timeout": "1h"}, "reconnect_timeout"),
        ({"log_level": "loud"}, "log_level"),
        ({"node_meta": {"consul-version": "1"}}, "node_meta"),
        ({"node_meta": {"bad key": "1"}}, "node_meta"),
        ({"node_meta": {"k": 1}}, "node_meta"),
        ({"node_meta": {"k": "v" * 513}}, "node_meta"),
        ({"node_meta": ["k"]}, "node_meta"),
        ({"default_intention_policy": "maybe"}, "default_intention_policy"),
        ({"leave_on_terminate": 1}, "leave_on_terminate"),
        ({"dns_config": {"max_stale": "stale"}}, "dns_config.max_stale"),
        ({"dns_config": {"node_ttl": "-1s"}}, "dns_config.node_ttl"),
        ({"dns_config": {"service_ttl": {"*": "x"}}}, "dns_config.service_ttl"),
        ({"dns_config": {"service_ttl": {"w*b": "1s"}}}, "dns_config.service_ttl"),
        ({"dns_config": {"service_ttl": "5s"}}, "dns_config.service_ttl"),
        ({"dns_config": {"udp_answer_limit": -1}}, "dns_config.udp_answer_limit"),
        ({"dns_config": {"a_record_limit": "2"}}, "dns_config.a_record_limit"),
        ({"dns_config": {"recursor_timeout": 0}}, "dns_config.recursor_timeout"),
        ({"dns_config": {"allow_stale": "true"}}, "dns_config.allow_stale"),
        ({"dns_config": {"soa": {"refresh": -5}}}, "dns_config.soa.refresh"),
        ({"tls": {"defaults": {"ca_file": 3}}}, "tls.defaults.ca_file"),
        ({"verify_incoming": "yes"}, "verify_incoming"),
        ({"limits": {"http_max_body_bytes": -1}}, "limits.http_max_body_bytes"),
        ({"limits": {"http_max_conns_per_client": "many"}}, "limits.http_max_conns_per_client"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, content: dict[str, Any], key: str) -> None:
    assert f"'{key}'" in json_error(tmp_path, content)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"server": True}, "data_dir is required"),
        ({"bootstrap_expect": 3}, "server"),
        ({"bootstrap": True}, "server"),
        (
            {"server": True, "data_dir": "/d", "bootstrap": True, "bootstrap_expect": 3},
            "mutually exclusive",
        ),
        ({"domain": "consul", "alt_domain": "consul."}, "alt_domain"),
        ({"node_meta": {f"k{i}": "v" for i in range(65)}}, "node_meta"),
        ({"tls": {"cert_file": "/c"}}, "key_file"),
        ({"tls": {"verify_incoming": True}}, "ca_file"),
        ({"ports": {"https": 8501}}, "ports.https"),
    ],
)
def test_cross_key_rules(tmp_path: Path, content: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_json(tmp_path, content)


def test_https_with_cert_is_fine(tmp_path: Path) -> None:
    cfg = load_json(
        tmp_path, {"ports": {"https": 8501}, "tls": {"cert_file": "/c", "key_file": "/k"}}
    )
    assert cfg.ports.https == 8501


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.json", "{not json", "invalid JSON"),
        ("bad.json", "", "invalid JSON"),
        ("bad.json", "[1, 2]", "must be an object"),
        ("bad.hcl", "ports = {", "invalid HCL"),
        ("bad.yaml", "server: true", "unknown format"),
    ],
)
def test_unparseable_files_name_the_file(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigError) as exc:
        load_config(files=[path])
    assert name in str(exc.value) and needle in str(exc.value)


def test_missing_file_and_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json"):
        load_config(files=[str(tmp_path / "nope.json")])
    with pytest.raises(ConfigError, match="config dir"):
        load_config(dirs=[str(tmp_path / "missing")])


def test_error_in_a_dir_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a.json", {"datacenter": "ok"})
    write(tmp_path / "d" / "b.hcl", 'dns_config { max_stale = "forever" }')
    with pytest.raises(ConfigError, match=r"b\.hcl: invalid 'dns_config\.max_stale'"):
        load_config(dirs=[str(tmp_path / "d")])


def test_examples_in_the_configuration_reference_load(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    examples = re.findall(r"```(json|hcl)\n(.*?)```", doc.read_text(), re.DOTALL)
    assert {lang for lang, _ in examples} == {"json", "hcl"}
    loaded = [
        load_config(files=[write(tmp_path / f"ex{i}.{lang}", body)])
        for i, (lang, body) in enumerate(examples)
    ]
    assert all(cfg == loaded[0] for cfg in loaded)
    assert loaded[0].services[0]["name"] == "web"


# --- keys for running under systemd (issue 11) ------------------------------------------------


def test_logging_and_lifecycle_keys(tmp_path: Path) -> None:
    cfg = load_json(
        tmp_path,
        {
            "log_json": True,
            "log_file": "/var/log/meshd/",
            "log_rotate_bytes": 1048576,
            "log_rotate_duration": "1h",
            "log_rotate_max_files": -1,
            "pid_file": "/run/meshd.pid",
            "skip_leave_on_interrupt": False,
            "watches": [{"type": "key", "key": "a", "args": ["/bin/true"]}],
        },
    )
    assert (cfg.log_json, cfg.log_file, cfg.log_rotate_bytes) == (True, "/var/log/meshd/", 1 << 20)
    assert (cfg.log_rotate_duration, cfg.log_rotate_max_files) == (3600.0, -1)
    assert (cfg.pid_file, cfg.skip_leave_on_interrupt) == ("/run/meshd.pid", False)
    assert cfg.watches == [{"type": "key", "key": "a", "args": ["/bin/true"]}]


def test_logging_flags() -> None:
    cfg = load_config(
        flags={
            "log-json": True,
            "log-file": "/tmp/m.log",
            "log-rotate-bytes": 10,
            "log-rotate-duration": "30m",
            "log-rotate-max-files": 3,
            "pid-file": "/tmp/m.pid",
        }
    )
    assert (cfg.log_json, cfg.log_file, cfg.log_rotate_bytes) == (True, "/tmp/m.log", 10)
    assert (cfg.log_rotate_duration, cfg.log_rotate_max_files, cfg.pid_file) == (
        1800.0,
        3,
        "/tmp/m.pid",
    )


def test_leave_defaults_follow_consul() -> None:
    server, client = Config(server=True), Config(server=False)
    assert (server.leave_on_terminate, server.skip_leave_on_interrupt) == (False, True)
    assert (client.leave_on_terminate, client.skip_leave_on_interrupt) == (True, False)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"log_rotate_max_files": -2}, "-1 (keep none)"),
        ({"log_rotate_duration": "0s"}, "greater than zero"),
        ({"log_rotate_bytes": -1}, "non-negative"),
        ({"watches": "key"}, "object or a list of objects"),
    ],
)
def test_bad_logging_keys(tmp_path: Path, content: dict[str, Any], reason: str) -> None:
    assert reason in json_error(tmp_path, content)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    message = json_error(tmp_path, {"bogus": 1, "ports": {"http": 0}, "log_level": "loud"})
    assert len(message.splitlines()) == 3
    assert "'bogus'" in message and "'ports.http'" in message and "'log_level'" in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"raft_snapshot_threshold": 0}, "positive integer"),
        ({"raft_snapshot_threshold": "100"}, "positive integer"),
        ({"raft_snapshot_interval": "0s"}, "greater than zero"),
    ],
)
def test_bad_snapshot_settings_are_refused_with_the_key(
    tmp_path: Path, content: dict[str, Any], reason: str
) -> None:
    """A threshold of 0 would compact on every Raft tick; the file names the bad key."""
    message = json_error(tmp_path, content)
    assert next(iter(content)) in message and reason in message


def test_snapshot_settings_reach_the_config(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"raft_snapshot_threshold": 500, "raft_snapshot_interval": "30s"})
    assert (cfg.raft_snapshot_threshold, cfg.raft_snapshot_interval) == (500, 30.0)
