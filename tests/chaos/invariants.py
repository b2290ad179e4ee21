"""What must hold between the store and Docker once the controller has converged."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import aiodocker


async def our_containers(docker: aiodocker.Docker, instance: str) -> list[dict[str, Any]]:
    filters = json.dumps({"label": ["parallax.managed=true", f"parallax.instance={instance}"]})
    found = []
    for container in await docker.containers.list(all=True, filters=filters):
        try:
            found.append(await container.show())
        except aiodocker.DockerError as exc:
            if exc.status != 404:  # removed between list and inspect
                raise
    return found


def check_converged(agents: list[dict[str, Any]], containers: list[dict[str, Any]]) -> dict[str, int]:
    """Counts of every way the two can disagree; all must be zero."""
    by_agent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for container in containers:
        by_agent[container["Config"]["Labels"]["parallax.agent"]].append(container)
    records = {a["metadata"]["name"]: a for a in agents}
    problems = {"duplicated": 0, "orphaned": 0, "missing": 0, "not_running": 0, "wrong_uid": 0}
    for name, found in by_agent.items():
        if name not in records:
            problems["orphaned"] += len(found)
            continue
        if len(found) > 1:
            problems["duplicated"] += len(found) - 1
        uid = records[name]["metadata"]["uid"]
        problems["wrong_uid"] += sum(1 for c in found if c["Config"]["Labels"]["parallax.agent.uid"] != uid)
        problems["not_running"] += sum(1 for c in found if not c["State"]["Running"])
    for name in records:
        if name not in by_agent:
            problems["missing"] += 1
    return problems
