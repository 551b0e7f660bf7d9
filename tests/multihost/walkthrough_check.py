"""Run inside a fresh network namespace (own loopback, so the walkthrough's fixed ports are
free): the "Try it" commands of docs/observability.md as written, then what the text says the
reader will see. Prints one `CHECK name value` line per observation for the test to assert."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any


def get(path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:8500{path}", timeout=5) as r:
        return r.status, r.read()


def web_api_rate() -> float:
    _, body = get("/v1/meshd/graph?window=60s")
    for e in json.loads(body)["Edges"]:
        if (e["Source"], e["Destination"]) == ("web", "api"):
            return float(e["Metrics"]["RequestsPerSecond"] or 0)
    return 0.0


def main(block: str, workdir: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open(os.path.join(workdir, "walkthrough.log"), "wb") as log:  # the agent's output
        shell = subprocess.Popen(
            ["bash", "-c", block],
            cwd=workdir,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        shell.wait(60)
        print("CHECK steps_exit", shell.returncode, flush=True)
        started = time.monotonic()
        rate = 0.0
        # "about 5 req/s" once a whole interval of traffic is in (the first one may be partial)
        while time.monotonic() - started < 60 and rate < 4:
            time.sleep(1)
            try:
                rate = web_api_rate()
            except OSError:
                continue
        print("CHECK rate", rate, flush=True)
        print("CHECK ui", get("/ui/")[0], flush=True)
        top = subprocess.run(["meshd", "top", "-once"], capture_output=True, text=True)
        row = next((ln.split() for ln in top.stdout.splitlines() if ln.startswith("api ")), [])
        print("CHECK top_api_from", row[-1] if row else "", flush=True)
        ok = subprocess.run(["meshd", "explain", "web", "api"], capture_output=True, text=True)
        print("CHECK explain", ok.returncode, flush=True)
        req = urllib.request.Request(
            "http://127.0.0.1:8500/v1/connect/intentions/exact?source=web&destination=api",
            data=b'{"Action": "deny"}',
            method="PUT",
        )
        urllib.request.urlopen(req, timeout=5).read()
        denied = subprocess.run(["meshd", "explain", "web", "api"], capture_output=True, text=True)
        print("CHECK explain_denied", denied.returncode, flush=True)
    finally:
        os.killpg(shell.pid, signal.SIGTERM)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
