"""The web UI with ACLs on, in headless Chromium against a real agent (default deny): the UI
asks for a token, refuses a wrong one, shows what a read token may see and refuses in the page
a write that token lacks. Screenshots go to $MESHD_UI_SHOTS (default: a temp dir)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid

from acl_helpers import start_acl_agent
from test_ui_browser import SCRIPT, pytestmark  # noqa: F401  (the same install checks)

ACL_SCRIPT = SCRIPT.with_name("ui_acl_check.mjs")


def test_ui_asks_for_a_token_and_enforces_it() -> None:
    shots = os.environ.get("MESHD_UI_SHOTS") or tempfile.mkdtemp(prefix="meshd-ui-acl-")
    os.makedirs(shots, exist_ok=True)
    acl = start_acl_agent()
    try:
        acl.ok(
            "PUT",
            "/v1/agent/service/register",
            {"Name": "web", "Port": 8080, "Check": {"TTL": "600s", "Status": "passing"}},
        )
        _, reader = acl.token_for(
            'service_prefix "" { policy = "read" }\n'
            'node_prefix "" { policy = "read" }\n'
            'key_prefix "" { policy = "read" }\n'
            'acl = "read"'
        )
        proc = subprocess.run(
            ["node", str(ACL_SCRIPT), acl.proc.http, shots, str(uuid.uuid4()), reader],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert "failure" not in seen, seen["failure"]
        assert seen["errors"] == []
        # anonymous: a way to log in, and the empty list says ACLs cut it
        assert seen["anonymousNav"] == "Log in"
        assert "web" not in seen["anonymousServices"]
        # a token the agent does not know is refused at the form and not kept
        assert "ACL not found" in seen["wrongToken"]
        assert seen["storedAfterWrong"] is None
        # the read token sees the service and is named in the nav
        assert "web" in seen["readerServices"]
        assert "Log out" in seen["readerNav"]
        # ... but cannot write a key: the page says so and nothing is written
        assert "Permission denied" in seen["kvWrite"]
        assert acl.call("GET", "/v1/kv/ui-acl/denied").status == 404
        # logging out forgets the token
        assert seen["storedAfterLogout"] is None
        assert all(os.path.getsize(p) > 0 for p in seen["screenshots"])
    finally:
        acl.proc.stop()
