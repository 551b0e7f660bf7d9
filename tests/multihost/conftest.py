"""Fixtures that hand out namespace networks and guarantee their teardown."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netns import Network, cleanup_stale, free_subnet


@pytest.fixture(scope="session")
def _stale_netns_cleaned() -> None:
    """Aborted earlier runs may hold our names or subnets; clear them once, before any build."""
    if os.geteuid() == 0:
        cleanup_stale("mh")


@pytest.fixture
def network_factory(_stale_netns_cleaned: None) -> Iterator[Callable[..., Network]]:
    """Picks a free subnet unless one is given, so several networks can coexist."""
    nets: list[Network] = []

    def make(n_hosts: int, **kw: Any) -> Network:
        for attempt in range(5):
            try:
                net = Network(n_hosts, **{"subnet": free_subnet(), **kw})
                break
            except RuntimeError:
                if "subnet" in kw or attempt == 4:
                    raise
                time.sleep(random.random() / 4)  # lost a race for a subnet to a parallel run
        nets.append(net)
        return net

    yield make
    errors = []
    for net in reversed(nets):
        try:
            net.close()
        except Exception as e:  # close every network even if one fails, then report
            errors.append(e)
    if errors:
        raise errors[0]
