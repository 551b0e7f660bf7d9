"""Which config changes a reload applies and which it reports as needing a restart."""

from __future__ import annotations

from meshd.agent.reload import merge_reload
from meshd.config import Config, TLSConfig
from meshd.config_model import Ports

merge = merge_reload


def test_reloadable_keys_applied_others_kept() -> None:
    old = Config(node_name="a", log_level="INFO", recursors=[], ports=Ports(http=8500))
    new = Config(
        node_name="b",
        log_level="DEBUG",
        recursors=["1.1.1.1"],
        ports=Ports(http=9500),
        data_dir="/elsewhere",
        services=[{"name": "web"}],
    )
    cfg, applied, ignored = merge(old, new)
    assert set(applied) == {"log_level", "recursors", "services"}
    assert set(ignored) == {"node_name", "ports", "data_dir"}
    assert (cfg.log_level, cfg.recursors, cfg.services) == ("DEBUG", ["1.1.1.1"], [{"name": "web"}])
    assert (cfg.node_name, cfg.ports.http, cfg.data_dir) == ("a", 8500, None)


def test_tls_files_reload_but_switches_need_a_restart() -> None:
    files = {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}
    old = Config(tls=TLSConfig(**files, verify_incoming=True))
    new = Config(tls=TLSConfig(**{**files, "cert_file": "c2.pem"}, verify_incoming=False))
    cfg, applied, ignored = merge(old, new)
    assert "tls" in applied and ignored == ["tls.verify_incoming"]
    assert cfg.tls.cert_file == "c2.pem" and cfg.tls.verify_incoming is True


def test_turning_tls_on_needs_a_restart() -> None:
    old = Config()
    new = Config(tls=TLSConfig(ca_file="ca.pem", cert_file="c.pem", key_file="k.pem"))
    cfg, applied, ignored = merge(old, new)
    assert ignored == ["tls (turning TLS on or off)"] and applied == []
    assert cfg.tls.cert_file is None


def test_no_change_is_empty() -> None:
    assert merge(Config(node_name="n"), Config(node_name="n"))[1:] == ([], [])
