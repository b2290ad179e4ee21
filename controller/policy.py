"""What an agent may ask for: the security policy applied when a body is admitted.

Each refusal is a ``FieldError`` whose message names the rule, so a 403 tells the user what to change.
Everything here is a pure decision, except that host paths are resolved with ``os.path.realpath``:
a symlink must be judged by where it points.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.config import Settings
from controller.model import AgentSpec
from controller.mounts import BindMount, is_within, overlaps, parse_volume
from controller.render import AGENT_HOME, WORKSPACE_PATH, capability_name
from controller.schema import FieldError

# Mounting any of these (or a directory containing one) hands an agent the host, whatever the
# allowed roots say.
FORBIDDEN_HOST_PATHS = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/log",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
)

# Capabilities an agent may add back after ``CapDrop: ALL``: the Kubernetes Pod Security Standards'
# "baseline" set (Docker's defaults without NET_RAW). SYS_ADMIN, NET_ADMIN, SYS_PTRACE and the rest never.
CAPABILITY_ALLOWLIST = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)

# Container paths the controller mounts itself; a bind mount may not take their place.
RESERVED_CONTAINER_PATHS = ("/tmp", AGENT_HOME, WORKSPACE_PATH)

# Fields from Kubernetes/Docker vocabularies that would undo the hardening. Not part of the schema
# (so they are never accepted); named here so the refusal says which rule, not just "unknown field".
FORBIDDEN_SPEC_FIELDS = {
    "privileged": "privileged mode is not allowed",
    "hostNetwork": "sharing the host's network namespace is not allowed",
    "hostPID": "sharing the host's PID namespace is not allowed",
    "hostIPC": "sharing the host's IPC namespace is not allowed",
    "devices": "host devices may not be passed to an agent",
}
FORBIDDEN_SECURITY_CONTEXT_FIELDS = {
    "privileged": "privileged mode is not allowed",
    "allowPrivilegeEscalation": "privilege escalation is not allowed (no-new-privileges is always set)",
}


@dataclass(frozen=True)
class VolumeRoot:
    """A host directory bind mounts may come from; ``writable`` allows ``:rw`` below it."""

    path: str
    writable: bool

    def __str__(self) -> str:
        return f"{self.path}:{'rw' if self.writable else 'ro'}"


@dataclass(frozen=True)
class Verdict:
    """Policy findings: ``invalid`` ones are 422 (the request cannot mean anything), ``forbidden`` 403."""

    invalid: tuple[FieldError, ...] = ()
    forbidden: tuple[FieldError, ...] = ()


def default_volume_root(settings: Settings) -> str:
    """``volumes/`` beside the store: the one place mounts may come from when nothing is configured."""
    return os.path.join(os.path.dirname(os.path.abspath(settings.store_path)), "volumes")


def volume_roots(settings: Settings) -> tuple[VolumeRoot, ...]:
    entries = settings.allowed_volume_roots
    if entries is None:
        entries = (default_volume_root(settings),)
    roots = []
    for entry in entries:
        path, _, mode = entry.partition(":")
        roots.append(VolumeRoot(os.path.realpath(path), mode == "rw"))
    return tuple(roots)


def store_files(settings: Settings) -> tuple[str, ...]:
    store = os.path.realpath(settings.store_path)
    return (store, store + "-wal", store + "-shm", store + "-journal", store + ".lock")


def forbidden_fields(spec: Any, prefix: str) -> list[FieldError]:
    """Refusals for fields that ask to undo the hardening (``privileged: true``, ``hostNetwork``...)."""
    if not isinstance(spec, dict):
        return []
    refused = [
        FieldError(f"{prefix}{key}", rule) for key, rule in FORBIDDEN_SPEC_FIELDS.items() if _asks_for(spec.get(key))
    ]
    context = spec.get("securityContext")
    if isinstance(context, dict):
        refused += [
            FieldError(f"{prefix}securityContext.{key}", rule)
            for key, rule in FORBIDDEN_SECURITY_CONTEXT_FIELDS.items()
            if _asks_for(context.get(key))
        ]
    if spec.get("network") == "host":
        refused.append(FieldError(f"{prefix}network", "the host network is not allowed; use a user-defined network"))
    return refused


def _asks_for(value: Any) -> bool:
    return value is not None and value is not False and value != [] and value != {} and value != ""


def check_spec(spec: AgentSpec, settings: Settings, prefix: str) -> Verdict:
    """Every policy finding about an admitted spec, each at its field path."""
    invalid: list[FieldError] = []
    forbidden: list[FieldError] = []
    targets: dict[str, int] = {}
    roots = volume_roots(settings)
    for i, volume in enumerate(spec.volumes):
        field = f"{prefix}volumes[{i}]"
        mount = parse_volume(volume)
        if mount.container_path in RESERVED_CONTAINER_PATHS:
            invalid.append(FieldError(field, f"container path {mount.container_path} is reserved for the controller"))
        elif mount.container_path in targets:
            invalid.append(
                FieldError(
                    field,
                    f"container path {mount.container_path} is also used by volumes[{targets[mount.container_path]}]",
                )
            )
        targets.setdefault(mount.container_path, i)
        refusal = mount_refusal(mount, settings, roots)
        if refusal:
            forbidden.append(FieldError(field, refusal))
    context = spec.security_context
    if context.run_as_user == 0:
        forbidden.append(FieldError(f"{prefix}securityContext.runAsUser", "running as root (uid 0) is not allowed"))
    if context.run_as_group is not None and context.run_as_user is None:
        invalid.append(FieldError(f"{prefix}securityContext.runAsGroup", "runAsGroup needs runAsUser"))
    for i, capability in enumerate(context.add_capabilities):
        if capability_name(capability) not in CAPABILITY_ALLOWLIST:
            forbidden.append(
                FieldError(
                    f"{prefix}securityContext.capabilities.add[{i}]",
                    f"capability {capability} is not on the allowlist ({', '.join(sorted(CAPABILITY_ALLOWLIST))})",
                )
            )
    return Verdict(tuple(invalid), tuple(forbidden))


def mount_refusal(mount: BindMount, settings: Settings, roots: Iterable[VolumeRoot] | None = None) -> str | None:
    """Why ``mount`` may not be used, or None. Judged on the path as written and after resolving
    ``..`` and symlinks, so neither ``/data/../etc`` nor a link to ``/`` gets through."""
    roots = tuple(volume_roots(settings) if roots is None else roots)
    resolved = os.path.realpath(mount.host_path)
    socket = os.path.realpath(settings.docker_socket)
    for candidate in dict.fromkeys((mount.host_path, resolved)):
        if candidate == "/" or any(overlaps(candidate, path) for path in FORBIDDEN_HOST_PATHS):
            return f"host path {mount.host_path!r} may not be mounted (it exposes the host)"
        if is_within(socket, candidate):
            return f"host path {mount.host_path!r} may not be mounted (it is or contains the Docker socket)"
        if any(is_within(path, candidate) for path in store_files(settings)):
            return f"host path {mount.host_path!r} may not be mounted (it holds the controller's store)"
    matching = [r for r in roots if is_within(resolved, r.path)]
    if not matching:
        allowed = ", ".join(str(r) for r in roots) or "none"
        return (
            f"host path {mount.host_path!r} is outside the allowed volume roots ({allowed}); "
            "an operator can allow it with PARALLAX_ALLOWED_VOLUME_ROOTS"
        )
    root = max(matching, key=lambda r: len(r.path))  # the most specific root decides
    if not mount.read_only and not root.writable:
        return (
            f"read-write mount of {mount.host_path!r} is not allowed: its root {root.path} is read-only "
            f"(add :ro, or allow writes with {root.path}:rw in PARALLAX_ALLOWED_VOLUME_ROOTS)"
        )
    return None
