"""The files API's pure rules: request paths, the streaming tar reader, the upload guard, capped output."""

from __future__ import annotations

import io
import tarfile

import pytest

from controller.model.agent_files import (
    CappedOutput,
    PathRefused,
    TarReader,
    TarRefused,
    UploadGuard,
    requested_path,
)


def test_request_paths_are_absolute_without_dot_dot_and_inside_the_workspace():
    assert requested_path("/workspace//a/./b/") == "/workspace/a/b"
    for raw, status in (
        ("", 400),
        ("a/b", 400),
        ("/workspace/../etc", 400),
        ("/etc/passwd", 403),
        ("/proc/1/environ", 403),
    ):
        with pytest.raises(PathRefused) as caught:
            requested_path(raw)
        assert caught.value.status == status, raw


def _tar(names: list[str], long_name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in [*names, long_name]:
            info = tarfile.TarInfo(name)
            info.size = 600
            tar.addfile(info, io.BytesIO(b"y" * 600))
    return buffer.getvalue()


def test_reader_yields_members_and_data_fed_a_byte_at_a_time_and_rewrites_owners():
    data = _tar(["a", "b"], "d/" + "x" * 200)
    reader = TarReader(owner=(1000, 1000), relay=True)
    items = []
    out = b""
    for i in range(0, len(data), 7):
        items += reader.feed(data[i : i + 7])
        out += reader.take_output()
    names = [m.name for m in items if not isinstance(m, bytes)]
    assert names == ["a", "b", "d/" + "x" * 200] and reader.ended
    assert sum(len(p) for p in items if isinstance(p, bytes)) == 1800
    with tarfile.open(fileobj=io.BytesIO(out + reader.take_output())) as tar:
        assert {(m.name[:3], m.uid, m.gid) for m in tar.getmembers()} >= {("a", 1000, 1000), ("b", 1000, 1000)}


def _member(name: str, kind: str = "file", link: str = ""):
    from controller.model.agent_files import Member

    return Member(name, kind, 0, 0o644, 0, link)


def test_guard_refuses_escapes_and_names_parents_to_check():
    guard = UploadGuard()
    assert guard.check(_member("src/a.py")) == ["src"]
    assert guard.check(_member("src/b.py")) == []
    guard.check(_member("l", "symlink", "src/a.py"))
    for bad in (
        _member("/etc/x"),
        _member("../x"),
        _member("l/x"),
        _member("m", "symlink", "/etc"),
        _member("m", "symlink", "../../x"),
        _member("h", "hardlink", "nowhere"),
        _member("dev", "other"),
    ):
        with pytest.raises(TarRefused):
            guard.check(bad)


def test_capped_output_keeps_the_cap_and_counts_the_rest():
    out = CappedOutput(5)
    out.add(b"abc")
    out.add(b"defg")
    assert bytes(out.data) == b"abcde" and out.dropped == 2 and out.truncated


def test_member_offsets_point_at_their_first_header_block_in_the_output():
    data = _tar(["a"], "b/" + "z" * 150)  # the second member has a GNU long-name record before its header
    reader = TarReader(relay=True)
    members = [m for m in reader.feed(data) if not isinstance(m, bytes)]
    out = reader.take_output()
    assert out == data
    assert members[0].offset == 0
    assert out[members[1].offset : members[1].offset + 13] == b"././@LongLink"
