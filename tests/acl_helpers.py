"""A dev agent with ACLs on (default deny), and a client for it that sends a token."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from helpers import MeshdProcess, Response, dev_agent, wait_for

from meshd.acl.model import ANONYMOUS_ACCESSOR

MGMT = str(uuid.uuid4())  # acl.tokens.initial_management (and the agent's own token)


class ACLAgent:
    """A dev agent with ACLs on; every request carries `token` (None: no token at all)."""

    def __init__(self, proc: MeshdProcess) -> None:
        self.proc = proc

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = MGMT, how: str = "x"
    ) -> Response:
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {}
        if token is not None and how == "x":
            headers["X-Consul-Token"] = token
        elif token is not None and how == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            path += ("&" if "?" in path else "?") + f"token={token}"
        req = urllib.request.Request(
            self.proc.http + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return Response(r.status, r.read(), dict(r.headers))
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), dict(e.headers))

    def ok(self, method: str, path: str, body: Any = None, token: str | None = MGMT) -> Any:
        r = self.call(method, path, body, token)
        assert r.status == 200, (method, path, r.status, r.body)
        return r.json() if r.body.strip() else None

    def token_for(self, rules: str) -> tuple[str, str]:
        """(AccessorID, SecretID) of a new token with one policy of `rules`."""
        name = f"p-{uuid.uuid4().hex[:8]}"
        self.ok("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
        tok = self.ok("PUT", "/v1/acl/token", {"Policies": [{"Name": name}]})
        return tok["AccessorID"], tok["SecretID"]


def start_acl_agent(
    tokens: str = "",
    acl: str = "",
    agent_token: bool = True,
    args: tuple[str, ...] = (),
    data_dir: str | None = None,
    initial_management: bool = True,
) -> ACLAgent:
    """`tokens`/`acl`: extra HCL lines inside `acl.tokens {}` / `acl {}`; `args`: more flags;
    `data_dir`: a single server keeping its state there instead of a -dev agent (which keeps
    none); `initial_management`: False leaves the one-time bootstrap to the test (the
    configured token consumes it, as in Consul). Logs at debug level, so that tests can look
    for secrets in everything it writes."""
    conf_dir = tempfile.mkdtemp(prefix="meshd-acl-")
    conf = os.path.join(conf_dir, "acl.hcl")
    with open(conf, "w") as f:
        f.write(
            f'acl {{\n  enabled = true\n  default_policy = "deny"\n{acl}\n'
            f'  tokens {{\n    initial_management = "{MGMT if initial_management else ""}"\n'
            f'    agent = "{MGMT if agent_token else ""}"\n'
            f"{tokens}\n  }}\n}}\n"
        )
    proc = dev_agent(f"-config-file={conf}", "-log-level=debug", *args)
    if data_dir is not None:
        proc.args = [a for a in proc.args if a != "-dev"]
        proc.args += ["-server", "-bootstrap-expect=1", f"-data-dir={data_dir}"]
    own = MGMT if initial_management else None
    proc.request = lambda method, path, body=None, timeout=10.0: ACLAgent(proc).call(  # type: ignore[method-assign]
        method, path, body, own
    )
    if not initial_management:  # no token exists before the bootstrap: a leader is enough
        proc._settled = lambda: True  # type: ignore[method-assign]
        return ACLAgent(proc.start())
    agent = ACLAgent(proc.start())
    # the leader stores the configured and the anonymous tokens once it takes office (as
    # Consul's does): tests about them start after that, as a user reading them would wait
    wait_for(lambda: agent.call("GET", f"/v1/acl/token/{ANONYMOUS_ACCESSOR}").status == 200, 30)
    return agent


def running_acl_agent(**kw: Any) -> Iterator[ACLAgent]:
    """A module fixture's body: an ACL agent (`start_acl_agent`'s options) stopped afterwards."""
    agent = start_acl_agent(**kw)
    try:
        yield agent
    finally:
        agent.proc.stop()
