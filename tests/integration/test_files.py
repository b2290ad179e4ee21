"""The files API against the real daemon: round trips (binary, 50 MB, unicode names, empty files),
listings, tar in and out, every escape attempt refused, read-only paths refused, size limit."""

from __future__ import annotations

import io
import json
import os
import tarfile
import urllib.parse
import uuid
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartController
from tests.harness import Controller, docker_exec, running

pytestmark = pytest.mark.docker

LIMIT = 60 * 1024 * 1024


@pytest.fixture
async def box(start_controller: StartController) -> tuple[Controller, str]:
    controller = await start_controller(network=f"pxex-{uuid.uuid4().hex[:8]}", files_max_bytes=LIMIT)
    name = f"pxex-{uuid.uuid4().hex[:6]}"
    status, body = await controller.request("POST", "/agents", {"name": name, "type": "claude"})
    assert status == 201, body
    await controller.wait_agent(name, running)
    return controller, name


def url(controller: Controller, name: str, path: str, **query: str) -> str:
    return f"{controller.base_url}/agents/{name}/files?" + urllib.parse.urlencode({"path": path, **query})


async def put(controller: Controller, name: str, path: str, data: bytes, **kwargs: Any) -> tuple[int, Any]:
    assert controller.session is not None
    async with controller.session.put(url(controller, name, path), data=data, **kwargs) as resp:
        return resp.status, await resp.json()


async def get(controller: Controller, name: str, path: str, **query: str) -> tuple[int, bytes, str]:
    assert controller.session is not None
    async with controller.session.get(url(controller, name, path, **query)) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


async def sh(name: str, script: str) -> str:
    code, out = await docker_exec(f"parallax-agent-{name}", "sh", "-c", script)
    assert code == 0, out
    return out


async def test_round_trips_binary_big_unicode_and_empty(box: tuple[Controller, str]):
    controller, name = box
    cases = {
        "/workspace/bin.dat": bytes(range(256)) * 64,
        "/workspace/big.bin": os.urandom(50 * 1024 * 1024),
        "/workspace/ünïcødé 文件.txt": "héllo\n".encode(),
        "/workspace/empty": b"",
    }
    for path, data in cases.items():
        status, body = await put(controller, name, path, data)
        assert status == 200 and body["bytes"] == len(data), body
        status, back, kind = await get(controller, name, path)
        assert status == 200 and kind == "application/octet-stream"
        assert back == data, path
    # the tmpfs mounts, /tmp and the home, are served too (from inside, as the agent's user)
    for path in ("/tmp/bin.dat", "/home/agent/ünï.bin", "/tmp/empty"):
        data = b"" if path.endswith("empty") else os.urandom(3 * 1024 * 1024)
        status, body = await put(controller, name, path, data)
        assert status == 200, body
        status, back, _ = await get(controller, name, path)
        assert status == 200 and back == data, path
    assert (await sh(name, "stat -c %u /tmp/bin.dat")).strip() == "1000"
    await sh(name, "ln -s /tmp /workspace/to-tmp")
    status, back, _ = await get(controller, name, "/workspace/to-tmp/empty")
    assert (status, back) == (200, b"")
    status, listing, _ = await get(controller, name, "/tmp")
    assert {"bin.dat", "empty"} <= {i["name"] for i in json.loads(listing)["items"]}
    # written as the agent's user, so it can change what it is given
    assert (await sh(name, "stat -c %u /workspace/bin.dat")).strip() == "1000"
    status, listing, kind = await get(controller, name, "/workspace")
    assert status == 200 and kind.startswith("application/json")
    items = {i["name"]: i for i in json.loads(listing)["items"]}
    assert items["big.bin"]["size"] == 50 * 1024 * 1024 and items["big.bin"]["type"] == "file"
    assert items["empty"]["size"] == 0 and "ünïcødé 文件.txt" in items
    assert set(items["bin.dat"]) >= {"name", "type", "size", "mode", "mtime"}


async def test_tar_in_and_out_and_delete(box: tuple[Controller, str]):
    controller, name = box
    await sh(name, "mkdir -p /workspace/proj")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, data in (("src/a.py", b"print(1)\n"), ("README", b"hi\n")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("src/link")
        link.type, link.linkname = tarfile.SYMTYPE, "a.py"
        tar.addfile(link)
    status, body = await put(
        controller, name, "/workspace/proj", buffer.getvalue(), headers={"Content-Type": "application/x-tar"}
    )
    assert status == 200, body
    assert (await sh(name, "cat /workspace/proj/src/a.py /workspace/proj/src/link")) == "print(1)\nprint(1)\n"
    # the tar had no entry for src/: the directory made for it is the agent's too, not root's
    assert (await sh(name, "stat -c %u /workspace/proj/src /workspace/proj/src/a.py")).split() == ["1000", "1000"]
    status, data, kind = await get(controller, name, "/workspace/proj", archive="tar")
    assert status == 200 and kind == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert {"proj/README", "proj/src/a.py", "proj/src/link"} <= set(names)
    assert controller.session is not None
    async with controller.session.delete(url(controller, name, "/workspace/proj/src")) as resp:
        assert resp.status == 200
    assert (await sh(name, "ls /workspace/proj")).split() == ["README"]


def _tar(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


async def test_every_escape_attempt_is_refused(box: tuple[Controller, str]):
    controller, name = box
    # what the agent plants: symlinks out of the workspace, to /proc, to its tmpfs, and a link loop
    await sh(
        name,
        "ln -s /etc /workspace/etc-link; ln -s /proc/self/environ /workspace/env-link; ln -s / /workspace/root;"
        "ln -s ../../etc/passwd /workspace/rel-link; ln -s /tmp /workspace/tmp-link; mkdir -p /workspace/d;"
        "ln -s /etc /tmp/etc-link; ln -s / /home/agent/root-link;"
        "ln -s /etc /workspace/d/sub; ln -s loop1 /workspace/loop2; ln -s loop2 /workspace/loop1",
    )
    reads = {
        "/etc/passwd": 403,  # outside the workspace
        "/workspace/../etc/passwd": 400,  # '..'
        "/workspace/d/../../etc/passwd": 400,
        "workspace/x": 400,  # relative
        "/proc/self/environ": 403,  # /proc
        "/workspace/etc-link/passwd": 403,  # planted symlink, followed midway
        "/workspace/etc-link": 403,  # planted symlink, last component
        "/workspace/env-link": 403,  # symlink to /proc
        "/workspace/root/etc/passwd": 403,  # symlink to /
        "/workspace/rel-link": 403,  # relative symlink climbing out
        "/workspace/d/sub/passwd": 403,  # symlink deeper down
        "/workspace/loop1": 400,  # symlink loop
        "/tmp/etc-link/passwd": 403,  # planted on the tmpfs (resolved from inside)
        "/home/agent/root-link/etc/passwd": 403,
        "/workspace/tmp-link/etc-link/passwd": 403,  # from the workspace onto the tmpfs and out
        "/home/agent/../../etc/passwd": 400,
        "/workspace/x\x00y": 400,  # NUL
    }
    for path, expected in reads.items():
        status, body, _ = await get(controller, name, path)
        assert status == expected, (path, status, body[:300])
        assert b"root:x:0:0" not in body
    writes = {
        "/etc/evil": 403,  # read-only root
        "/usr/bin/evil": 403,
        "/workspace/etc-link/evil": 403,  # through a planted symlink
        "/workspace/root/tmp/evil": 403,
        "/workspace/etc-link": 403,  # overwriting the symlink means writing its target
        "/workspace": 409,  # the root itself is no file
        "/tmp/etc-link/evil": 403,  # through a symlink planted on the tmpfs
        "/home/agent/root-link/usr/evil": 403,
    }
    for path, expected in writes.items():
        status, body = await put(controller, name, path, b"evil")
        assert status == expected, (path, status, body)
    assert "evil" not in await sh(name, "ls /etc /usr/bin; true")
    bad_tars = {
        "absolute member": _tar(_member("/etc/evil")),
        "dot-dot member": _tar(_member("../evil")),
        "deep dot-dot": _tar(_member("a/../../evil")),
        "absolute symlink": _tar(_member("l", tarfile.SYMTYPE, "/etc")),
        "escaping symlink": _tar(_member("l", tarfile.SYMTYPE, "../../etc")),
        "write below own symlink": _tar(_member("l", tarfile.SYMTYPE, "d"), _member("l/evil")),
        "hard link out": _tar(_member("h", tarfile.LNKTYPE, "/etc/passwd")),
        "hard link to non-member": _tar(_member("h", tarfile.LNKTYPE, "etc-link/passwd")),
        "character device": _tar(_member("null", tarfile.CHRTYPE)),
        "block device": _tar(_member("sda", tarfile.BLKTYPE)),
        "fifo": _tar(_member("fifo", tarfile.FIFOTYPE)),
        "through planted symlink": _tar(_member("etc-link/evil")),
        "through planted deep symlink": _tar(_member("d/sub/evil")),
    }
    for what, data in bad_tars.items():
        for into in ("/workspace", "/tmp") if what != "through planted deep symlink" else ("/workspace",):
            status, body = await put(controller, name, into, data, headers={"Content-Type": "application/x-tar"})
            expected = 403 if what.startswith("through planted") and into == "/tmp" else 422
            assert status in (expected, 422), (what, into, status, body)
    status, body = await put(
        controller, name, "/workspace/etc-link", _tar(_member("evil")), headers={"Content-Type": "application/x-tar"}
    )
    assert status == 403, body
    assert "evil" not in await sh(name, "ls /etc /workspace; true")
    assert controller.session is not None
    for path, expected in {"/workspace": 422, "/etc/passwd": 403, "/workspace/../etc": 400}.items():
        async with controller.session.delete(url(controller, name, path)) as resp:
            assert resp.status == expected, path
    # deleting a planted symlink removes the link, never what it points to
    async with controller.session.delete(url(controller, name, "/workspace/etc-link")) as resp:
        assert resp.status == 200
    assert "passwd" in await sh(name, "ls /etc")


async def test_a_refused_tar_into_a_tmpfs_is_answered_at_once_every_time(box: tuple[Controller, str]):
    """A tar into /tmp is extracted by an exec'd ``tar -x``; a refused member ends that exec at once.
    Docker answers an exec's start before its process exists, so a kill sent that early found nothing
    and the upload hung for good (once in about ten tries)."""
    controller, name = box
    refused = _tar(_member("/etc/evil"))
    for attempt in range(25):
        status, body = await put(
            controller,
            name,
            "/tmp",
            refused,
            headers={"Content-Type": "application/x-tar"},
            timeout=aiohttp.ClientTimeout(total=15),
        )
        assert status == 422, (attempt, body)
    leftovers = await sh(name, "ps -o args | grep '^tar' || true")
    assert leftovers.strip() == "", leftovers


async def test_size_limit_and_stopped_agents(box: tuple[Controller, str]):
    controller, name = box
    status, body = await put(controller, name, "/workspace/too-big", b"\0" * (LIMIT + 1))
    assert status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    status, body = await put(controller, name, "/workspace/kept.txt", b"kept")
    assert status == 200
    status, _ = await controller.request("PATCH", f"/agents/{name}", {"suspend": True})
    await controller.wait_agent(name, lambda a: a["status"].get("phase") == "Suspended")
    status, body = await put(controller, name, "/workspace/late.txt", b"late")
    assert status == 409 and body["error"]["code"] == "NOT_RUNNING"
    # reads still work on the stopped container: what a finished agent wrote can be fetched
    status, data, _ = await get(controller, name, "/workspace/kept.txt")
    assert (status, data) == (200, b"kept")
