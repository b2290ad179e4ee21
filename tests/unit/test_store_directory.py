"""The store's directory and files are private: a directory of the store's own is made 0700, a shared one
is never chmod-ed and is refused when others could write to it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.admission.admit import spec_defaults
from controller.config import Settings
from controller.store.interface import StoreUnavailable
from controller.store.sqlite import SqliteStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def open_and_close(path: Path) -> None:
    store = SqliteStore(str(path), spec_defaults(Settings(store_path=str(path))))
    await store.open()
    await store.close()


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


async def test_a_new_directory_is_created_0700_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    await open_and_close(tmp_path / "new" / "agents.db")
    assert mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "new" / "agents.db") == 0o600


async def test_an_existing_directory_of_the_stores_own_is_tightened_to_0700(tmp_path: Path) -> None:
    directory = tmp_path / "parallax"
    directory.mkdir()
    directory.chmod(0o755)  # e.g. made by `mkdir -p /var/lib/parallax`, or by an older version
    await open_and_close(directory / "agents.db")
    assert mode(directory) == 0o700

    directory.chmod(0o755)
    (directory / "agents.db").chmod(0o644)
    (directory / "volumes").mkdir()
    await open_and_close(directory / "agents.db")
    assert mode(directory) == 0o700
    assert mode(directory / "agents.db") == 0o600


async def test_a_shared_directory_is_used_as_it_is_when_only_its_owner_can_write(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("")
    home.chmod(0o755)
    await open_and_close(home / "agents.db")
    assert mode(home) == 0o755, "a directory holding other files is not the store's to chmod"
    assert mode(home / "agents.db") == 0o600


@pytest.mark.parametrize(("directory_mode", "who"), [(0o1777, "anyone"), (0o775, "its group")])
async def test_a_shared_directory_others_can_write_is_refused_and_left_alone(
    tmp_path: Path, directory_mode: int, who: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses-file").write_text("")
    shared.chmod(directory_mode)  # /tmp, or a team's group-writable folder
    with pytest.raises(StoreUnavailable, match=f"is writable by {who}") as refused:
        await open_and_close(shared / "agents.db")
    assert f"{shared}/parallax/agents.db" in str(refused.value), "the message says what to do instead"
    assert mode(shared) == directory_mode
    assert not (shared / "agents.db").exists() and not (shared / "agents.db.lock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
async def test_a_directory_belonging_to_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 54321, 54321)
    with pytest.raises(StoreUnavailable, match="belongs to uid 54321"):
        await open_and_close(theirs / "agents.db")
    assert mode(theirs) == 0o755


async def test_a_store_path_whose_directory_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnavailable, match="is not a directory"):
        await open_and_close(tmp_path / "file" / "agents.db")
