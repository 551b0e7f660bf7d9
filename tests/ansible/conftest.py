"""One converged cluster for the whole module: 3 servers + 2 client agents, deployed by
`ansible-playbook site.yml` over SSH onto namespace hosts (tests/ansible/nshosts.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy import CLIENTS, SERVERS, Deployment, PlaybookRun, build_wheelhouse, inventory
from netns import Network, cleanup_stale, free_subnet
from nshosts import make_key, start_host, systemctl_wrapper, wait_for_ssh


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    assert os.geteuid() == 0, "the namespace hosts need root"
    cleanup_stale("an")
    with tempfile.TemporaryDirectory(prefix="meshd-ansible-") as tmp:
        work = Path(tmp)
        (work / "cp").mkdir()
        (work / "atmp").mkdir()
        wheels = build_wheelhouse(work / "wheelhouse")
        key = work / "id_ed25519"
        pub = make_key(key)
        systemctl = systemctl_wrapper(work / "systemctl")
        with Network(len(SERVERS) + len(CLIENTS), prefix="an", subnet=free_subnet()) as net:
            names = SERVERS + CLIENTS
            hosts = {
                n: start_host(n, h, work / n, pub, systemctl)
                for n, h in zip(names, net.hosts, strict=True)
            }
            wait_for_ssh(list(hosts.values()), key)
            dep = Deployment(work, key, hosts)
            dep.inventory = inventory(hosts, wheels)
            yield dep  # closing the network kills everything left in the namespaces


@pytest.fixture(scope="module")
def converged(deployment: Deployment) -> tuple[Deployment, PlaybookRun, PlaybookRun]:
    """site.yml twice: the first run converges, the second must change nothing."""
    first = deployment.playbook()
    assert first.returncode == 0, str(first)
    second = deployment.playbook()
    assert second.returncode == 0, str(second)
    return deployment, first, second
