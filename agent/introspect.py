"""What an agent says about itself: /v1/agent/self, /host, /version, in Consul's shapes.

Kept out of agent.py: these are read-only views over the agent, the host and the config, and
tools (Consul's UI, `consul info`, Nomad's fingerprinting, monitoring) read them field by field.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from meshd import __version__
from meshd.agent import coordinate_client

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

REDACTED = "hidden"  # Consul's DebugConfig shows secrets as "hidden"
_SECRET_KEYS = {"encrypt", "token"}


def version_info() -> dict[str, Any]:
    """GET /v1/agent/version."""
    return {
        "HumanVersion": __version__,
        "Version": __version__,
        "Revision": "",
        "Prerelease": "",
        "BuildDate": "",
        "FIPS": "",
    }


def _member_row(
    name: str, addr: str, port: int, role: str, dc: str, status: int, node_id: str = ""
) -> dict[str, Any]:
    """One member in Consul's shape (Serf's member, with Consul's tags)."""
    tags = {"role": role, "dc": dc, "build": __version__, "port": str(port), "vsn": "2"}
    if node_id:
        tags["id"] = node_id
    return {
        "Name": name,
        "Addr": addr,
        "Port": port,
        "Tags": tags,
        "Status": status,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


async def members(agent: Agent) -> list[dict[str, Any]]:
    """GET /v1/agent/members: the leader's member list."""
    cfg = agent.config
    out = []
    for m in await agent.backend.members():
        port = int(m.RPCAddr.rsplit(":", 1)[1]) if m.RPCAddr else cfg.ports.server
        dc = m.Datacenter or cfg.datacenter
        row = _member_row(m.Name, m.Addr, port, m.Role, dc, m.Status)
        if m.Server:  # meshd's own tag: the server that holds this node's liveness timer
            row["Tags"]["liveness_server"] = m.Server
        out.append(row)
    return out


def member_json(agent: Agent) -> dict[str, Any]:
    """This agent as a member (`Member` of /v1/agent/self)."""
    cfg = agent.config
    role = "consul" if cfg.server else "node"
    return _member_row(
        cfg.node_name,
        agent.address,
        cfg.ports.server,
        role,
        cfg.datacenter,
        1,
        agent.local.node_id,
    )


def _pascal(key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))


def _sanitized(value: Any, key: str = "") -> Any:
    if key.lower() in _SECRET_KEYS and value:
        return REDACTED
    if isinstance(value, dict):
        return {
            (_pascal(k) if "_" in k or k.islower() else k): _sanitized(v, k)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_sanitized(v) for v in value]
    return value


def debug_config(agent: Agent) -> dict[str, Any]:
    """The effective configuration with secrets hidden (Consul's `DebugConfig`)."""
    raw = dataclasses.asdict(agent.config)
    return {_pascal(k): _sanitized(v, k) for k, v in raw.items()}


def stats(agent: Agent) -> dict[str, dict[str, str]]:
    """Consul's `Stats` sections; values are strings, as Consul's are."""
    cfg = agent.config
    out: dict[str, dict[str, str]] = {
        "agent": {
            "check_monitors": "0",
            "check_ttls": str(sum(1 for c in agent.local.checks.values() if _is_ttl(c))),
            "checks": str(len(agent.local.checks)),
            "services": str(len(agent.local.services)),
        },
        "build": {"version": __version__, "revision": "", "prerelease": ""},
        "runtime": {
            "arch": platform.machine(),
            "os": sys.platform,
            "version": platform.python_version(),
            "cpu_count": str(os.cpu_count() or 1),
        },
        "consul": {"server": str(bool(cfg.server)).lower(), "known_datacenters": "1"},
    }
    server = agent.server
    if server is not None and server.raft is not None:
        raft = server.raft
        status = raft.status()
        out["raft"] = {
            "state": "Leader" if raft.is_leader else "Follower",
            "commit_index": str(status.get("commit_idx", 0)),
            "applied_index": str(status.get("last_applied", 0)),
            "term": str(status.get("raft_term", 0)),
            "num_peers": str(len(raft.peers()) - 1),
            "last_contact": f"{raft.last_contact_ms()}ms",
        }
        out["consul"].update(
            leader=str(raft.is_leader).lower(),
            leader_addr=server.rpc_of(raft.leader()) if raft.leader() else "",
            bootstrap=str(cfg.bootstrap).lower(),
        )
    return out


def _is_ttl(lc: Any) -> bool:
    return lc.definition is not None and lc.definition.Type == "ttl"


def self_info(agent: Agent) -> dict[str, Any]:
    """GET /v1/agent/self."""
    cfg = agent.config
    return {
        "Config": {
            "Datacenter": cfg.datacenter,
            "PrimaryDatacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "NodeID": agent.local.node_id,
            "Server": bool(cfg.server),
            "Revision": "",
            "Version": __version__,
            "BuildDate": "",
        },
        "DebugConfig": debug_config(agent),
        "Coord": coordinate_client.self_coordinate(agent),
        "Member": member_json(agent),
        "Stats": stats(agent),
        "Meta": dict(agent.local.node_meta),
        "xDS": {
            "SupportedProxies": {"envoy": ["1.30.0", "1.29.0", "1.28.0"]},
            "Port": cfg.ports.grpc,
            "Ports": {"Plaintext": cfg.ports.grpc, "TLS": -1},
        },
    }


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _boot_time() -> int:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpus() -> list[dict[str, Any]]:
    cpus: list[dict[str, Any]] = []
    try:
        with open("/proc/cpuinfo") as f:
            current: dict[str, str] = {}
            for line in [*f, "\n"]:
                if not line.strip():
                    if current:
                        cpus.append(
                            {
                                "cpu": int(current.get("processor", len(cpus))),
                                "vendorId": current.get("vendor_id", ""),
                                "modelName": current.get("model name", ""),
                                "mhz": float(current.get("cpu MHz", 0) or 0),
                                "cores": 1,
                            }
                        )
                    current = {}
                    continue
                key, _, value = line.partition(":")
                current[key.strip()] = value.strip()
    except (OSError, ValueError):
        pass
    return cpus


def host_info(agent: Agent) -> dict[str, Any]:
    """GET /v1/agent/host: Consul's debug view of the machine (gopsutil's field names),
    read from /proc without blocking for long (a few small files)."""
    mem = _meminfo()
    total, available = mem.get("MemTotal", 0), mem.get("MemAvailable", 0)
    path = agent.config.data_dir or "/"
    try:
        du = shutil.disk_usage(path)
        disk = {
            "path": path,
            "total": du.total,
            "free": du.free,
            "used": du.used,
            "usedPercent": (100.0 * du.used / du.total) if du.total else 0.0,
        }
    except OSError:
        disk = {"path": path}
    uname = platform.uname()
    boot = _boot_time()
    return {
        "Memory": {
            "total": total,
            "available": available,
            "used": total - available,
            "usedPercent": (100.0 * (total - available) / total) if total else 0.0,
            "free": mem.get("MemFree", 0),
        },
        "CPU": _cpus(),
        "Host": {
            "hostname": socket.gethostname(),
            "uptime": int(time.time()) - boot if boot else 0,
            "bootTime": boot,
            "os": uname.system.lower(),
            "platform": uname.system.lower(),
            "kernelVersion": uname.release,
            "kernelArch": uname.machine,
        },
        "Disk": disk,
        "CollectionTime": time.time_ns(),
        "Errors": None,
    }
