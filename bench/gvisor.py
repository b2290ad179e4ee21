"""Benchmark: what gVisor (runsc) costs against runc, measured side by side in one run on the same daemon.

1. Start time: create + start of the hardened agent container (the body the controller renders, under
   ``runtimeClassName`` runc and gvisor) until Docker reports it running; median of ``--starts``.
2. A syscall-heavy workload: busybox ``dd if=/dev/zero of=/dev/null bs=1 count=N`` (two system calls per
   byte) inside a running container of each runtime; median of ``--runs``.

    .venv/bin/python -m bench.gvisor [--starts 10] [--runs 3] [--bytes 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import time
from typing import Any

import aiodocker

from bench.common import machine_note, median, new_tag
from controller.admission.admit import spec_defaults
from controller.config import Settings
from controller.model.agent import Agent, AgentSpec, Metadata
from controller.runtime.docker.render import render_container

IMAGE = "parallax/agent-testing:latest"


def body(runtime_class: str, settings: Settings) -> dict[str, Any]:
    spec = AgentSpec.from_dict(
        {"type": "claude", "image": IMAGE, "runtimeClassName": runtime_class},
        spec_defaults(settings),
    )
    config = render_container(Agent(metadata=Metadata(name="bench-gvisor"), spec=spec), settings)
    config["HostConfig"]["NetworkMode"] = "bridge"
    config.pop("NetworkingConfig", None)
    config["HostConfig"]["Mounts"] = []
    config["Entrypoint"] = ["/bin/sleep", "600"]
    return config


async def start_seconds(docker: aiodocker.Docker, config: dict[str, Any], name: str) -> float:
    began = time.perf_counter()
    container = await docker.containers.create(copy.deepcopy(config), name=name)
    try:
        await container.start()  # Docker answers once the task runs
        elapsed = time.perf_counter() - began
        if not (await container.show())["State"]["Running"]:
            raise SystemExit(f"{name} is not running after its start")
        return elapsed
    finally:
        await container.delete(force=True)


async def dd_seconds(docker: aiodocker.Docker, config: dict[str, Any], name: str, count: int, runs: int) -> float:
    container = await docker.containers.create(copy.deepcopy(config), name=name)
    try:
        await container.start()
        times = []
        for _ in range(runs):
            proc = await asyncio.create_subprocess_exec(
                "docker",
                "exec",
                name,
                "dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=1",
                f"count={count}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            began = time.perf_counter()
            await proc.wait()
            times.append(time.perf_counter() - began)
            if proc.returncode:
                raise SystemExit(f"dd in {name} exited {proc.returncode}")
        return median(times)
    finally:
        await container.delete(force=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bytes", type=int, default=200_000)
    args = parser.parse_args()
    settings = Settings()
    tag = new_tag()
    print(machine_note())
    async with aiodocker.Docker() as docker:
        if settings.gvisor_runtime not in (await docker.system.info()).get("Runtimes", {}):
            raise SystemExit(f"the daemon has no {settings.gvisor_runtime} runtime: run scripts/setup-gvisor.sh")
        configs = {cls: body(cls, settings) for cls in ("runc", "gvisor")}
        starts: dict[str, list[float]] = {"runc": [], "gvisor": []}
        for i in range(args.starts):  # interleaved, so load from others hits both alike
            for cls, config in configs.items():
                starts[cls].append(await start_seconds(docker, config, f"pxgv-bench-{tag}-{cls}-{i}"))
        dd = {
            cls: await dd_seconds(docker, config, f"pxgv-bench-{tag}-{cls}-dd", args.bytes, args.runs)
            for cls, config in configs.items()
        }
    runc_start, gvisor_start = median(starts["runc"]), median(starts["gvisor"])
    print(f"start (create+start until running), median of {args.starts}:")
    print(f"  runc {runc_start:.3f} s   gvisor {gvisor_start:.3f} s   ratio {gvisor_start / runc_start:.2f}x")
    print(f"dd bs=1 count={args.bytes} ({2 * args.bytes} read/write calls), median of {args.runs}:")
    print(f"  runc {dd['runc']:.3f} s   gvisor {dd['gvisor']:.3f} s   ratio {dd['gvisor'] / dd['runc']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
