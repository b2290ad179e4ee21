"""Egress policy against the real daemon: every way out an agent might try, from inside the agent.

The "outside" is a network namespace of this test's own (``pxeg-out-*``), routed from the host over a veth
pair: ``ALLOWED`` and ``DENIED`` addresses with HTTP (8080) and HTTPS (8443) servers answering "allowed ..."
/ "denied ...", a DNS server that answers every name, and a UDP sink. The gateway knows the names
``allowed.test`` and ``denied.test`` through ``PARALLAX_EGRESS_HOSTS`` (``egress_hosts``); the agent's DNS
knows neither. An AllowAll agent reaches all of it directly, which shows each refusal below is the
policy's doing, not a broken test network.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest

from tests.conftest import StartController
from tests.harness import Controller, docker_exec, inspect, running, wait_for

pytestmark = pytest.mark.docker

TARGETS = Path(__file__).with_name("egress_targets.py")
ALLOWED_PORT = 8080
HTTPS_PORT = 8443
PROMISED_SECONDS = 5.0
CERTIFICATE = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=allowed.test -keyout"


def _root(*argv: str) -> list[str]:
    return list(argv) if os.geteuid() == 0 else ["sudo", "-n", *argv]


@dataclass(frozen=True)
class Outside:
    allowed: str
    denied: str
    directory: Path

    def received(self) -> str:
        return (self.directory / "received").read_text()


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    """A network namespace reached from the host over a veth pair, with the test's servers in it."""
    tag = f"{random.randrange(16**6):06x}"
    net = random.randrange(16, 250)
    host, allowed, denied = f"10.231.{net}.1", f"10.231.{net}.2", f"10.231.{net}.3"
    namespace, veth_host, veth_out = f"pxeg-out-{tag}", f"pxegh{tag}", f"pxego{tag}"
    directory = tmp_path_factory.mktemp("egress-outside")
    subprocess.run(
        [*CERTIFICATE.split(), str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        check=True,
        capture_output=True,
    )
    steps = [
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_out],
        ["ip", "link", "set", veth_out, "netns", namespace],
        ["ip", "addr", "add", f"{host}/29", "dev", veth_host],
        ["ip", "link", "set", veth_host, "up"],
        ["ip", "-n", namespace, "addr", "add", f"{allowed}/29", "dev", veth_out],
        ["ip", "-n", namespace, "addr", "add", f"{denied}/29", "dev", veth_out],
        ["ip", "-n", namespace, "link", "set", veth_out, "up"],
        ["ip", "-n", namespace, "link", "set", "lo", "up"],
        ["ip", "-n", namespace, "route", "add", "default", "via", host],
    ]
    server = None
    try:
        for step in steps:
            subprocess.run(_root(*step), check=True, capture_output=True)
        server = subprocess.Popen(
            _root("ip", "netns", "exec", namespace, sys.executable, str(TARGETS), str(directory), allowed, denied)
        )
        deadline = time.monotonic() + 60
        while not (directory / "ready").exists():
            assert server.poll() is None and time.monotonic() < deadline, "the outside servers did not start"
            time.sleep(0.05)
        yield Outside(allowed, denied, directory)
    finally:
        if server is not None:
            subprocess.run(_root("kill", str(server.pid)), capture_output=True)
            server.wait(10)
        subprocess.run(_root("ip", "link", "del", veth_host), capture_output=True)
        subprocess.run(_root("ip", "netns", "del", namespace), capture_output=True)


@dataclass
class Scene:
    controller: Controller
    outside: Outside
    agent: str = "walled"

    @property
    def container(self) -> str:
        return f"parallax-agent-{self.agent}"

    async def sh(self, script: str, container: str | None = None, timeout: float = 20.0) -> tuple[int, str]:
        return await docker_exec(container or self.container, "sh", "-c", script, timeout=timeout)


ALLOW = [f"allowed.test:{ALLOWED_PORT}", f"allowed.test:{HTTPS_PORT}"]


@pytest.fixture
async def scene(start_controller: StartController, outside: Outside) -> Scene:
    controller = await start_controller(
        egress_hosts=(("allowed.test", outside.allowed), ("denied.test", outside.denied)),
    )
    body = {"name": "walled", "type": "claude", "egress": {"policy": "Allowlist", "allow": ALLOW}}
    status, answer = await controller.request("POST", "/agents", body)
    assert status == 201, answer
    await controller.wait_agent("walled", running)
    return Scene(controller, outside)


PROXY = "$(echo $HTTP_PROXY | sed 's|http://||; s|/.*||; s|:| |')"
"""The gateway's address and port from the agent's own HTTP_PROXY, as ``nc`` takes them."""


def https_through_gateway(host: str, port: int = HTTPS_PORT) -> str:
    """A shell command for the agent: CONNECT through the gateway, then a TLS GET over the tunnel."""
    tunnel = f"""#!/bin/sh
printf 'CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n'
read -r status
echo "$status" >&2
case "$status" in *" 200 "*) read -r blank ;; *) exit 1 ;; esac
exec 3<&0
printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | ssl_client -s 3 -n {host} >&2
"""
    encoded = base64.b64encode(tunnel.encode()).decode()
    return f"echo {encoded} | base64 -d > /tmp/tls.sh; chmod +x /tmp/tls.sh; timeout 10 nc {PROXY} -e /tmp/tls.sh 2>&1"


async def _denied_events(controller: Controller, agent: str) -> list[str]:
    status, body = await controller.request("GET", f"/agents/{agent}/events")
    assert status == 200, body
    items = body["items"] if isinstance(body, dict) else body
    return [e["message"] for e in items if e["reason"] == "EgressDenied"]


async def _denied_total(controller: Controller) -> float:
    status, text = await controller.request("GET", "/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in str(text).splitlines()
        if line.startswith('parallax_egress_denied_total{reason="not-allowed"}')
    )


async def test_open_agent_reaches_the_outside_directly(start_controller: StartController, outside: Outside):
    """The control: without a policy in the way, every target below is reachable (so refusals mean it)."""
    controller = await start_controller()
    body = {"name": "open", "type": "claude", "egress": {"policy": "AllowAll"}}
    assert (await controller.request("POST", "/agents", body))[0] == 201
    await controller.wait_agent("open", running)
    scene = Scene(controller, outside, agent="open")
    code, out = await scene.sh(f"timeout 5 wget -q -O- http://{outside.denied}:{ALLOWED_PORT}/")
    assert (code, out) == (0, "denied http\n")
    code, out = await scene.sh(f"nslookup denied.test {outside.allowed}")
    assert code == 0 and outside.denied in out, out
    await scene.sh(f"nslookup open-udp.test {outside.allowed}:5353")  # busybox nc has no UDP; nslookup sends UDP
    await wait_for(lambda: _async("open-udp" in outside.received()), 5, "the open agent's datagram")
    info = await controller.request("GET", "/agents/open")
    assert "HTTP_PROXY" not in str(info)  # AllowAll: no proxy set (env values are redacted anyway)


async def _async(value: bool) -> bool:
    return value


async def test_allowed_host_works_over_http_and_https(scene: Scene):
    code, out = await scene.sh(f"timeout 5 wget -q -O- http://allowed.test:{ALLOWED_PORT}/")
    assert (code, out) == (0, "allowed http\n")
    # HTTPS through a CONNECT tunnel: busybox wget does not use a proxy for https, so the test speaks
    # CONNECT itself (nc) and TLS over the tunnel with busybox's ssl_client, as curl or npm would
    code, out = await scene.sh(https_through_gateway("allowed.test"))
    assert "200 Connection established" in out and "allowed https" in out, out


async def test_denied_host_fails_with_an_event_and_a_metric(scene: Scene):
    before = await _denied_total(scene.controller)
    code, out = await scene.sh(f"timeout 5 wget -q -O- http://denied.test:{ALLOWED_PORT}/ 2>&1")
    assert code != 0 and "denied http" not in out, out
    code, out = await scene.sh(https_through_gateway("denied.test"))
    assert "403" in out and "denied https" not in out, out
    messages = await wait_for(lambda: _denied_events(scene.controller, "walled"), 5, "an EgressDenied event")
    assert any(m.startswith(f"denied.test:{ALLOWED_PORT} ") for m in messages), messages
    assert await _denied_total(scene.controller) >= before + 2


async def test_denied_attempts_in_a_loop_do_not_flood_the_events(scene: Scene):
    await scene.sh(f"for i in $(seq 30); do timeout 2 wget -q -O- http://denied.test:{ALLOWED_PORT}/ 2>/dev/null; done")
    messages = await _denied_events(scene.controller, "walled")
    assert len(messages) == 1, messages  # one per destination a minute; the metric counts all 30


async def test_direct_ip_fails(scene: Scene):
    code, out = await scene.sh(
        f"env -u http_proxy -u HTTP_PROXY timeout 3 wget -q -O- http://{scene.outside.allowed}:8080/ 2>&1"
    )
    assert code != 0 and "allowed" not in out, out
    code, out = await scene.sh(f"timeout 3 wget -q -O- http://{scene.outside.allowed}:8080/ 2>&1")  # via the gateway
    assert code != 0 and "allowed" not in out, out
    code, out = await scene.sh(f"nc -w 3 {scene.outside.denied} 8080 </dev/null; echo rc=$?")
    assert "rc=0" not in out, out


async def test_denied_port_on_allowed_host_fails(scene: Scene):
    # allowed.test is allowed on 8080 and 8443 only; its address has no other server, so ask for 8443 as
    # plain http (allowed port, refused protocol is not the point) and for port 80 and 5353 (denied)
    for port in (80, 5353, 22):
        code, out = await scene.sh(f"timeout 3 wget -q -O- http://allowed.test:{port}/ 2>&1")
        assert code != 0 and "403" in out, (port, out)
    messages = await wait_for(lambda: _denied_events(scene.controller, "walled"), 5, "EgressDenied events")
    assert any(m.startswith("allowed.test:5353 ") for m in messages), messages


async def test_dns_of_a_denied_name_fails(scene: Scene):
    for name in ("denied.test", "allowed.test", "example.com"):
        code, out = await scene.sh(f"nslookup {name} 2>&1", timeout=30)
        assert code != 0 and scene.outside.denied not in out and scene.outside.allowed not in out, (name, out)
    # straight to a resolver outside, which answers every name (the open agent's test shows it): no
    # packet gets there, so a name cannot leave as a question either
    code, out = await scene.sh(f"nslookup walled-exfil.denied.test {scene.outside.allowed} 2>&1", timeout=30)
    assert code != 0 and scene.outside.denied not in out, out
    assert "walled-exfil" not in scene.outside.received()


async def test_udp_fails(scene: Scene):
    await scene.sh(f"nslookup walled-udp.test {scene.outside.allowed}:5353")
    await asyncio.sleep(1.0)
    assert "walled-udp" not in scene.outside.received()


async def test_ipv6_fails(scene: Scene):
    code, out = await scene.sh("ip -6 addr show scope global; ip -6 route")
    assert "inet6" not in out and "default" not in out, out
    code, out = await scene.sh("env -u http_proxy timeout 3 wget -q -O- 'http://[2001:db8::1]:8080/' 2>&1")
    assert code != 0, out
    code, out = await scene.sh("timeout 3 wget -q -O- 'http://[::ffff:" + scene.outside.allowed + "]:8080/' 2>&1")
    assert code != 0 and "allowed" not in out, out


async def test_connect_smuggled_through_an_allowed_name_fails(scene: Scene):
    proxy = PROXY
    # a tunnel to the allowed name carrying a request for the denied one: it reaches the allowed server
    tunnel = (
        f"printf 'CONNECT allowed.test:{ALLOWED_PORT} HTTP/1.1\\r\\nHost: denied.test:{ALLOWED_PORT}\\r\\n\\r\\n"
        f"GET http://denied.test:{ALLOWED_PORT}/ HTTP/1.1\\r\\nHost: denied.test\\r\\nConnection: close\\r\\n\\r\\n'"
        f" | nc -w 3 {proxy}"
    )
    _, out = await scene.sh(tunnel)
    assert "200 Connection established" in out and "allowed http" in out and "denied http" not in out, out
    # an absolute-form request for the denied host whose Host header names the allowed one
    forged = (
        f"printf 'GET http://denied.test:{ALLOWED_PORT}/ HTTP/1.1\\r\\nHost: allowed.test:{ALLOWED_PORT}\\r\\n\\r\\n'"
        f" | nc -w 3 {proxy}"
    )
    _, out = await scene.sh(forged)
    assert "403" in out and "denied http" not in out, out
    # a second request on an allowed connection, for the denied host: still the allowed server answers
    pipelined = (
        f"printf 'GET http://allowed.test:{ALLOWED_PORT}/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n"
        f"GET http://denied.test:{ALLOWED_PORT}/ HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n' | nc -w 3 {proxy}"
    )
    _, out = await scene.sh(pipelined)
    assert "allowed http" in out and "denied http" not in out, out


async def test_agent_that_unsets_its_proxy_variables_fails(scene: Scene):
    script = (
        "unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY; "
        f"timeout 3 wget -q -O- http://allowed.test:{ALLOWED_PORT}/ 2>&1; echo rc=$?; "
        f"timeout 3 wget -q -O- http://{scene.outside.allowed}:{ALLOWED_PORT}/ 2>&1; echo rc=$?"
    )
    _, out = await scene.sh(script)
    assert out.count("rc=0") == 0 and "allowed http" not in out, out


async def test_patch_that_adds_a_host_applies_within_seconds_without_a_restart(scene: Scene, docker: aiodocker.Docker):
    before = await inspect(docker, scene.container)
    assert before is not None
    code, _ = await scene.sh(f"timeout 3 wget -q -O- http://denied.test:{ALLOWED_PORT}/")
    assert code != 0
    patch = {"spec": {"egress": {"policy": "Allowlist", "allow": [*ALLOW, f"denied.test:{ALLOWED_PORT}"]}}}
    status, body = await scene.controller.request("PATCH", "/agents/walled", patch)
    assert status == 200, body
    started = time.monotonic()

    async def reaches() -> bool:
        code, out = await scene.sh(f"timeout 2 wget -q -O- http://denied.test:{ALLOWED_PORT}/")
        return code == 0 and out == "denied http\n"

    await wait_for(reaches, PROMISED_SECONDS, "the newly allowed host")
    assert time.monotonic() - started < PROMISED_SECONDS
    after = await inspect(docker, scene.container)
    assert after is not None and after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    # and DenyAll takes everything away, again without a restart
    status, body = await scene.controller.request(
        "PATCH", "/agents/walled", {"spec": {"egress": {"policy": "DenyAll", "allow": None}}}
    )
    assert status == 200, body

    async def refused() -> bool:
        code, _ = await scene.sh(f"timeout 2 wget -q -O- http://allowed.test:{ALLOWED_PORT}/")
        return code != 0

    await wait_for(refused, PROMISED_SECONDS, "DenyAll to hold")
    final = await inspect(docker, scene.container)
    assert final is not None and final["Id"] == before["Id"]


async def test_agents_reach_each_other_by_name_behind_the_gateway(scene: Scene):
    body = {"name": "peer", "type": "claude", "env": {"LISTEN_PORT": "7000"}}  # the server default: Allowlist
    assert (await scene.controller.request("POST", "/agents", body))[0] == 201
    await scene.controller.wait_agent("peer", running)
    _, out = await wait_for(lambda: _first_success(scene, "nc -w 3 peer 7000 </dev/null"), 15, "the peer's greeting")
    assert "hello from peer" in out, out


async def _first_success(scene: Scene, script: str) -> tuple[int, str] | None:
    code, out = await scene.sh(script)
    return (code, out) if "hello from" in out else None


async def test_policy_class_change_recreates_onto_the_open_network(scene: Scene, docker: aiodocker.Docker):
    before = await inspect(docker, scene.container)
    assert before is not None
    assert list(before["NetworkSettings"]["Networks"]) == [f"{scene.controller.settings.network}-egress"]
    status, body = await scene.controller.request(
        "PATCH", "/agents/walled", {"spec": {"egress": {"policy": "AllowAll", "allow": None}}}
    )
    assert status == 200, body
    agent = await scene.controller.wait_agent(
        "walled", lambda a: running(a) and a["status"]["containerId"] != before["Id"]
    )
    after = await inspect(docker, agent["status"]["containerId"])
    assert after is not None and list(after["NetworkSettings"]["Networks"]) == [scene.controller.settings.network]
    code, out = await scene.sh(f"timeout 5 wget -q -O- http://{scene.outside.denied}:{ALLOWED_PORT}/")
    assert (code, out) == (0, "denied http\n")


async def test_the_policy_holds_under_gvisor(start_controller: StartController, outside: Outside):
    """runsc with --network=host uses the container's own network namespace: the internal network, the
    gateway chosen by source address and the unreachable DNS hold as under runc. (busybox wget's reads
    fail with EAGAIN under this runsc, through the gateway or not, so the requests are made with nc.)"""
    controller = await start_controller(
        egress_hosts=(("allowed.test", outside.allowed), ("denied.test", outside.denied)),
    )
    body = {
        "name": "walled-gv",
        "type": "claude",
        "runtimeClassName": "gvisor",
        "egress": {"policy": "Allowlist", "allow": ALLOW},
    }
    status, answer = await controller.request("POST", "/agents", body)
    assert status == 201, answer
    await controller.wait_agent("walled-gv", running, timeout=60)
    scene = Scene(controller, outside, agent="walled-gv")
    code, out = await scene.sh("dmesg 2>&1 | head -1")
    assert "gVisor" in out, out  # really under runsc

    def through_gateway(host: str) -> str:
        return f"printf 'GET http://{host}:{ALLOWED_PORT}/ HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc {PROXY} 2>&1"

    code, out = await scene.sh(through_gateway("allowed.test"))
    assert " 200 " in out and out.endswith("allowed http\n"), out
    code, out = await scene.sh(through_gateway("denied.test"))
    assert " 403 " in out and "denied http" not in out, out
    messages = await wait_for(lambda: _denied_events(controller, "walled-gv"), 5, "an EgressDenied event")
    assert any(m.startswith(f"denied.test:{ALLOWED_PORT} ") for m in messages), messages
    code, out = await scene.sh(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {outside.denied} {ALLOWED_PORT} 2>&1")
    assert "denied http" not in out, out  # no route around the gateway
    code, out = await scene.sh("nslookup denied.test 2>&1", timeout=30)
    assert code != 0 and outside.denied not in out, out
    await scene.sh(f"nslookup walled-gv-udp.test {outside.allowed}:5353")
    await asyncio.sleep(1.0)
    assert "walled-gv-udp" not in outside.received()
