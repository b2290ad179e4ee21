"""Bind-mount strings (``/host/data:/data:ro``): their syntax, and host paths compared as paths.

What may be mounted is decided in ``controller.admission.policy``; this module only parses and compares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
    """Parse ``HOST:CONTAINER[:ro|rw]``; both paths must be absolute. No mode means ``rw`` (Docker's default)."""
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
    if "\x00" in value:
        raise MountError(f"volume {value!r}: paths may not contain NUL")
    return BindMount(_normpath(host), _normpath(container), mode == "ro")


def _normpath(path: str) -> str:
    # POSIX keeps a leading "//"; Docker (and the kernel) treat it as "/".
    return "/" + os.path.normpath(path).lstrip("/")


def is_within(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (both absolute and normalised)."""
    return path == root or root == "/" or path.startswith(root.rstrip("/") + "/")


def overlaps(path: str, other: str) -> bool:
    """Mounting ``path`` would expose ``other``, or ``path`` lies inside ``other``."""
    return is_within(path, other) or is_within(other, path)
