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

IMAGE = "parallax/agent-testing:latest"
RUNSC = "runsc"  # the runtime scripts/setup-gvisor.sh registers
PIDS = 512  # the default resources.pids; under gvisor translated to 64 + 10 per process


def body(runtime: str | None, pids: int) -> dict[str, Any]:
    """The hardened container the controller renders for an agent (controller/runtime/docker/render.py),
    on the default bridge, without the workspace volume; ``runtime`` None is Docker's default (runc)."""
    tmpfs = "rw,exec,nosuid,nodev,mode=1777,size=64m"
    host: dict[str, Any] = {
        "Memory": 512 * 1024 * 1024,
        "MemorySwap": 512 * 1024 * 1024,
        "NanoCpus": 500_000_000,
        "PidsLimit": pids,
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": tmpfs, "/home/agent": tmpfs},
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "Init": True,
        "NetworkMode": "bridge",
    }
    if runtime is not None:
        host["Runtime"] = runtime
    return {"Image": IMAGE, "Entrypoint": ["/bin/sleep", "600"], "HostConfig": host}


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
    tag = new_tag()
    print(machine_note())
    async with aiodocker.Docker() as docker:
        if RUNSC not in (await docker.system.info()).get("Runtimes", {}):
            raise SystemExit(f"the daemon has no {RUNSC} runtime: run scripts/setup-gvisor.sh")
        configs = {"runc": body(None, PIDS), "gvisor": body(RUNSC, 64 + 10 * PIDS)}
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
