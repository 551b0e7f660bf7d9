"""SecretIDs are never logged: an agent at debug level goes through bootstrap, token CRUD,
clones, agent tokens, refused and unknown secrets, an expiring token; no secret it saw is in
anything it wrote. (Login with an auth method is covered where login lives.)"""

from __future__ import annotations

import uuid

from acl_helpers import ACLAgent, start_acl_agent
from helpers import wait_for


def _exercise(acl: ACLAgent) -> list[str]:
    """Every secret the agent is shown, in every place a secret can travel."""
    boot = acl.call("PUT", "/v1/acl/bootstrap", token=None).json()["SecretID"]
    secrets = [boot]

    def ok(method: str, path: str, body: object = None, token: str = boot) -> dict[str, object]:
        r = acl.call(method, path, body, token)
        assert r.status == 200, (method, path, r.body)
        return r.json() if r.body.strip() else {}

    pol = ok("PUT", "/v1/acl/policy", {"Name": "kv", "Rules": 'key_prefix "" { policy = "write" }'})
    chosen = str(uuid.uuid4())
    made = ok("PUT", "/v1/acl/token", {"SecretID": chosen, "Policies": [{"ID": pol["ID"]}]})
    secrets.append(chosen)
    clone = ok("PUT", f"/v1/acl/token/{made['AccessorID']}/clone", {"Description": "c"})
    secrets.append(str(clone["SecretID"]))
    links = [{"ID": pol["ID"]}]  # an update replaces the token (Consul): its policies again
    ok("PUT", f"/v1/acl/token/{made['AccessorID']}", {"Description": "u", "Policies": links})
    ok("GET", f"/v1/acl/token/{made['AccessorID']}")
    ok("GET", "/v1/acl/tokens")
    ok("GET", "/v1/acl/token/self", token=chosen)
    for how in ("x", "bearer", "query"):
        assert acl.call("PUT", "/v1/kv/s", b"v", chosen, how).status == 200
    unknown = str(uuid.uuid4())
    secrets.append(unknown)
    for how in ("x", "bearer", "query"):
        assert acl.call("GET", "/v1/kv/s", token=unknown, how=how).status == 403
    refused = acl.call("PUT", "/v1/acl/token", {}, chosen)  # lacks acl:write
    assert refused.status == 403
    bad_secret = "not-a-uuid-" + uuid.uuid4().hex
    secrets.append(bad_secret)
    assert acl.call("PUT", "/v1/acl/token", {"SecretID": bad_secret}, boot).status == 400
    short = ok("PUT", "/v1/acl/token", {"ExpirationTTL": "2s", "Policies": [{"ID": pol["ID"]}]})
    secrets.append(str(short["SecretID"]))
    wait_for(lambda: acl.call("GET", "/v1/kv/s", token=str(short["SecretID"])).status == 403)
    for kind in ("agent", "default", "dns"):
        value = str(ok("PUT", "/v1/acl/token", {"Description": kind})["SecretID"])
        secrets.append(value)
        ok("PUT", f"/v1/agent/token/{kind}", {"Token": value})
    ok("DELETE", f"/v1/acl/token/{clone['AccessorID']}")
    assert acl.call("GET", "/v1/kv/s", token=str(clone["SecretID"])).status == 403
    return secrets


def test_no_secret_reaches_the_log_at_debug_level() -> None:
    acl = start_acl_agent(
        initial_management=False,
        agent_token=False,
        acl='token_min_expiration_ttl = "1s"\nenable_token_persistence = true',
    )
    try:
        secrets = _exercise(acl)
    finally:
        acl.proc.stop()
    log = acl.proc.read_log()
    assert "[DEBUG]" in log and "created the ACL token 'Anonymous Token'" in log
    leaked = [s for s in secrets if s in log]
    assert leaked == []
