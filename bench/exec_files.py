"""Exec and files against Docker itself, side by side in one run.

- exec round trip: ``POST /agents/{name}/exec`` of ``true`` (answer once it ends), p50 over N runs, against
  aiodocker's own exec of the same command in the same container (create, start attached, read to the end,
  inspect the exit code);
- upload and download MB/s of one file: ``PUT|GET /agents/{name}/files`` against the Docker archive API
  (``PUT|GET /containers/{id}/archive``) directly, same container, same bytes.

    python -m bench.exec_files [--runs 50] [--megabytes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tarfile
import time

import aiodocker
import aiohttp

from bench.common import Server, machine_note, new_tag, percentile, shut_down


async def wait_running(session: aiohttp.ClientSession, url: str, name: str) -> None:
    for _ in range(600):
        async with session.get(f"{url}/agents/{name}") as resp:
            if resp.status == 200 and (await resp.json())["status"].get("phase") == "Running":
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"agent {name} did not run")


async def raw_exec(docker: aiodocker.Docker, container: str) -> None:
    created = await docker.containers.container(container).exec(["true"], stdout=True, stderr=True)
    async with created.start(detach=False) as stream:
        while await stream.read_out() is not None:
            pass
    await created.inspect()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--megabytes", type=int, default=50)
    args = parser.parse_args()
    tag = new_tag()
    server = Server(tag)
    docker = aiodocker.Docker()
    name = f"bench-x-{tag}"
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/agents", json={"name": name, "type": "claude"}) as resp:
                assert resp.status == 201, await resp.text()
            await wait_running(session, server.url, name)
            container = f"parallax-agent-{name}"
            api, raw = [], []
            for _ in range(args.runs):  # interleaved, so load on the machine hits both alike
                started = time.perf_counter()
                async with session.post(f"{server.url}/agents/{name}/exec", json={"command": ["true"]}) as resp:
                    assert resp.status == 200 and (await resp.json())["exitCode"] == 0
                api.append(time.perf_counter() - started)
                started = time.perf_counter()
                await raw_exec(docker, container)
                raw.append(time.perf_counter() - started)
            data = os.urandom(args.megabytes * 1024 * 1024)
            up_api, up_raw, down_api, down_raw = [], [], [], []
            files = f"{server.url}/agents/{name}/files?path=/workspace/bench.bin"
            for _ in range(5):
                started = time.perf_counter()
                async with session.put(files, data=data) as resp:
                    assert resp.status == 200, await resp.text()
                up_api.append(time.perf_counter() - started)
                started = time.perf_counter()
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w") as tar:
                    info = tarfile.TarInfo("raw.bin")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                await docker.containers.container(container).put_archive("/workspace", buffer.getvalue())
                up_raw.append(time.perf_counter() - started)
                started = time.perf_counter()
                async with session.get(files) as resp:
                    got = 0
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        got += len(chunk)
                    assert got == len(data)
                down_api.append(time.perf_counter() - started)
                started = time.perf_counter()
                async with docker._query(
                    f"containers/{container}/archive", params={"path": "/workspace/raw.bin"}
                ) as resp:
                    got = 0
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        got += len(chunk)
                down_raw.append(time.perf_counter() - started)
        megabytes = len(data) / 1e6
        api50, raw50 = percentile(api, 50) * 1000, percentile(raw, 50) * 1000
        print(f"exec round trip p50: parallax {api50:.1f} ms, aiodocker {raw50:.1f} ms, ratio {api50 / raw50:.2f}x")
        for what, ours, theirs in (("upload", up_api, up_raw), ("download", down_api, down_raw)):
            ours_rate, raw_rate = megabytes / min(ours), megabytes / min(theirs)
            print(
                f"{what} {megabytes:.0f} MB: parallax {ours_rate:.0f} MB/s, Docker archive API {raw_rate:.0f} MB/s, "
                f"ratio {raw_rate / ours_rate:.2f}x (time, best of 5)"
            )
        print(machine_note())
    finally:
        await shut_down(server, docker, tag)


if __name__ == "__main__":
    asyncio.run(main())
