"""Bind-mount strings (``/host/data:/data:ro``): syntax and the paths that are never mountable."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Mounting any of these hands an agent the host: refused whatever else is configured.
FORBIDDEN_HOST_PATHS = (
    "/",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/docker",
)


class MountError(ValueError):
    """A volume string that is malformed or not allowed."""


@dataclass(frozen=True)
class BindMount:
    host_path: str
    container_path: str
    read_only: bool

    def docker_bind(self) -> str:
        return f"{self.host_path}:{self.container_path}:{'ro' if self.read_only else 'rw'}"


def parse_volume(value: str) -> BindMount:
    """Parse ``HOST:CONTAINER[:ro|rw]``; both paths must be absolute."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise MountError(f"volume {value!r} must look like /host/path:/container/path[:ro|rw]")
    host, container = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise MountError(f"volume {value!r}: mode must be ro or rw, not {mode!r}")
    if not host.startswith("/"):
        raise MountError(f"volume {value!r}: host path must be absolute")
    if not container.startswith("/") or os.path.normpath(container) == "/":
        raise MountError(f"volume {value!r}: container path must be an absolute path other than /")
    return BindMount(os.path.normpath(host), os.path.normpath(container), mode == "ro")


def check_host_path(mount: BindMount, *, docker_socket: str, protected: tuple[str, ...] = ()) -> None:
    """Refuse host paths that expose the host, after resolving ``..`` and symlinks."""
    resolved = os.path.realpath(mount.host_path)
    socket = os.path.realpath(docker_socket)
    for candidate in {mount.host_path, resolved}:
        if (
            candidate == "/"
            or candidate == socket
            or any(
                candidate == path or candidate.startswith(path + "/") or path.startswith(candidate.rstrip("/") + "/")
                for path in FORBIDDEN_HOST_PATHS[1:]
            )
        ):
            raise MountError(f"host path {mount.host_path!r} may not be mounted (it exposes the host)")
        if socket.startswith(candidate.rstrip("/") + "/"):
            raise MountError(f"host path {mount.host_path!r} may not be mounted (it contains the Docker socket)")
        for path in protected:
            path = os.path.realpath(path)
            if (
                candidate == path
                or candidate.startswith(path.rstrip("/") + "/")
                or path.startswith(candidate.rstrip("/") + "/")
            ):
                raise MountError(f"host path {mount.host_path!r} may not be mounted (it holds the controller's store)")
