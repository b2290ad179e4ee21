"""Secret material at rest: the key file, AES-GCM sealing, a plain-text store sealed at its first start,
and ``parallax secrets rotate-key``. Real SQLite files; each test greps them for the planted values."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controller.admission.admit import admit, spec_defaults
from controller.config import Settings
from controller.model.secret import Secret
from controller.store.cipher import CipherError, SecretCipher
from controller.store.rotate import rotate
from controller.store.sqlite import SqliteStore

INLINE = "sk-inline-planted-7f3a91c2e4"
SECRET_VALUE = "sk-secret-planted-0b9d55aa17"
PARALLAX = str(Path(sys.executable).parent / "parallax")


def store_bytes(directory: Path) -> bytes:
    """Every byte of every file of the store (the database, its WAL, the lock...), but the key file."""
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != "secret.key")


def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "store" / "agents.db"))


def test_the_key_file_is_created_0600_and_seals_and_opens(tmp_path: Path):
    path = tmp_path / "keys" / "secret.key"
    cipher = SecretCipher.load(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealed = cipher.seal(SECRET_VALUE)
    assert SECRET_VALUE not in sealed and sealed.startswith(f"v1:{cipher.primary}:")
    assert cipher.seal(SECRET_VALUE) != sealed  # a fresh nonce every time
    again = SecretCipher.load(str(path))
    assert again.open(sealed) == SECRET_VALUE


def test_a_key_file_others_may_read_is_refused_by_name(tmp_path: Path):
    path = tmp_path / "secret.key"
    SecretCipher.load(str(path))
    path.chmod(0o644)
    with pytest.raises(CipherError, match=r"PARALLAX_SECRET_KEY_FILE .*secret.key has mode 0644.*chmod 600"):
        SecretCipher.load(str(path))
    path.chmod(0o600)
    path.write_text("not json")
    with pytest.raises(CipherError, match="is not a Parallax key file"):
        SecretCipher.load(str(path))


def test_a_changed_or_foreign_sealed_value_does_not_open(tmp_path: Path):
    cipher = SecretCipher.load(str(tmp_path / "a.key"))
    other = SecretCipher.load(str(tmp_path / "b.key"))
    sealed = cipher.seal(SECRET_VALUE)
    with pytest.raises(CipherError, match="does not hold"):
        other.open(sealed)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(CipherError, match="was changed"):
        cipher.open(tampered)


async def test_the_store_file_holds_no_env_value_or_secret_value(tmp_path: Path):
    s = settings(tmp_path)
    store = SqliteStore(s.store_path, spec_defaults(s))
    await store.open()
    await store.create(admit({"name": "a", "type": "claude", "env": {"API_KEY": INLINE}}, s)[0])
    await store.put_secret(Secret("anthropic", {"apiKey": SECRET_VALUE}), create=True)
    assert (await store.get("a")).spec.env["API_KEY"] == INLINE
    written = store_bytes(tmp_path / "store")
    await store.close()
    written += store_bytes(tmp_path / "store")
    assert INLINE.encode() not in written and SECRET_VALUE.encode() not in written
    reopened = SqliteStore(s.store_path, spec_defaults(s))
    await reopened.open()
    assert (await reopened.get("a")).spec.env["API_KEY"] == INLINE
    assert (await reopened.get_secret("anthropic")).data == {"apiKey": SECRET_VALUE}
    await reopened.close()


async def test_a_store_from_before_sealing_loads_and_is_sealed_at_first_start(tmp_path: Path):
    s = settings(tmp_path)
    store = SqliteStore(s.store_path, spec_defaults(s))
    await store.open()
    await store.create(admit({"name": "old", "type": "claude", "env": {"API_KEY": INLINE}}, s)[0])
    await store.close()
    # What an older controller wrote: the manifest with the env value in plain text, and no key file.
    conn = sqlite3.connect(s.store_path)
    manifest = json.loads(conn.execute("SELECT manifest FROM agents").fetchone()[0])
    manifest["spec"]["env"] = {"API_KEY": INLINE}
    conn.execute("UPDATE agents SET manifest = ?", (json.dumps(manifest),))
    conn.commit()
    conn.close()
    os.unlink(tmp_path / "store" / "secret.key")
    assert INLINE.encode() in store_bytes(tmp_path / "store")

    upgraded = SqliteStore(s.store_path, spec_defaults(s))
    await upgraded.open()
    assert (await upgraded.get("old")).spec.env["API_KEY"] == INLINE
    await upgraded.close()
    assert INLINE.encode() not in store_bytes(tmp_path / "store")
    assert stat.S_IMODE((tmp_path / "store" / "secret.key").stat().st_mode) == 0o600


async def test_rotate_key_reseals_everything_under_a_new_key_and_retires_the_old(tmp_path: Path):
    s = settings(tmp_path)
    store = SqliteStore(s.store_path, spec_defaults(s))
    await store.open()
    await store.create(admit({"name": "a", "type": "claude", "env": {"API_KEY": INLINE}}, s)[0])
    await store.put_secret(Secret("anthropic", {"apiKey": SECRET_VALUE}), create=True)
    await store.close()
    old = SecretCipher.load(s.secret_key_path).primary
    assert f"v1:{old}:".encode() in store_bytes(tmp_path / "store")

    retired, new = await rotate(s)

    assert retired == [old] and new != old
    ring = SecretCipher.load(s.secret_key_path)
    assert set(ring.keys) == {new} and ring.primary == new
    assert stat.S_IMODE(Path(s.secret_key_path).stat().st_mode) == 0o600
    stored = store_bytes(tmp_path / "store")
    assert f"v1:{old}:".encode() not in stored and f"v1:{new}:".encode() in stored
    reopened = SqliteStore(s.store_path, spec_defaults(s))
    await reopened.open()
    assert (await reopened.get("a")).spec.env["API_KEY"] == INLINE
    assert (await reopened.get_secret("anthropic")).data["apiKey"] == SECRET_VALUE
    await reopened.close()


def test_rotate_key_command_refuses_a_store_in_use_and_keeps_every_value_readable(tmp_path: Path):
    """The documented command; a store a controller holds is refused, and the key file it grew still
    opens everything (the old key stays until the rotation is done)."""
    s = settings(tmp_path)
    env = {**os.environ, "PARALLAX_STORE": s.store_path}
    first = subprocess.run([PARALLAX, "secrets", "rotate-key"], env=env, capture_output=True, text=True)
    assert first.returncode != 0 and "does not exist" in first.stderr  # no key file yet: nothing to rotate
    SecretCipher.load(s.secret_key_path)
    done = subprocess.run([PARALLAX, "secrets", "rotate-key"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "store sealed with key" in done.stdout
    lock = os.open(s.store_path + ".lock", os.O_RDWR)
    import fcntl

    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        busy = subprocess.run([PARALLAX, "secrets", "rotate-key"], env=env, capture_output=True, text=True)
    finally:
        os.close(lock)
    assert busy.returncode != 0 and "in use by another controller" in busy.stderr
    assert len(SecretCipher.load(s.secret_key_path).keys) == 2  # interrupted: old and new both kept
