"""`meshd intention` and `meshd config` against a real dev agent (default intention policy allow).

The agent is shared by the whole session, so every test uses its own service names.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from helpers import MeshdProcess, run_meshd


def meshd(
    agent: MeshdProcess,
    *args: str,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_meshd(*args, http_addr=agent.http, stdin=stdin)


def ok(agent: MeshdProcess, *args: str, stdin: str | None = None) -> str:
    r = meshd(agent, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def fails(agent: MeshdProcess, *args: str, stdin: str | None = None, code: int = 1) -> str:
    """The command failed with exactly one `Error: ...` line on stderr; returns that line."""
    r = meshd(agent, *args, stdin=stdin)
    assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def names(*prefixes: str) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{p}-{tag}" for p in prefixes]


def entry(agent: MeshdProcess, kind: str, name: str) -> dict[str, Any] | None:
    r = agent.get(f"/v1/config/{kind}/{name}")
    return r.json() if r.status == 200 else None


def test_intention_lifecycle(agent: MeshdProcess) -> None:
    src, dst, other = names("web", "api", "other")
    assert ok(agent, "intention", "create", src, dst).strip() == f"Created: {src} => {dst} (allow)"

    err = fails(agent, "intention", "create", "-deny", src, dst)
    assert "already exists" in err
    assert json.loads(ok(agent, "intention", "get", src, dst, "-format=json"))["Action"] == "allow"

    out = ok(agent, "intention", "create", "-deny", "-replace", "-description=no thanks", src, dst)
    assert out.strip() == f"Created: {src} => {dst} (deny)"
    ixn = json.loads(ok(agent, "intention", "get", src, dst, "-format=json"))
    assert (ixn["SourceName"], ixn["DestinationName"], ixn["Action"]) == (src, dst, "deny")
    assert ixn["Description"] == "no thanks" and ixn["Precedence"] == 9

    fields = dict(
        line.split(":", 1) for line in ok(agent, "intention", "get", src, dst).splitlines()
    )
    assert {
        k: v.strip()
        for k, v in fields.items()
        if k in ("Source", "Destination", "Action", "ID", "Precedence", "Description")
    } == {
        "Source": src,
        "Destination": dst,
        "Action": "deny",
        "ID": ixn["ID"],
        "Precedence": "9",
        "Description": "no thanks",
    }
    assert json.loads(ok(agent, "intention", "get", ixn["ID"], "-format=json"))["ID"] == ixn["ID"]

    listing = ok(agent, "intention", "list").splitlines()
    assert listing[0].split() == ["ID", "Source", "Action", "Destination", "Precedence"]
    assert [ixn["ID"], src, "deny", dst, "9"] in [line.split() for line in listing]

    r = meshd(agent, "intention", "check", src, dst)
    assert (r.returncode, r.stdout.strip()) == (2, "Denied")
    r = meshd(agent, "intention", "check", other, dst)  # no intention: dev default allow
    assert (r.returncode, r.stdout.strip()) == (0, "Allowed")

    line = f"{src} => {dst} (deny)"
    assert ok(agent, "intention", "match", "-source", src).splitlines() == [line]
    assert ok(agent, "intention", "match", "-destination", dst).splitlines() == [line]
    assert ok(agent, "intention", "match", dst).splitlines() == [line]  # by destination

    assert ok(agent, "intention", "delete", src, dst).strip() == "Intention deleted."
    assert "not found" in fails(agent, "intention", "get", src, dst).lower()
    assert meshd(agent, "intention", "check", src, dst).returncode == 0
    assert ok(agent, "intention", "match", dst) == ""


def test_wildcard_precedence_in_check_and_match(agent: MeshdProcess) -> None:
    src, dst, other = names("web", "api", "other")
    ok(agent, "intention", "create", "-deny", "*", dst)
    ok(agent, "intention", "create", "-allow", src, dst)
    try:
        assert meshd(agent, "intention", "check", src, dst).returncode == 0
        assert meshd(agent, "intention", "check", other, dst).returncode == 2
        assert ok(agent, "intention", "match", "-destination", dst).splitlines() == [
            f"{src} => {dst} (allow)",
            f"* => {dst} (deny)",
        ]
    finally:
        ok(agent, "intention", "delete", "*", dst)
        ok(agent, "intention", "delete", src, dst)
    assert entry(agent, "service-intentions", dst) is None


def test_intention_create_with_meta(agent: MeshdProcess) -> None:
    src, dst = names("web", "api")
    ok(agent, "intention", "create", "-meta", "team=a", src, dst)
    ixn = json.loads(ok(agent, "intention", "get", src, dst, "-format=json"))
    assert ixn["Meta"] == {"team": "a"}


def test_intention_bad_input_changes_nothing(agent: MeshdProcess) -> None:
    src, dst = names("web", "api")
    fails(agent, "intention", "create", "-allow", "-deny", src, dst)
    fails(agent, "intention", "create", "-meta", "novalue", src, dst)
    assert "wildcard" in fails(agent, "intention", "create", "we*b", dst)
    assert entry(agent, "service-intentions", dst) is None
    r = meshd(agent, "intention", "create", src)
    assert r.returncode != 0 and r.stdout == ""


L7_INTENTIONS = """
Kind = "service-intentions"
Name = "{dst}"
Sources = [
  {{
    Name = "{src}"
    Permissions = [
      {{
        Action = "allow"
        HTTP {{
          PathExact = "/public"
          Methods   = ["GET"]
        }}
      }},
      {{
        Action = "deny"
        HTTP {{
          path_prefix = "/"
        }}
      }}
    ]
  }}
]
"""


def test_config_write_l7_read_list_delete(agent: MeshdProcess, tmp_path: Path) -> None:
    src, dst = names("web", "api")
    defaults = tmp_path / "defaults.hcl"
    defaults.write_text(f'Kind     = "service-defaults"\nName     = "{dst}"\nProtocol = "http"\n')
    assert (
        ok(agent, "config", "write", str(defaults)).strip()
        == f"Config entry written: service-defaults/{dst}"
    )
    intentions = tmp_path / "intentions.hcl"
    intentions.write_text(L7_INTENTIONS.format(src=src, dst=dst))
    assert (
        ok(agent, "config", "write", str(intentions)).strip()
        == f"Config entry written: service-intentions/{dst}"
    )

    read = json.loads(ok(agent, "config", "read", "-kind", "service-defaults", "-name", dst))
    assert (read["Kind"], read["Name"], read["Protocol"]) == ("service-defaults", dst, "http")
    stored = json.loads(ok(agent, "config", "read", "-kind=service-intentions", f"-name={dst}"))
    perms = stored["Sources"][0]["Permissions"]
    assert perms == [
        {"Action": "allow", "HTTP": {"PathExact": "/public", "Methods": ["GET"]}},
        {"Action": "deny", "HTTP": {"PathPrefix": "/"}},
    ]
    assert dst in ok(agent, "config", "list", "-kind", "service-defaults").splitlines()
    assert dst in ok(agent, "config", "list", "-kind", "service-intentions").splitlines()

    # The intention commands see the L7 intention; /check can only reason at L4 -> Denied.
    assert ok(agent, "intention", "match", dst).splitlines() == [f"{src} => {dst} (2 permissions)"]
    ixn = json.loads(ok(agent, "intention", "get", src, dst, "-format=json"))
    assert ixn["Permissions"] == perms and "Action" not in ixn
    assert meshd(agent, "intention", "check", src, dst).returncode == 2

    # The same entry as JSON on stdin, now a plain L4 allow.
    body = {
        "Kind": "service-intentions",
        "Name": dst,
        "Sources": [{"Name": src, "Action": "allow"}],
    }
    assert (
        ok(agent, "config", "write", "-", stdin=json.dumps(body)).strip()
        == f"Config entry written: service-intentions/{dst}"
    )
    assert meshd(agent, "intention", "check", src, dst).returncode == 0

    for kind in ("service-intentions", "service-defaults"):
        assert (
            ok(agent, "config", "delete", "-kind", kind, "-name", dst).strip()
            == f"Config entry deleted: {kind}/{dst}"
        )
        assert "not found" in fails(agent, "config", "read", "-kind", kind, "-name", dst)
        assert dst not in ok(agent, "config", "list", "-kind", kind).splitlines()


def test_config_write_repeated_hcl_blocks(agent: MeshdProcess, tmp_path: Path) -> None:
    src, dst = names("web", "api")
    f = tmp_path / "ixn.hcl"
    f.write_text(
        f'Kind = "service-intentions"\nName = "{dst}"\n'
        f'Sources {{\n  Name = "{src}"\n  Permissions {{\n    Action = "allow"\n'
        f'    HTTP {{\n      PathPrefix = "/v1"\n    }}\n  }}\n}}\n'
        f'Sources {{\n  Name = "*"\n  Action = "deny"\n}}\n'
    )
    ok(agent, "config", "write", str(f))
    try:
        sources = {s["Name"]: s for s in entry(agent, "service-intentions", dst)["Sources"]}
        assert sources[src]["Permissions"] == [{"Action": "allow", "HTTP": {"PathPrefix": "/v1"}}]
        assert sources["*"]["Action"] == "deny" and "Permissions" not in sources["*"]
    finally:
        ok(agent, "config", "delete", "-kind", "service-intentions", "-name", dst)


def test_config_write_cas(agent: MeshdProcess, tmp_path: Path) -> None:
    (dst,) = names("api")
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"Kind": "service-defaults", "Name": dst, "Protocol": "http"}))
    ok(agent, "config", "write", "-cas", "-modify-index=0", str(f))
    index = entry(agent, "service-defaults", dst)["ModifyIndex"]
    f.write_text(json.dumps({"Kind": "service-defaults", "Name": dst, "Protocol": "grpc"}))
    err = fails(agent, "config", "write", "-cas", "-modify-index=0", str(f))
    assert err == f"Error: Config entry not updated: service-defaults/{dst}"
    fails(agent, "config", "write", "-cas", f"-modify-index={index + 1000}", str(f))
    assert entry(agent, "service-defaults", dst)["Protocol"] == "http"
    fails(agent, "config", "write", "-cas", str(f))  # -cas needs -modify-index
    ok(agent, "config", "write", "-cas", f"-modify-index={index}", str(f))
    assert entry(agent, "service-defaults", dst)["Protocol"] == "grpc"
    ok(agent, "config", "delete", "-kind", "service-defaults", "-name", dst)


def test_config_bad_input_changes_nothing(agent: MeshdProcess, tmp_path: Path) -> None:
    src, dst = names("web", "api")
    assert "kind" in fails(agent, "config", "read", "-kind", "bogus", "-name", dst)
    assert "kind" in fails(agent, "config", "list", "-kind", "bogus")
    assert "kind" in fails(agent, "config", "delete", "-kind", "bogus", "-name", dst)
    assert "-kind" in fails(agent, "config", "list")
    assert "-name" in fails(agent, "config", "read", "-kind", "service-defaults")
    assert "bogus" in fails(
        agent, "config", "write", "-", stdin=json.dumps({"Kind": "bogus", "Name": dst})
    )

    malformed = tmp_path / "bad.hcl"
    malformed.write_text('Kind = "service-defaults"\nName = \n')
    assert "bad.hcl" in fails(agent, "config", "write", str(malformed))
    assert "bad.json" in fails(agent, "config", "write", str(tmp_path / "bad.json"))  # missing
    (tmp_path / "list.json").write_text("[1, 2]")
    fails(agent, "config", "write", str(tmp_path / "list.json"))
    fails(agent, "config", "write", "-", stdin='{"Kind": "service-defaults", ')

    bad_action = {
        "Kind": "service-intentions",
        "Name": dst,
        "Sources": [{"Name": src, "Action": "maybe"}],
    }
    assert "Action" in fails(agent, "config", "write", "-", stdin=json.dumps(bad_action))
    assert entry(agent, "service-intentions", dst) is None
    bad_field = {"Kind": "service-defaults", "Name": dst, "Protocool": "http"}
    assert "Protocool" in fails(agent, "config", "write", "-", stdin=json.dumps(bad_field))
    assert entry(agent, "service-defaults", dst) is None

    # A bad write over an existing entry leaves the old one in place.
    ok(agent, "intention", "create", "-deny", src, dst)
    fails(agent, "config", "write", "-", stdin=json.dumps(bad_action))
    assert entry(agent, "service-intentions", dst)["Sources"][0]["Action"] == "deny"
    ok(agent, "intention", "delete", src, dst)


SPLIT_HCL = """
Kind = "service-splitter"
Name = "{api}"
Splits {{
  Weight        = 90
  ServiceSubset = "v1"
}}
Splits {{
  Weight        = 10
  ServiceSubset = "v2"
}}
"""


def test_config_read_chain_shows_the_compiled_discovery_chain(
    agent: MeshdProcess, tmp_path: Path
) -> None:
    (api,) = names("api")
    resolver = {
        "Kind": "service-resolver",
        "Name": api,
        "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        },
    }
    splitter = tmp_path / "splitter.hcl"
    splitter.write_text(SPLIT_HCL.format(api=api))
    # tcp cannot split: refused with Consul's reason, nothing stored
    ok(agent, "config", "write", "-", stdin=json.dumps(resolver))
    assert "does not permit advanced routing" in fails(agent, "config", "write", str(splitter))
    assert entry(agent, "service-splitter", api) is None
    defaults = {"Kind": "service-defaults", "Name": api, "Protocol": "http"}
    ok(agent, "config", "write", "-", stdin=json.dumps(defaults))
    ok(agent, "config", "write", str(splitter))
    chain = json.loads(ok(agent, "config", "read", "-chain", "-name", api))
    assert chain["StartNode"] == f"splitter:{api}.default.default"
    splits = chain["Nodes"][chain["StartNode"]]["Splits"]
    assert [(s["Weight"], s["NextNode"]) for s in splits] == [
        (90, f"resolver:v1.{api}.default.default.dc1"),
        (10, f"resolver:v2.{api}.default.default.dc1"),
    ]
    assert "-name" in fails(agent, "config", "read", "-chain")
    assert "-kind" in fails(
        agent, "config", "read", "-chain", "-kind=service-router", f"-name={api}"
    )
    # the resolver cannot go while the splitter uses its subsets
    assert "subset" in fails(agent, "config", "delete", "-kind=service-resolver", f"-name={api}")
    for kind in ("service-splitter", "service-resolver", "service-defaults"):
        ok(agent, "config", "delete", f"-kind={kind}", f"-name={api}")
