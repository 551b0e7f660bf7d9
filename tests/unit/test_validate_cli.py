"""`meshd validate`: the whole config checked without starting anything, every error named."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from meshd.cli.main import cli


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["validate", *args])
    return r.exit_code, r.stdout, r.stderr


def test_valid_dir_and_file(tmp_path: Path) -> None:
    d = tmp_path / "meshd.d"
    d.mkdir()
    (d / "agent.hcl").write_text('datacenter = "dc2"\nserver = true\ndata_dir = "/var/lib/m"\n')
    (d / "web.json").write_text(
        json.dumps(
            {"service": {"name": "web", "port": 80, "check": {"tcp": ":80", "interval": "5s"}}}
        )
    )
    (d / "README.txt").write_text("not a config file: ignored as the agent ignores it")
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"log_level": "debug", "log_json": True}))
    code, out, err = run(str(d), str(extra))
    assert (code, out.strip(), err) == (0, "Configuration is valid!", "")


def test_quiet(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text("{}")
    assert run("-quiet", str(f)) == (0, "", "")


def test_every_error_is_named(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(
        json.dumps(
            {
                "bogus_key": 1,
                "ports": {"http": 99999},
                "service": {"name": "web", "check": {"http": "ftp://x", "interval": "1s"}},
            }
        )
    )
    b = tmp_path / "b.hcl"
    b.write_text('log_level = "loud"\ncheck { name = "c" args = ["true"] interval = "5s" }\n')
    code, out, err = run(str(a), str(b))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "Config validation failed:"
    expected = [
        (str(a), "'bogus_key'", "unknown key"),
        (str(a), "'ports.http'", "1-65535"),
        (str(a), "'services[0]' (web)", "invalid HTTP URL 'ftp://x'"),
        (str(b), "'log_level'", "must be one of"),
        (str(b), "'checks[0]' (c)", "script checks are disabled"),
    ]
    for path, key, reason in expected:
        assert any(path in ln and key in ln and reason in ln for ln in lines), (key, err)
    assert len(lines) == 1 + len(expected)


def test_cross_key_rules(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"server": True, "tls": {"verify_incoming": True}}))
    code, _, err = run(str(f))
    assert code == 1
    assert "data_dir is required" in err and "require ca_file" in err


def test_script_checks_allowed_when_enabled(tmp_path: Path) -> None:
    f = tmp_path / "a.hcl"
    f.write_text(
        'enable_script_checks = true\ncheck { name = "c" args = ["true"] interval = "5s" }\n'
    )
    assert run(str(f))[0] == 0


def test_unreadable_and_malformed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(str(bad), str(tmp_path / "missing.json"))
    assert code == 1
    assert f"config file {bad}: invalid JSON" in err
    assert "missing.json: cannot read" in err


def test_no_argument() -> None:
    code, _, err = run()
    assert code == 1 and "at least one config file or directory" in err


def test_config_format_for_a_file_without_extension(tmp_path: Path) -> None:
    """Ansible's `template: validate=` checks a temporary file with no extension."""
    f = tmp_path / "tmpXYZ"
    f.write_text('datacenter = "dc2"\nservice { name = "web" }\n')
    code, _, err = run(str(f))
    assert code == 1 and "must end in .json or .hcl" in err
    assert run("-config-format", "hcl", str(f))[0] == 0
    code, _, err = run("-config-format", "json", str(f))
    assert code == 1 and "invalid JSON" in err
