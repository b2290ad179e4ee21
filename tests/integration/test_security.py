"""Security against a real Docker daemon: the hardened container as Docker reports it and as it behaves
from inside, the workspace volume's lifecycle, every policy refusal (with nothing stored), bearer-token
auth, request bounds, and ``parallax serve``'s refusal to expose a token-less API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from controller.runtime.docker.render import workspace_volume
from tests.conftest import StartController
from tests.harness import REPO, TEST_IMAGE, Controller, docker_cli, docker_exec, inspect, running, wait_for

pytestmark = pytest.mark.docker

TOKEN = "sec-test-token-" + uuid.uuid4().hex


async def call(
    controller: Controller, method: str, path: str, body: Any = None, *, token: str | None = None
) -> tuple[int, dict[str, str], Any]:
    assert controller.session is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body) if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with controller.session.request(method, controller.base_url + path, data=data, headers=headers) as resp:
        text = await resp.text()
        try:
            payload: Any = json.loads(text)
        except json.JSONDecodeError:
            payload = text
        return resp.status, dict(resp.headers), payload


async def volume(docker: aiodocker.Docker, name: str) -> dict[str, Any] | None:
    try:
        return dict(await (await docker.volumes.get(name)).show())
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise


async def nothing_stored(controller: Controller, name: str, docker: aiodocker.Docker) -> None:
    _, listing = await controller.request("GET", "/agents")
    assert listing["items"] == []
    status, _ = await controller.request("GET", f"/agents/{name}")
    assert status == 404
    assert await inspect(docker, f"parallax-agent-{name}") is None


# --- the container ---------------------------------------------------------------------------------


async def test_created_container_carries_every_hardening_item(controller: Controller, docker: aiodocker.Docker):
    status, body = await controller.request("POST", "/agents", {"name": "sec-hardened", "type": "claude"})
    assert status == 201, body
    agent = await controller.wait_agent("sec-hardened", running)
    info = await inspect(docker, "parallax-agent-sec-hardened")
    assert info is not None and info["Id"] == agent["status"]["containerId"]
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]  # nothing unconfined: Docker's seccomp profile applies
    assert host["PidsLimit"] == controller.settings.default_pids
    assert host["Memory"] == 64 * 1024**2 and host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 500_000_000
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert host["Init"] is True
    assert host["Privileged"] is False
    # the server default egress policy (Allowlist): the internal twin of the agent's network, DNS that
    # answers only peers' names, and the proxy variables naming the gateway (README "Egress")
    assert host["NetworkMode"] == f"{controller.settings.network}-egress"
    assert host["Dns"] == ["192.0.2.1"]
    assert any(e.startswith("HTTPS_PROXY=http://") for e in info["Config"]["Env"])
    assert host["PidMode"] == "" and host["IpcMode"] in ("private", "shareable") and host["UsernsMode"] == ""
    assert not host["Devices"]
    assert host["MaskedPaths"], "Docker masks /proc paths in unprivileged containers"
    assert host["RestartPolicy"]["Name"] == "no"
    assert set(host["Tmpfs"]) == {"/tmp", "/home/agent"} and all("size=" in o for o in host["Tmpfs"].values())
    assert info["Config"]["User"] == "1000:1000"  # the image's own non-root user
    workspace = {m["Destination"]: m for m in info["Mounts"]}["/workspace"]
    assert (workspace["Type"], workspace["Name"], workspace["RW"]) == (
        "volume",
        workspace_volume("sec-hardened", controller.settings.instance),
        True,
    )

    name = "parallax-agent-sec-hardened"
    code, out = await docker_exec(name, "touch", "/written-to-root")
    assert code != 0 and "Read-only file system" in out
    code, out = await docker_exec(name, "sh", "-c", "echo tmp-ok > /tmp/f && cat /tmp/f")
    assert (code, out.strip()) == (0, "tmp-ok")
    code, out = await docker_exec(name, "sh", "-c", "echo home-ok > /home/agent/f && cat /home/agent/f")
    assert (code, out.strip()) == (0, "home-ok")
    for scratch in ("/tmp", "/home/agent"):  # tools an agent installs there must run (npx, pip --user)
        code, out = await docker_exec(
            name,
            "sh",
            "-c",
            f"printf '#!/bin/sh\\necho ran-from-{scratch}\\n' > {scratch}/t && chmod +x {scratch}/t && {scratch}/t",
        )
        assert (code, out.strip()) == (0, f"ran-from-{scratch}"), out
    code, out = await docker_exec(name, "sh", "-c", "echo ws-ok > /workspace/f && cat /workspace/f")
    assert (code, out.strip()) == (0, "ws-ok")
    code, out = await docker_exec(name, "id", "-u")
    assert (code, out.strip()) == (0, "1000")
    code, status_text = await docker_exec(name, "cat", "/proc/1/status")
    fields = dict(line.split(":", 1) for line in status_text.splitlines() if ":" in line)
    assert fields["Seccomp"].strip() == "2", "seccomp filter mode"
    assert fields["NoNewPrivs"].strip() == "1"
    assert int(fields["CapEff"].strip(), 16) == 0 and int(fields["CapBnd"].strip(), 16) == 0
    code, mounts = await docker_exec(name, "cat", "/proc/mounts")
    tmp_line = next(line for line in mounts.splitlines() if line.split()[1] == "/tmp")
    assert {"nosuid", "nodev"} <= set(tmp_line.split()[3].split(","))
    # Even root inside the container (docker exec -u 0) cannot write the root filesystem.
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "exec",
        "-u",
        "0",
        name,
        "touch",
        "/etc/x",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out_bytes, _ = await proc.communicate()
    assert proc.returncode != 0 and b"Read-only file system" in out_bytes


async def test_security_context_sets_the_user_and_adds_only_allowed_capabilities(
    controller: Controller, docker: aiodocker.Docker
):
    body = {
        "name": "sec-context",
        "type": "claude",
        "securityContext": {"runAsUser": 4242, "runAsGroup": 4343, "capabilities": {"add": ["NET_BIND_SERVICE"]}},
    }
    status, created = await controller.request("POST", "/agents", body)
    assert status == 201, created
    assert created["spec"]["securityContext"] == {
        "runAsUser": 4242,
        "runAsGroup": 4343,
        "capabilities": {"add": ["NET_BIND_SERVICE"]},
    }
    await controller.wait_agent("sec-context", running)
    info = await inspect(docker, "parallax-agent-sec-context")
    assert info is not None
    assert info["Config"]["User"] == "4242:4343"
    assert info["HostConfig"]["CapAdd"] == ["NET_BIND_SERVICE"] and info["HostConfig"]["CapDrop"] == ["ALL"]
    code, out = await docker_exec("parallax-agent-sec-context", "sh", "-c", "id -u; id -g")
    assert (code, out.split()) == (0, ["4242", "4343"])


# --- the workspace volume ----------------------------------------------------------------------------


async def test_workspace_is_labelled_survives_recreation_and_goes_with_the_agent(
    controller: Controller, docker: aiodocker.Docker
):
    status, body = await controller.request("POST", "/agents", {"name": "sec-ws", "type": "claude"})
    assert status == 201, body
    first = await controller.wait_agent("sec-ws", running)
    found = await volume(docker, workspace_volume("sec-ws", controller.settings.instance))
    assert found is not None
    assert found["Labels"] == {
        "parallax.managed": "true",
        "parallax.agent": "sec-ws",
        "parallax.instance": controller.settings.instance,
    }
    code, _ = await docker_exec("parallax-agent-sec-ws", "sh", "-c", "echo kept > /workspace/note")
    assert code == 0

    status, _ = await controller.request("PATCH", "/agents/sec-ws", {"env": {"MODE": "two"}})
    assert status == 200
    second = await controller.wait_agent(
        "sec-ws", lambda a: running(a) and a["status"]["containerId"] != first["status"]["containerId"]
    )
    assert second["metadata"]["generation"] == 2
    code, out = await docker_exec("parallax-agent-sec-ws", "cat", "/workspace/note")
    assert (code, out.strip()) == (0, "kept")

    status, _ = await controller.request("DELETE", "/agents/sec-ws")
    assert status == 202
    await controller.wait_gone("sec-ws")
    assert await volume(docker, workspace_volume("sec-ws", controller.settings.instance)) is None


async def test_a_kept_workspace_outlives_its_agent_and_is_found_again(controller: Controller, docker: aiodocker.Docker):
    body = {"name": "sec-keep", "type": "claude", "workspace": {"keep": True}}
    status, created = await controller.request("POST", "/agents", body)
    assert status == 201, created
    assert created["spec"]["workspace"] == {"keep": True}
    await controller.wait_agent("sec-keep", running)
    assert (await docker_exec("parallax-agent-sec-keep", "sh", "-c", "echo saved > /workspace/result"))[0] == 0
    await controller.request("DELETE", "/agents/sec-keep")
    await controller.wait_gone("sec-keep")
    assert await inspect(docker, "parallax-agent-sec-keep") is None
    assert await volume(docker, workspace_volume("sec-keep", controller.settings.instance)) is not None

    status, _ = await controller.request("POST", "/agents", {"name": "sec-keep", "type": "claude"})
    assert status == 201
    await controller.wait_agent("sec-keep", running)
    code, out = await docker_exec("parallax-agent-sec-keep", "cat", "/workspace/result")
    assert (code, out.strip()) == (0, "saved")
    await controller.request("DELETE", "/agents/sec-keep")
    await controller.wait_gone("sec-keep")
    assert await volume(docker, workspace_volume("sec-keep", controller.settings.instance)) is None


async def test_a_volume_that_is_not_the_agents_is_never_mounted(controller: Controller, docker: aiodocker.Docker):
    name = workspace_volume("sec-foreign", controller.settings.instance)
    await docker.volumes.create({"Name": name, "Labels": {"owner": "someone-else"}})
    try:
        status, body = await controller.request("POST", "/agents", {"name": "sec-foreign", "type": "claude"})
        assert status == 201, body
        agent = await controller.wait_agent("sec-foreign", lambda a: bool(a["status"].get("error")))
        assert agent["status"]["error"]["code"] == "CONTAINER_ERROR"
        assert "not this agent's" in agent["status"]["error"]["message"]
        assert await inspect(docker, "parallax-agent-sec-foreign") is None
        await controller.request("DELETE", "/agents/sec-foreign")
        await controller.wait_gone("sec-foreign")
        assert await volume(docker, name) is not None, "a volume without our labels is never removed"
    finally:
        await (await docker.volumes.get(name)).delete()


# --- policy refusals: 403/422 naming the rule, and nothing stored ------------------------------------


@pytest.mark.parametrize(
    ("extra", "status", "field", "rule"),
    [
        ({"volumes": ["/data/../etc:/x:ro"]}, 403, "volumes[0]", "exposes the host"),
        ({"volumes": ["/host/data/../../etc:/x:ro"]}, 403, "volumes[0]", "exposes the host"),
        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, 403, "volumes[0]", "may not be mounted"),
        ({"volumes": ["/:/host:ro"]}, 403, "volumes[0]", "exposes the host"),
        ({"volumes": ["/root:/r:ro"]}, 403, "volumes[0]", "exposes the host"),
        ({"volumes": ["/proc:/p:ro"]}, 403, "volumes[0]", "exposes the host"),
        ({"volumes": ["host/data:/data:ro"]}, 422, "volumes[0]", "absolute"),
        ({"volumes": ["/host/data:/data:rw"]}, 403, "volumes[0]", "read-write"),
        ({"volumes": ["/host/data:/data"]}, 403, "volumes[0]", "read-write"),
        ({"volumes": ["/srv/sec-elsewhere:/data:ro"]}, 403, "volumes[0]", "outside the allowed volume roots"),
        ({"volumes": ["/host/data:/workspace:ro"]}, 422, "volumes[0]", "reserved"),
        ({"privileged": True}, 403, "privileged", "privileged mode is not allowed"),
        ({"hostNetwork": True}, 403, "hostNetwork", "network namespace"),
        ({"hostPID": True}, 403, "hostPID", "PID namespace"),
        ({"network": "host"}, 403, "network", "host network"),
        ({"devices": ["/dev/fuse"]}, 403, "devices", "devices"),
        (
            {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
            403,
            "securityContext.capabilities.add[0]",
            "allowlist",
        ),
        ({"securityContext": {"runAsUser": 0}}, 403, "securityContext.runAsUser", "root"),
        (
            {"securityContext": {"allowPrivilegeEscalation": True}},
            403,
            "securityContext.allowPrivilegeEscalation",
            "escalation",
        ),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
async def test_policy_refusal_names_the_rule_and_stores_nothing(
    controller: Controller, docker: aiodocker.Docker, extra: dict[str, Any], status: int, field: str, rule: str
):
    got, body = await controller.request("POST", "/agents", {"name": "sec-refused", "type": "claude", **extra})
    assert got == status, body
    assert body["error"]["code"] == ("FORBIDDEN" if status == 403 else "VALIDATION_FAILED")
    assert [d["field"] for d in body["error"]["details"]] == [field]
    assert rule in body["error"]["details"][0]["message"]
    assert rule in body["error"]["message"]
    await nothing_stored(controller, "sec-refused", docker)


async def test_a_symlink_out_of_an_allowed_root_is_refused(
    start_controller: StartController, docker: aiodocker.Docker, tmp_path: Path
):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "to-root").symlink_to("/")
    (allowed / "to-outside").symlink_to(outside)
    controller = await start_controller(allowed_volume_roots=(str(allowed),))
    for link, rule in (("to-root", "exposes the host"), ("to-outside", "outside the allowed volume roots")):
        status, body = await controller.request(
            "POST", "/agents", {"name": "sec-link", "type": "claude", "volumes": [f"{allowed}/{link}:/x:ro"]}
        )
        assert status == 403, body
        assert rule in body["error"]["details"][0]["message"]
        await nothing_stored(controller, "sec-link", docker)


async def test_the_default_root_is_the_volumes_directory_beside_the_store(
    start_controller: StartController, docker: aiodocker.Docker
):
    controller = await start_controller(allowed_volume_roots=None)
    store_dir = os.path.dirname(controller.settings.store_path)
    status, body = await controller.request(
        "POST", "/agents", {"name": "sec-default", "type": "claude", "volumes": ["/host/data:/data:ro"]}
    )
    assert status == 403 and "outside the allowed volume roots" in body["error"]["message"]
    status, body = await controller.request(
        "POST", "/agents", {"name": "sec-default", "type": "claude", "volumes": [f"{store_dir}:/state:ro"]}
    )
    assert status == 403 and "store" in body["error"]["message"]
    await nothing_stored(controller, "sec-default", docker)

    ours = f"{store_dir}/volumes/project"
    status, body = await controller.request(
        "POST", "/agents", {"name": "sec-default", "type": "claude", "volumes": [f"{ours}:/data:ro"]}
    )
    assert status == 201, body
    await controller.wait_agent("sec-default", running)
    info = await inspect(docker, "parallax-agent-sec-default")
    assert info is not None
    data = {m["Destination"]: m for m in info["Mounts"]}["/data"]
    assert (data["Source"], data["RW"]) == (ours, False)


async def test_replacing_or_patching_in_a_forbidden_mount_leaves_the_agent_unchanged(controller: Controller):
    status, created = await controller.request("POST", "/agents", {"name": "sec-update", "type": "claude"})
    assert status == 201
    for method, body in (
        ("PUT", {"name": "sec-update", "type": "claude", "volumes": ["/etc:/etc:ro"]}),
        ("PATCH", {"volumes": ["/var/run/docker.sock:/sock"]}),
        ("PATCH", {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}),
    ):
        status, refused = await controller.request(method, "/agents/sec-update", body)
        assert status == 403, refused
    _, after = await controller.request("GET", "/agents/sec-update")
    assert after["spec"] == created["spec"]
    assert after["metadata"]["generation"] == created["metadata"]["generation"]


# --- API authentication ------------------------------------------------------------------------------


async def test_with_a_token_every_route_but_the_probes_needs_it(start_controller: StartController):
    controller = await start_controller(api_token=TOKEN)
    for path in ("/agents", "/agents/sec-x", "/openapi.json", "/metrics", "/no-such-route", "/events"):
        for token in (None, "wrong-" + TOKEN, TOKEN + "x"):
            status, headers, body = await call(controller, "GET", path, token=token)
            assert status == 401, (path, body)
            assert body["error"]["code"] == "UNAUTHORIZED"
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in json.dumps(body)
    status, _, _ = await call(controller, "POST", "/agents", {"name": "sec-anon", "type": "claude"})
    assert status == 401
    assert controller.session is not None
    async with controller.session.get(
        controller.base_url + "/agents", headers={"Authorization": f"Basic {TOKEN}"}
    ) as resp:
        assert resp.status == 401
    for path in ("/healthz", "/readyz"):
        status, _, _ = await call(controller, "GET", path)
        assert status in (200, 503), path
    status, _, listing = await call(controller, "GET", "/agents", token=TOKEN)
    assert status == 200 and listing["items"] == [], "the anonymous POST stored nothing"
    status, _, _ = await call(controller, "GET", "/metrics", token=TOKEN)
    assert status == 200


async def test_metrics_can_be_left_open_for_a_scraper(start_controller: StartController):
    controller = await start_controller(api_token=TOKEN, metrics_auth=False)
    status, _, _ = await call(controller, "GET", "/metrics")
    assert status == 200
    status, _, _ = await call(controller, "GET", "/agents")
    assert status == 401


async def test_openapi_document_describes_every_route_and_embeds_the_agent_schema(controller: Controller):
    status, document = await controller.request("GET", "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1")
    served = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert controller.runner is not None
    for route in controller.runner.app.router.routes():
        if route.method in ("GET", "POST", "PUT", "PATCH", "DELETE") and route.resource is not None:
            assert (route.method.lower(), route.resource.canonical) in served
    schema = json.loads((REPO / "specs" / "agent.schema.json").read_text())
    agent = document["components"]["schemas"]["Agent"]
    assert agent["properties"]["spec"] == {"$ref": "#/components/schemas/AgentSpec"}
    spec = document["components"]["schemas"]["AgentSpec"]
    assert set(spec["properties"]) == set(schema["$defs"]["spec"]["properties"])
    assert spec["properties"]["securityContext"] == schema["$defs"]["spec"]["properties"]["securityContext"]
    errors = document["components"]["schemas"]["Error"]
    assert errors["required"] == ["error"]
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []


# --- request bounds ------------------------------------------------------------------------------------


async def test_deep_or_huge_bodies_are_refused_before_they_are_looked_at(controller: Controller):
    deep = '{"name": "sec-deep", "type": "claude", "annotations": ' + "[" * 200 + "]" * 200 + "}"
    status, body = await controller.request("POST", "/agents", raw=deep)
    assert status == 400 and "nested deeper" in body["error"]["message"]
    wide = json.dumps({"name": "sec-wide", "type": "claude", "command": ["x"] * 5000})
    status, body = await controller.request("POST", "/agents", raw=wide)
    assert status == 400 and "more than" in body["error"]["message"]
    status, body = await controller.request("PATCH", "/agents/sec-deep", raw="[" * 100_000 + "]" * 100_000)
    assert status in (400, 413)
    status, body = await controller.request("POST", "/agents", raw="x" * (controller.settings.max_body_bytes + 1))
    assert status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    status, body = await controller.request(
        "POST", "/agents", raw='{"name": "sec-nan", "type": "claude", "resources": {"cpu": NaN}}'
    )
    assert status == 400 and body["error"]["code"] == "MALFORMED_JSON"
    _, listing = await controller.request("GET", "/agents")
    assert listing["items"] == []


@pytest.mark.parametrize("path", ["/agents", "/apply", "/agents/sec-slow"])
async def test_a_client_that_stalls_mid_body_gets_408(start_controller: StartController, path: str):
    controller = await start_controller(body_timeout_seconds=0.5)
    host, port = controller.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    method = "PUT" if path == "/agents/sec-slow" else "POST"
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"name": "sec-slow",'
        )
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    _, listing = await controller.request("GET", "/agents")
    assert listing["items"] == []


async def test_a_client_that_trickles_its_headers_is_disconnected(start_controller: StartController):
    """Slowloris: one header line every 0.3 s never completes a request; PARALLAX_IDLE_TIMEOUT closes the
    connection, while a normal request on another connection is answered meanwhile."""
    controller = await start_controller(idle_timeout_seconds=1.5)
    host, port = controller.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /agents HTTP/1.1\r\nHost: x\r\n")
    started = asyncio.get_running_loop().time()
    closed_after = None
    try:
        for i in range(40):  # up to 12 s of trickling
            if writer.is_closing() or reader.at_eof():
                break
            try:
                writer.write(f"X-Slow-{i}: y\r\n".encode())
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                break
        closed_after = asyncio.get_running_loop().time() - started
        status, _ = await controller.request("GET", "/agents")
        assert status == 200
    finally:
        writer.close()
    assert closed_after is not None and closed_after < 6, f"still open after {closed_after:.1f} s"


# --- parallax serve ------------------------------------------------------------------------------------


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARALLAX_", "DOCKER_", "DEFAULT_"))}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(
        PORT=str(port),
        PARALLAX_STORE=str(tmp_path / "serve" / "agents.db"),
        PARALLAX_INSTANCE=f"test-sec-{uuid.uuid4().hex[:8]}",
        DOCKER_SOCKET=str(tmp_path / "no-docker.sock"),
        **extra,
    )
    return env


PARALLAX = str(Path(sys.executable).parent / "parallax")


@pytest.mark.e2e
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_serve_refuses_a_token_less_api_beyond_loopback(tmp_path: Path, host: str):
    result = subprocess.run(
        [PARALLAX, "serve"], env=_serve_env(tmp_path, PARALLAX_HOST=host), capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "PARALLAX_API_TOKEN" in result.stderr and host in result.stderr
    assert not (tmp_path / "serve" / "agents.db").exists(), "refused before opening anything"


@pytest.mark.e2e
async def test_serve_says_at_start_that_it_runs_without_a_token(tmp_path: Path):
    env = _serve_env(tmp_path)
    proc = subprocess.Popen([PARALLAX, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{env['PORT']}/healthz"

        async def healthy() -> bool:
            assert proc.poll() is None
            try:
                async with aiohttp.ClientSession() as session, session.get(url) as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, timeout=20, what="parallax serve to answer")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    text = out.decode()
    assert "no PARALLAX_API_TOKEN" in text and "unauthenticated" in text and "127.0.0.1" in text


async def test_a_path_swapped_for_a_symlink_after_admission_is_refused_at_creation(
    start_controller: StartController, docker: aiodocker.Docker, tmp_path: Path
):
    """Admission judged the path; by the time the container is made (here: once its image exists) the
    directory has become a link to /etc. The policy is applied again then, and nothing is mounted."""
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    controller = await start_controller(allowed_volume_roots=(str(allowed),))
    image = f"parallax-test/swap-{uuid.uuid4().hex[:8]}:1"
    body = {"name": "sec-swap", "type": "custom", "image": image, "volumes": [f"{allowed}/data:/data:ro"]}
    status, created = await controller.request("POST", "/agents", body)
    assert status == 201, created
    try:
        await controller.wait_agent("sec-swap", lambda a: a["status"].get("error", {}).get("code") == "IMAGE_NOT_FOUND")
        (allowed / "data").rmdir()
        (allowed / "data").symlink_to("/etc")  # swapped behind the controller's back
        code, out = await docker_cli("tag", TEST_IMAGE, image)
        assert code == 0, out
        agent = await controller.wait_agent(
            "sec-swap", lambda a: a["status"].get("error", {}).get("code") == "CONTAINER_ERROR"
        )
        assert "volumes[0]" in agent["status"]["error"]["message"]
        assert "exposes the host" in agent["status"]["error"]["message"]
        assert await inspect(docker, "parallax-agent-sec-swap") is None
        (allowed / "data").unlink()
        (allowed / "data").mkdir()  # put right: the next retry creates it
        await controller.wait_agent("sec-swap", running)
    finally:
        await docker_cli("rmi", image)
