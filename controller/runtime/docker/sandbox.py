"""Removing what a runsc (gVisor) container whose start failed leaves behind on a local daemon.

With Debian's runsc 20221219 under Docker 20.10, a ``docker start`` that fails after ``runsc create``
(an entrypoint that does not exist, a network runsc refuses) leaves the containerd shim, the runsc
sandbox and gofer processes and containerd's task running, and ``docker rm`` does not remove them: each
failed start of a crash-looping agent would keep a sandbox alive. They are found by the container's id
in the processes' command lines, which also name the runsc state directory (``--root``, under the
daemon's exec-root) and containerd's socket (``-address``), so nothing about the daemon's layout is
configured here. Removing them needs root (the exec-root is the daemon's): without it, a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field

log = logging.getLogger("parallax.runtime")

PROC = "/proc"
COMMAND_SECONDS = 10.0


@dataclass
class Leftovers:
    """The processes of one container's sandbox: runsc's ``--root`` and binary, the shim's containerd."""

    runsc: str | None = None
    runsc_root: str | None = None
    shim_pids: list[int] = field(default_factory=list)
    sandbox_pids: list[int] = field(default_factory=list)
    containerd_address: str | None = None
    namespace: str = "moby"

    @property
    def found(self) -> bool:
        return bool(self.shim_pids or self.sandbox_pids)


def find_leftovers(container_id: str, proc: str = PROC) -> Leftovers:
    """The runsc processes and containerd shim whose command line names ``container_id`` (a full id)."""
    found = Leftovers()
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not argv or not any(container_id in a for a in argv):
            continue
        program = os.path.basename(argv[0])
        if program.startswith("containerd-shim") and _option(argv, "-id") == container_id:
            found.shim_pids.append(int(entry))
            found.containerd_address = _option(argv, "-address") or found.containerd_address
            found.namespace = _option(argv, "-namespace") or found.namespace
        elif program.startswith("runsc"):
            found.sandbox_pids.append(int(entry))
            found.runsc_root = _option(argv, "--root") or found.runsc_root
            with contextlib.suppress(OSError):
                found.runsc = os.readlink(os.path.join(proc, entry, "exe")).removesuffix(" (deleted)")
    return found


def _option(argv: list[str], name: str) -> str | None:
    """``--name=value`` or ``-name value`` from a command line."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


async def remove_leftovers(container_id: str) -> bool:
    """Stop and remove ``container_id``'s leftover sandbox, its containerd task and shim; True when
    there was one. ``runsc delete --force`` ends the sandbox and gofer and its state; ``ctr`` then
    deletes containerd's task and container record, which ends the shim (killed when ``ctr`` is absent)."""
    leftovers = await asyncio.to_thread(find_leftovers, container_id)
    if not leftovers.found:
        return False
    short = container_id[:12]
    if leftovers.runsc and leftovers.runsc_root:
        await _run([leftovers.runsc, "--root", leftovers.runsc_root, "delete", "--force", container_id], short)
    ctr = shutil.which("ctr")
    if ctr and leftovers.containerd_address:
        base = [ctr, "--address", leftovers.containerd_address, "--namespace", leftovers.namespace]
        await _run([*base, "tasks", "delete", "--force", container_id], short, quiet=True)
        await _run([*base, "containers", "delete", container_id], short, quiet=True)
    for pid in (await asyncio.to_thread(find_leftovers, container_id)).shim_pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    remaining = await asyncio.to_thread(find_leftovers, container_id)
    if remaining.found:
        log.warning(
            "container %s: the runsc sandbox of its failed start is still there (pids %s); removing it needs "
            "root: runsc --root %s delete --force %s",
            short,
            ", ".join(map(str, remaining.shim_pids + remaining.sandbox_pids)),
            leftovers.runsc_root or "<exec-root>/runtime-runc/moby",
            container_id,
        )
    else:
        log.info("container %s: removed the runsc sandbox and containerd shim its failed start left", short)
    return True


async def _run(argv: list[str], short: str, *, quiet: bool = False) -> None:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(COMMAND_SECONDS):
            _, err = await process.communicate()
    except (OSError, TimeoutError) as exc:
        with contextlib.suppress(ProcessLookupError, UnboundLocalError):
            process.kill()
        log.warning("container %s: %s failed: %s", short, os.path.basename(argv[0]), exc)
        return
    if process.returncode and not quiet:
        text = err.decode(errors="replace").strip()[-300:]
        log.warning("container %s: %s exited %s: %s", short, os.path.basename(argv[0]), process.returncode, text)
