"""Runtime classes (``spec.runtimeClassName``): which OCI runtime an agent's container runs under.

``runc`` is Docker's default runtime. ``gvisor`` is gVisor's ``runsc``: the agent's system calls are
served by gVisor's user-space kernel (the Sentry) instead of the host's. What changes under it, as
measured with Debian's runsc 20221219 on a 6.18 kernel in a VM (README "gVisor (runtimeClassName)"):

- The pids cgroup counts the sandbox's own host threads: about 44 when idle and about 8 more for each
  process inside, so an agent's ``resources.pids`` is translated (``host_pids_limit``) and over it the
  whole sandbox dies rather than one fork failing.
- The sandbox needs memory of its own: below 16 MiB ``runsc create`` is OOM-killed before the agent
  starts, so gvisor agents get at least ``GVISOR_MIN_MEMORY``.
"""

from __future__ import annotations

RUNC = "runc"
GVISOR = "gvisor"
RUNTIME_CLASSES = (RUNC, GVISOR)

GVISOR_PIDS_BASE = 64
"""Host tasks of an idle sandbox (44 measured: Sentry, gofer, their Go threads), with room to spare."""
GVISOR_PIDS_PER_PROCESS = 10
"""Host tasks each process inside the sandbox adds (8 measured with the ptrace platform: its stub)."""
PID_MAX_LIMIT = 4 * 1024 * 1024
"""The kernel's largest pids.max (PID_MAX_LIMIT on 64-bit)."""
GVISOR_MAX_PIDS = (PID_MAX_LIMIT - GVISOR_PIDS_BASE) // GVISOR_PIDS_PER_PROCESS
GVISOR_MIN_MEMORY = 32 * 1024 * 1024


def host_pids_limit(runtime_class: str, pids: int) -> int:
    """The pids cgroup limit that lets an agent of ``runtime_class`` run about ``pids`` processes."""
    if runtime_class == GVISOR:
        return GVISOR_PIDS_BASE + GVISOR_PIDS_PER_PROCESS * pids
    return pids
