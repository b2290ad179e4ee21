"""Turning Docker stats samples into the figures users read (pure functions, plus a sample cache)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class CpuSample:
    container_total_ns: int
    system_total_ns: int
    online_cpus: int


def cpu_sample(stats: dict[str, Any]) -> CpuSample:
    cpu = stats.get("cpu_stats") or {}
    usage = cpu.get("cpu_usage") or {}
    online = cpu.get("online_cpus") or len(usage.get("percpu_usage") or []) or 1
    return CpuSample(int(usage.get("total_usage") or 0), int(cpu.get("system_cpu_usage") or 0), int(online))


def cpu_percent(previous: CpuSample | None, current: CpuSample, uptime_seconds: float) -> float:
    """Percent of one core, as ``docker stats`` shows it; since start when there is no earlier sample."""
    if previous is not None:
        container = current.container_total_ns - previous.container_total_ns
        system = current.system_total_ns - previous.system_total_ns
        if system > 0 and container >= 0:
            return round(container / system * current.online_cpus * 100.0, 3)
    if uptime_seconds > 0:
        return round(current.container_total_ns / (uptime_seconds * 1e9) * 100.0, 3)
    return 0.0


def memory_bytes(stats: dict[str, Any]) -> int:
    """Working set: usage minus page cache (cgroup v1 ``cache``, v2 ``inactive_file``)."""
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    usage = int(memory.get("usage") or 0)
    cache = int(detail.get("total_inactive_file") or detail.get("inactive_file") or detail.get("cache") or 0)
    return max(usage - cache, 0)


def network_bytes(stats: dict[str, Any]) -> tuple[int, int]:
    networks = stats.get("networks") or {}
    rx = sum(int(n.get("rx_bytes") or 0) for n in networks.values())
    tx = sum(int(n.get("tx_bytes") or 0) for n in networks.values())
    return rx, tx


def summarize(
    stats: dict[str, Any], previous: CpuSample | None, started_at: datetime | None, now: datetime
) -> dict[str, Any]:
    current = cpu_sample(stats)
    uptime = max((now - started_at).total_seconds(), 0.0) if started_at else 0.0
    rx, tx = network_bytes(stats)
    memory = stats.get("memory_stats") or {}
    return {
        "cpuPercent": cpu_percent(previous, current, uptime),
        "cpuSeconds": round(current.container_total_ns / 1e9, 3),
        "memoryBytes": memory_bytes(stats),
        "memoryLimitBytes": int(memory.get("limit") or 0),
        "networkRxBytes": rx,
        "networkTxBytes": tx,
        "pids": int((stats.get("pids_stats") or {}).get("current") or 0),
        "uptimeSeconds": round(uptime, 3),
    }
