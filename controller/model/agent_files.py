"""Paths and tar streams of the files API, as pure logic: which paths of an agent may be read or written,
what an engine's file mode means, and a streaming tar reader that checks an upload member by member.

Nothing here does I/O: ``api.server.routes_files`` walks a path through the engine's stat calls, and asks
this module what each answer allows.
"""

from __future__ import annotations

import posixpath
import tarfile
import time
from dataclasses import dataclass, field

from controller.model.agent import AGENT_HOME, WORKSPACE_PATH

TMPFS_PATHS = ("/tmp", AGENT_HOME)
"""The agent's in-memory mounts. Docker's archive API does not see them (it reads the container's root
filesystem under them), so they are read and written by commands run as the agent's user."""

FILE_ROOTS = (WORKSPACE_PATH, *TMPFS_PATHS)
"""Where the files API reads and writes: the agent's writable mounts (its workspace volume, /tmp, home)."""

MAX_PATH_BYTES = 4096

# Go's os.FileMode type bits, as Docker's X-Docker-Container-Path-Stat reports them.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_DEVICE = 1 << 26
_GO_PIPE = 1 << 25
_GO_SOCKET = 1 << 24
_GO_CHAR_DEVICE = 1 << 21
_GO_IRREGULAR = 1 << 19


class PathRefused(ValueError):
    """A path the files API will not touch; ``status`` is the HTTP status it is answered with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def requested_path(raw: str | None) -> str:
    """The ``path`` query parameter as an absolute path inside the file roots, or ``PathRefused``: it must
    be absolute, without ``..``, NUL or empty components' tricks, and inside ``FILE_ROOTS``."""
    if raw is None or raw == "":
        raise PathRefused("path is required (an absolute path under /workspace)", 400)
    if "\x00" in raw or len(raw.encode(errors="surrogatepass")) > MAX_PATH_BYTES:
        raise PathRefused("path may not contain NUL or be longer than 4096 bytes", 400)
    if not raw.startswith("/"):
        raise PathRefused(f"path {raw[:80]!r} must be absolute (under /workspace)", 400)
    parts = raw.split("/")
    if ".." in parts:
        raise PathRefused(f"path {raw[:80]!r} may not contain '..'", 400)
    path = "/" + "/".join(p for p in parts if p not in ("", "."))
    return confined(path)


def confined(path: str) -> str:
    """``path`` (absolute, normalised, symlinks resolved) if it lies inside the file roots, else
    ``PathRefused`` saying why."""
    if any(within(path, root) for root in FILE_ROOTS):
        return path
    raise PathRefused(
        f"{path[:80]} is outside the agent's writable mounts (/workspace, /tmp, {AGENT_HOME}): the root "
        "filesystem is read-only, and nothing else of the container is served",
        403,
    )


def on_tmpfs(path: str) -> bool:
    return any(within(path, tmpfs) for tmpfs in TMPFS_PATHS)


def stat_line_mode(raw_hex: str) -> int:
    """``stat -c %f``'s raw mode (hex) as Go file mode bits, the form ``kind_of`` reads."""
    mode = int(raw_hex, 16)
    kind = mode & 0o170000
    bits = mode & 0o7777
    if kind == 0o040000:
        return _GO_DIR | bits
    if kind == 0o120000:
        return _GO_SYMLINK | bits
    if kind == 0o100000:
        return bits
    return _GO_DEVICE | bits


def components(path: str) -> list[str]:
    """``/workspace/a/b`` -> ``["/workspace", "/workspace/a", "/workspace/a/b"]`` (below the root only)."""
    root = max((r for r in FILE_ROOTS if within(path, r)), key=len)
    found = [root]
    rest = path[len(root) :].strip("/")
    for part in rest.split("/") if rest else []:
        found.append(posixpath.join(found[-1], part))
    return found


def kind_of(mode: int) -> str:
    """``file``, ``directory``, ``symlink`` or ``other`` (devices, pipes, sockets), from a Go file mode."""
    if mode & _GO_DIR:
        return "directory"
    if mode & _GO_SYMLINK:
        return "symlink"
    if mode & (_GO_DEVICE | _GO_PIPE | _GO_SOCKET | _GO_CHAR_DEVICE | _GO_IRREGULAR):
        return "other"
    return "file"


def permission_bits(mode: int) -> int:
    return mode & 0o7777


def tar_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "directory"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.isreg():
        return "file"
    return "other"


def file_header(name: str, size: int, owner: tuple[int, int] = (0, 0), mode: int = 0o644) -> bytes:
    """The tar header block(s) of one regular file ``name`` of ``size`` bytes owned by ``owner`` (what a
    single-file PUT is wrapped in before the engine extracts it)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.uid, info.gid = owner
    info.mtime = int(time.time())
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def directory_header(name: str, owner: tuple[int, int]) -> bytes:
    """The tar header of directory ``name`` owned by ``owner`` (a parent an upload leaves implied, which
    the engine would otherwise make owned by root)."""
    info = tarfile.TarInfo(name.rstrip("/") + "/")
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
    info.uid, info.gid = owner
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


END_OF_ARCHIVE = b"\0" * (2 * tarfile.BLOCKSIZE)


class TarRefused(ValueError):
    """A tar stream that is malformed or holds a member the files API will not write."""


@dataclass
class Member:
    name: str
    kind: str
    size: int
    mode: int
    mtime: int
    link: str = ""
    offset: int = 0
    """Where its first header block begins in the reader's output (``take_output``) of the same feed."""


@dataclass
class TarReader:
    """A tar stream read as it arrives: ``feed(chunk)`` returns what the chunk completed, as
    ``Member`` items (headers, GNU long names and pax records applied) and ``bytes`` items (the data
    of the member before them). ``ended`` once the two zero blocks have been read."""

    _buffer: bytearray = field(default_factory=bytearray)
    _remaining: int = 0
    _pad: int = 0
    _meta_kind: bytes | None = None
    _meta: bytearray = field(default_factory=bytearray)
    _long_name: str | None = None
    _long_link: str | None = None
    _pax: dict[str, str] = field(default_factory=dict)
    _zero_blocks: int = 0
    ended: bool = False
    _start: int | None = None
    owner: tuple[int, int] | None = None
    """When set, every header's uid and gid are set to it in what is passed on."""
    relay: bool = False
    """Keep what was read to be passed on (``take_output``)."""
    _output: bytearray = field(default_factory=bytearray)

    def take_output(self) -> bytes:
        """The bytes consumed since the last call, headers rewritten to ``owner`` (after the end of the
        archive, the rest as it came)."""
        if self.ended and self._buffer:
            self._output += self._buffer
            self._buffer.clear()
        out = bytes(self._output)
        self._output.clear()
        return out

    def feed(self, chunk: bytes) -> list[Member | bytes]:
        out: list[Member | bytes] = []
        keep = self.relay or self.owner is not None
        if not self._buffer and self._remaining and self._meta_kind is None and not self.ended:
            # the common case of a big member: its data passed on without going through the buffer
            piece = chunk[: self._remaining]
            self._remaining -= len(piece)
            if piece:
                out.append(piece)
            if keep:
                self._output += piece
            chunk = chunk[len(piece) :]
        self._buffer += chunk
        while self._buffer and not self.ended:
            if self._remaining:
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                if keep:
                    self._output += piece
                self._remaining -= len(piece)
                if self._meta_kind is not None:
                    self._meta += piece
                    if not self._remaining:
                        self._apply_meta()
                elif piece:
                    out.append(piece)
                continue
            if self._pad:
                dropped = min(self._pad, len(self._buffer))
                if keep:
                    self._output += self._buffer[:dropped]
                del self._buffer[:dropped]
                self._pad -= dropped
                continue
            if len(self._buffer) < tarfile.BLOCKSIZE:
                break
            block = bytes(self._buffer[: tarfile.BLOCKSIZE])
            del self._buffer[: tarfile.BLOCKSIZE]
            if self._start is None:
                self._start = len(self._output)
            member = self._header(block)
            if keep:
                self._output += _owned(block, self.owner) if any(block) else block
            if member is not None:
                member.offset, self._start = self._start, None
                out.append(member)
            elif self._meta_kind is None and not (self._pax or self._long_name or self._long_link):
                self._start = None  # a zero block, or a global record: no member begins here
        return out

    def _header(self, block: bytes) -> Member | None:
        if block == b"\0" * tarfile.BLOCKSIZE:
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self.ended = True
            return None
        self._zero_blocks = 0
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.TarError as exc:
            raise TarRefused(f"not a tar stream: {exc}") from exc
        size = info.size
        self._pad = -size % tarfile.BLOCKSIZE
        self._remaining = size
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE):
            if size > 1 << 20:
                raise TarRefused("a tar metadata record is larger than 1 MiB")
            self._meta_kind, self._meta = info.type, bytearray()
            if not size:
                self._apply_meta()
            return None
        if info.type == tarfile.XGLTYPE:
            self._meta_kind, self._meta = info.type, bytearray()
            if not size:
                self._apply_meta()
            return None
        name = self._pax.pop("path", None) or self._long_name or info.name
        link = self._pax.pop("linkpath", None) or self._long_link or info.linkname
        if "size" in self._pax:
            try:
                size = int(self._pax.pop("size"))
            except ValueError as exc:
                raise TarRefused("a pax size record is not a number") from exc
            self._remaining, self._pad = size, -size % tarfile.BLOCKSIZE
        self._long_name = self._long_link = None
        self._pax.clear()
        info.name, info.linkname = name, link
        return Member(name, tar_kind(info), size, info.mode, int(info.mtime), link)

    def _apply_meta(self) -> None:
        data, kind = bytes(self._meta), self._meta_kind
        self._meta_kind, self._meta = None, bytearray()
        if kind == tarfile.GNUTYPE_LONGNAME:
            self._long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == tarfile.GNUTYPE_LONGLINK:
            self._long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == tarfile.XHDTYPE:
            self._pax.update(_pax_records(data))


def _owned(block: bytes, owner: tuple[int, int] | None) -> bytes:
    """A ustar header block with its uid and gid fields set to ``owner`` and its checksum redone."""
    if owner is None:
        return block
    header = bytearray(block)
    header[108:116] = b"%07o\0" % owner[0]
    header[116:124] = b"%07o\0" % owner[1]
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records; malformed ones are a ``TarRefused``."""
    found: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            break
        try:
            length = int(data[position:space])
        except ValueError as exc:
            raise TarRefused("a pax header record is malformed") from exc
        if length <= 0:
            raise TarRefused("a pax header record is malformed")
        record = data[space + 1 : position + length - 1]
        key, _, value = record.partition(b"=")
        found[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return found


def member_path(name: str) -> str:
    """A tar member's name as a relative, normalised path, or ``TarRefused`` (absolute, ``..``, NUL)."""
    if "\x00" in name:
        raise TarRefused(f"member {name[:80]!r} has a NUL in its name")
    if name.startswith("/"):
        raise TarRefused(f"member {name[:80]!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TarRefused(f"member {name[:80]!r} climbs out with '..'")
    return "/".join(parts)


class UploadGuard:
    """Checks an uploaded tar member by member before its bytes reach the engine: only regular files,
    directories, and links that stay inside the archive's own tree (no absolute or ``..``-escaping
    symlink targets, hard links only to earlier members); no devices, fifos or sockets; no member below a
    symlink of the same archive. ``parents_to_check`` names directories that already exist outside the
    archive and must be checked (they may be symlinks the agent planted)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.links: set[str] = set()
        self.dirs: set[str] = {""}

    def check(self, member: Member) -> list[str]:
        """The member's relative parent directories that this archive did not make (to be checked by the
        caller against the engine); ``TarRefused`` for a member that may not be written."""
        path = member_path(member.name)
        if member.kind == "other":
            raise TarRefused(
                f"member {member.name[:80]!r} is a device, fifo or socket; only files, directories and links"
            )
        parents = _parents(path)
        for parent in parents:
            if parent in self.links:
                raise TarRefused(f"member {member.name[:80]!r} lies below a symlink of the same archive")
        if member.kind == "symlink":
            target = member.link
            if not target or target.startswith("/"):
                raise TarRefused(f"symlink {member.name[:80]!r} points to an absolute path ({target[:80]!r})")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if resolved == ".." or resolved.startswith("../"):
                raise TarRefused(f"symlink {member.name[:80]!r} points out of the upload ({target[:80]!r})")
            self.links.add(path)
        if member.kind == "hardlink":
            target = member_path(member.link)
            if target not in self.seen:
                raise TarRefused(
                    f"hard link {member.name[:80]!r} points to {member.link[:80]!r}, not an earlier member"
                )
        unchecked = [p for p in parents if p not in self.dirs]
        self.dirs.update(parents)
        if member.kind == "directory":
            self.dirs.add(path)
        self.seen.add(path)
        return unchecked


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class CappedOutput:
    """One output stream of an exec kept up to ``cap`` bytes; what comes after is counted, not kept."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    @property
    def truncated(self) -> bool:
        return self.dropped > 0
