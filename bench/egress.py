"""Egress gateway overhead: a plain HTTP GET straight to a local server against the same GET through the
gateway's forward proxy (absolute-form request, policy read per connection), one new connection per
request as an agent's CLI mostly makes them, side by side in one run. The gateway runs in this process on
127.0.0.1 with a stand-in for "which agent is at this address" (the Docker lookup is cached in the real
one); the policy check, name mapping, upstream connect and byte piping are the real code.

    .venv/bin/python -m bench.egress [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web

from bench.common import free_port, machine_note, percentile
from controller.admission.admit import admit
from controller.config import Settings
from controller.egress.gateway import EgressGateway
from controller.model.agent import Agent


class BenchGateway(EgressGateway):
    """The gateway with every source address taken to be one agent (no Docker here)."""

    def __init__(self, settings: Settings, agent: Agent) -> None:
        super().__init__(settings)
        self.agent = agent

    async def _agent_at(self, network: str, peer: str) -> Agent | None:
        return await self.agents(self.agent.name) if self.agents else None


async def get(port: int, request: bytes) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    body = await reader.read()
    writer.close()
    assert body.endswith(b"ok"), body[:200]
    return time.perf_counter() - started


async def main(requests: int) -> None:
    app = web.Application()
    app.router.add_get("/", lambda _: web.Response(text="ok"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    upstream = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream).start()
    settings = Settings(egress_port=free_port(), egress_hosts=(("bench.test", "127.0.0.1"),))
    agent, _ = admit(
        {"name": "bench", "type": "claude", "egress": {"policy": "Allowlist", "allow": [f"bench.test:{upstream}"]}},
        settings,
    )

    async def lookup(name: str) -> Agent | None:
        await asyncio.sleep(0)  # a store read is at least a scheduling point
        return agent

    gateway = BenchGateway(settings, agent)
    gateway.agents = lookup
    await gateway.serve("bench", "127.0.0.1")
    direct = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\nConnection: close\r\n\r\n".encode()
    proxied = f"GET http://bench.test:{upstream}/ HTTP/1.1\r\nHost: bench.test\r\n\r\n".encode()
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    for _ in range(requests):  # interleaved, so load from others hits both alike
        times["direct"].append(await get(upstream, direct))
        times["gateway"].append(await get(settings.egress_port, proxied))
    await gateway.close()
    await runner.cleanup()
    print(f"egress gateway: {requests} sequential GETs each, new connection per request ({machine_note()})")
    for name, values in times.items():
        print(f"  {name:8s} median {percentile(values, 50) * 1000:.2f} ms  p99 {percentile(values, 99) * 1000:.2f} ms")
    ratio = percentile(times["gateway"], 50) / percentile(times["direct"], 50)
    print(f"  gateway / direct (median): {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    asyncio.run(main(parser.parse_args().requests))
