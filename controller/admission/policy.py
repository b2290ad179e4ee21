"""What an agent may ask for: the security policy applied when a body is admitted.

Each refusal is a ``FieldError`` whose message names the rule, so a 403 tells the user what to change.
Everything here is a pure decision, except that host paths are resolved on the host's filesystem:
a symlink must be judged by where it points, and a path by every directory it is looked up in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from controller.admission.schema import FieldError
from controller.config import Settings
from controller.egress.policy import ALLOW_ALL, ALLOWLIST, EGRESS_NETWORK_SUFFIX
from controller.model.agent import AGENT_HOME, WORKSPACE_PATH, AgentSpec, capability_name
from controller.model.mounts import BindMount, is_within, overlaps, parse_volume
from controller.model.quantity import parse_memory
from controller.model.runtime_class import GVISOR, GVISOR_MAX_PIDS, GVISOR_MIN_MEMORY

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


def _unshared_mounts(spec: AgentSpec, settings: Settings, prefix: str, refused: set[str]) -> list[FieldError]:
    """On a swarm a task may land on any node, so a host path must be one every node has: under
    ``PARALLAX_SWARM_SHARED_ROOTS`` (a shared filesystem). Anything else cannot be honoured: 422."""
    shared = [root.partition(":")[0] for root in settings.swarm_shared_roots]
    errors = []
    for i, volume in enumerate(spec.volumes):
        field = f"{prefix}volumes[{i}]"
        host = parse_volume(volume).host_path
        if field not in refused and not any(is_within(host, root) for root in shared):
            where = ", ".join(shared) if shared else "none are set"
            errors.append(
                FieldError(
                    field,
                    f"{host} is not under a path every swarm node shares (PARALLAX_SWARM_SHARED_ROOTS: {where}); "
                    "a task may run on any node",
                )
            )
    return errors


PLACEMENT_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
PLACEMENT_LABEL_KEY = re.compile(r"^(node|engine)\.labels\.[A-Za-z0-9][A-Za-z0-9._-]*$")
NODE_ROLES = ("manager", "worker")


def placement_problem(constraint: str) -> str | None:
    """Why Swarm could never honour ``constraint`` (it accepts an unknown key, which matches no node:
    the agent would stay Pending for ever), or None."""
    for operator in ("==", "!="):
        key, found, value = constraint.partition(operator)
        if found:
            break
    else:
        return f"{constraint!r} has no operator: write KEY==VALUE or KEY!=VALUE"
    key, value = key.strip(), value.strip()
    if "==" in value or "!=" in value:
        return f"{constraint!r} has more than one operator"
    if key not in PLACEMENT_KEYS and not PLACEMENT_LABEL_KEY.match(key):
        keys = ", ".join((*PLACEMENT_KEYS, "node.labels.NAME", "engine.labels.NAME"))
        return f"unknown constraint key {key!r}: one of {keys}"
    if not value:
        return f"{constraint!r} has no value"
    if key == "node.role" and value not in NODE_ROLES:
        return f"node.role is manager or worker, not {value!r}"
    return None


def _placement(spec: AgentSpec, settings: Settings, prefix: str) -> list[FieldError]:
    if not spec.placement_constraints:
        return []
    if settings.runtime != "swarm":
        return [
            FieldError(
                f"{prefix}placement.constraints",
                "placement constraints need the swarm runtime (PARALLAX_RUNTIME=swarm): "
                "this controller runs its agents on one Docker host",
            )
        ]
    return [
        FieldError(f"{prefix}placement.constraints[{i}]", problem)
        for i, constraint in enumerate(spec.placement_constraints)
        if (problem := placement_problem(constraint)) is not None
    ]


def _egress(spec: AgentSpec, settings: Settings, prefix: str) -> list[FieldError]:
    """``spec.egress`` as the runtime can honour it: a list only for Allowlist, and on the swarm runtime
    (whose overlay networks the controller's gateway cannot listen on) AllowAll only."""
    problems = []
    if spec.network.endswith(EGRESS_NETWORK_SUFFIX):
        problems.append(
            FieldError(
                f"{prefix}network",
                f"names ending in {EGRESS_NETWORK_SUFFIX!r} are the controller's internal egress networks",
            )
        )
    egress = spec.egress
    if egress is None:
        return problems
    if egress.allow is not None and egress.policy != ALLOWLIST:
        problems.append(FieldError(f"{prefix}egress.allow", f"an allow list means nothing with policy {egress.policy}"))
    if settings.runtime == "swarm" and egress.policy != ALLOW_ALL:
        problems.append(
            FieldError(
                f"{prefix}egress.policy",
                f"{egress.policy} cannot be enforced on the swarm runtime (the egress gateway serves the local "
                "runtime's networks only); use AllowAll",
            )
        )
    return problems


def check_spec(
    spec: AgentSpec,
    settings: Settings,
    prefix: str,
    neighbours: Iterable[tuple[str, Sequence[str]]] = (),
    runtime_classes: Collection[str] | None = None,
) -> Verdict:
    """Every policy finding about an admitted spec, each at its field path. ``neighbours`` are the other
    agents' names and volumes: a mount one of them could redirect (or that could redirect one of theirs)
    is refused now; the reconciler checks the same again before every start. ``runtime_classes`` are
    the classes the engine can run (``Runtime.runtime_classes``), None when not known."""
    invalid: list[FieldError] = list(runtime_class_errors(spec, settings, prefix, runtime_classes))
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
    if settings.runtime == "swarm":
        invalid += _unshared_mounts(spec, settings, prefix, {e.field for e in forbidden})
    invalid += _placement(spec, settings, prefix)
    invalid += _egress(spec, settings, prefix)
    if spec.volumes:
        theirs = [m for name, volumes in neighbours for m in resolve_mounts(volumes, f"agent {name!r} ")]
        refused = {error.field for error in forbidden}
        mine = [m for m in resolve_mounts(spec.volumes, prefix) if m.owner not in refused]
        forbidden += [FieldError(mount.owner, why) for mount, why in redirectable(mine, theirs)]
    lifecycle = spec.lifecycle
    if lifecycle.on_idle is not None and lifecycle.idle_timeout_seconds is None:
        invalid.append(
            FieldError(f"{prefix}lifecycle.onIdle", "needs lifecycle.idleTimeoutSeconds (idle after how long?)")
        )
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


def runtime_class_errors(
    spec: AgentSpec, settings: Settings, prefix: str, runtime_classes: Collection[str] | None
) -> Iterable[FieldError]:
    """What a gvisor agent asks for that cannot be honoured here: 422 at ``runtimeClassName`` (or the
    limit gVisor cannot keep)."""
    if spec.runtime_class_name != GVISOR:
        return
    field = f"{prefix}runtimeClassName"
    default = " (PARALLAX_DEFAULT_RUNTIME_CLASS)" if settings.default_runtime_class == GVISOR else ""
    if settings.runtime == "swarm":
        yield FieldError(
            field,
            f"gvisor{default} cannot run on the swarm runtime: a Swarm service cannot choose its OCI runtime "
            "(use the local Docker runtime, or runc)",
        )
        return
    if runtime_classes is not None and GVISOR not in runtime_classes:
        yield FieldError(
            field,
            f"gvisor{default} needs gVisor's runsc registered with the Docker daemon as runtime "
            f"{settings.gvisor_runtime!r}, and the daemon has none (install it with scripts/setup-gvisor.sh; "
            "README: gVisor)",
        )
        return
    if parse_memory(spec.resources.memory) < GVISOR_MIN_MEMORY:
        yield FieldError(
            f"{prefix}resources.memory",
            f"under gvisor at least {GVISOR_MIN_MEMORY // (1024 * 1024)} MiB: gVisor's sandbox needs memory of "
            "its own (below 16 MiB it does not start)",
        )
    if spec.resources.pids > GVISOR_MAX_PIDS:
        yield FieldError(
            f"{prefix}resources.pids",
            f"under gvisor at most {GVISOR_MAX_PIDS}: each process inside the sandbox costs about ten host "
            "tasks, and the kernel's pids limit ends at 4194304",
        )


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


# --- mounts that another mount could redirect ---------------------------------------------------
#
# Docker resolves a bind mount's host path again at every start of a container, following symlinks.
# Whoever can change an entry of a directory that the path is looked up in can point it anywhere.
# Agents can change entries only below their read-write bind mounts, so the guarantee is structural:
# no directory that any agent's host path is looked up in lies inside any agent's read-write mount.
# Then no sequence of actions by agents can redirect a mount, and the check before every start
# (``mount_refusal`` plus this one) sees what Docker is about to mount.

MAX_SYMLINK_HOPS = 40  # the kernel's limit (ELOOP)


def resolve_lookups(path: str) -> tuple[str, tuple[str, ...]]:
    """Resolve ``path`` as the kernel does: its final host path, and every directory an entry was looked
    up in on the way (the parent of each component, the components of symlink targets included).
    Components that do not exist are taken literally (Docker creates a missing bind source)."""
    pending = [part for part in path.split("/") if part]
    current = "/"
    lookups: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        lookups.append(current)
        candidate = os.path.join(current, part)
        try:
            target = os.readlink(candidate)
        except OSError:  # not a link, or missing: an ordinary component
            current = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise OSError(f"too many levels of symbolic links in {path!r}")
        if target.startswith("/"):
            current = "/"
        pending[:0] = [p for p in target.split("/") if p]
    return current, tuple(dict.fromkeys(lookups))


@dataclass(frozen=True)
class ResolvedMount:
    """A bind mount with where its host path leads now; ``owner`` names it in messages."""

    owner: str
    mount: BindMount
    target: str
    lookups: tuple[str, ...]


def resolve_mounts(volumes: Sequence[str], owner: str = "") -> list[ResolvedMount]:
    resolved = []
    for i, volume in enumerate(volumes):
        mount = parse_volume(volume)
        try:
            target, lookups = resolve_lookups(mount.host_path)
        except OSError:
            target, lookups = mount.host_path, tuple(_ancestors(mount.host_path))
        resolved.append(ResolvedMount(f"{owner}volumes[{i}]", mount, target, lookups))
    return resolved


def _ancestors(path: str) -> Iterable[str]:
    while path != "/":
        path = os.path.dirname(path)
        yield path


def _redirections(reader: ResolvedMount, writers: Iterable[ResolvedMount]) -> Iterable[tuple[ResolvedMount, str]]:
    """Each of ``writers`` that contains a directory ``reader``'s host path is looked up in, with the
    first such directory."""
    for writer in writers:
        inside = next((d for d in reader.lookups if is_within(d, writer.target)), None)
        if inside is not None:
            yield writer, inside


def redirectable(
    mounts: Sequence[ResolvedMount], others: Sequence[ResolvedMount] = ()
) -> list[tuple[ResolvedMount, str]]:
    """``(mount, why)`` for each of ``mounts`` that a read-write mount could redirect (one of its lookup
    directories is inside a read-write mount, of this agent or of ``others``), and for each read-write
    one of ``mounts`` that could redirect one of ``others``."""
    found: list[tuple[ResolvedMount, str]] = []
    writable_others = [w for w in others if not w.mount.read_only]
    for mine in mounts:
        writers = [*(w for w in mounts if w is not mine and not w.mount.read_only), *writable_others]
        for writer, inside in _redirections(mine, writers):
            found.append(
                (
                    mine,
                    f"host path {mine.mount.host_path!r} is looked up in {inside}, inside {writer.owner} "
                    f"({writer.target}, read-write): whatever runs there could swap a path component for a "
                    "symlink and redirect this mount; mount the read-write directory itself, or keep the "
                    "two apart",
                )
            )
            break
        if mine.mount.read_only:
            continue
        for other, inside in ((o, d) for o in others for _, d in _redirections(o, [mine])):
            found.append(
                (
                    mine,
                    f"read-write host path {mine.mount.host_path!r} contains {inside}, where the host path of "
                    f"{other.owner} ({other.mount.host_path!r}) is looked up: whatever runs here could "
                    "redirect that mount; keep the two apart",
                )
            )
            break
    return found
