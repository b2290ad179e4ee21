"""Secret material at rest: AES-256-GCM (``cryptography``'s AEAD) under keys kept in a key file.

Every store seals what is secret before it reaches the disk or the database (a Secret's values, an
agent's inline env values) and opens it when it loads; the records in memory hold plain text. A sealed
value is ``v1:<key id>:<base64 of nonce + ciphertext + tag>``, so each names the key it was sealed
with and ``parallax secrets rotate-key`` can re-seal everything under a new key while the old one still
opens whatever it has not reached yet.

The key file (``PARALLAX_SECRET_KEY_FILE``, default ``secret.key`` beside the SQLite store) is JSON:
``{"primary": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}``. It is created 0600 at the first
start. A key file that anyone but its owner may read or write, or that cannot be read or parsed, stops
the start with a message naming it: a controller that made up a new key would leave every stored secret
unreadable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "v1"
NONCE_BYTES = 12
ASSOCIATED = b"parallax-secret-v1"
"""Authenticated with every value: a sealed value of another program's is not one of ours."""
SETTING = "PARALLAX_SECRET_KEY_FILE"


class CipherError(Exception):
    """The key file cannot be used, or a sealed value cannot be opened (a key that is not in the file,
    a value that was changed): the message names the file or the key, never a value."""


@dataclass
class SecretCipher:
    """The key ring of a key file: seals with the primary key, opens with any key it holds."""

    keys: dict[str, bytes]
    primary: str
    path: str | None = None
    _aead: dict[str, AESGCM] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.primary not in self.keys:
            raise CipherError(f"{self._where()}: the primary key {self.primary!r} is not among its keys")
        self._aead = {kid: AESGCM(key) for kid, key in self.keys.items()}

    def _where(self) -> str:
        return f"{SETTING} {self.path}" if self.path else "the secret key ring"

    @classmethod
    def generate(cls, path: str | None = None) -> SecretCipher:
        kid = secrets.token_hex(4)
        return cls({kid: AESGCM.generate_key(bit_length=256)}, kid, path)

    def seal(self, plain: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.primary].encrypt(nonce, plain.encode(), ASSOCIATED)
        return f"{FORMAT}:{self.primary}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, token: str) -> str:
        version, _, rest = token.partition(":")
        kid, _, body = rest.partition(":")
        if version != FORMAT or not kid or not body:
            raise CipherError("a stored secret is not a sealed value this controller knows")
        aead = self._aead.get(kid)
        if aead is None:
            raise CipherError(
                f"a stored secret is sealed with key {kid!r}, which {self._where()} does not hold "
                "(a different key file, or one rotated away)"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], ASSOCIATED).decode()
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise CipherError(f"a stored secret sealed with key {kid!r} does not open: it was changed") from exc

    def sealed_with(self, token: str) -> str:
        """The key id a sealed value names."""
        return token.split(":", 2)[1] if token.count(":") >= 2 else ""

    # -- the key file ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str, *, create: bool = True) -> SecretCipher:
        """The key ring of ``path``; created (0600, with one new key) when missing and ``create``."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if not create:
                raise CipherError(f"{SETTING} {path} does not exist") from None
            cipher = cls.generate(path)
            try:
                cipher.save(exclusive=True)
            except FileExistsError:  # made meanwhile by another process: use that one
                return cls.load(path, create=False)
            return cipher
        except OSError as exc:
            raise CipherError(f"{SETTING} {path} cannot be read: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CipherError(f"{SETTING} {path} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise CipherError(
                    f"{SETTING} {path} has mode {mode:04o}: others may read the key that opens every stored "
                    f"secret; make it 0600 (chmod 600 {path})"
                )
            if info.st_uid != os.geteuid():
                raise CipherError(f"{SETTING} {path} belongs to uid {info.st_uid}, not to this user")
            with os.fdopen(fd, "rb") as file:
                fd = -1
                text = file.read(1 << 16)
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            data = json.loads(text)
            keys = {str(kid): base64.b64decode(key, validate=True) for kid, key in data["keys"].items()}
            primary = str(data["primary"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise CipherError(f"{SETTING} {path} is not a Parallax key file") from exc
        if any(len(key) != 32 for key in keys.values()):
            raise CipherError(f"{SETTING} {path}: every key must be 32 bytes (AES-256)")
        return cls(keys, primary, path)

    def save(self, *, exclusive: bool = False) -> None:
        """Write the key file (0600): at once when new (``exclusive``), else through a temporary file
        renamed over it, so a crash leaves the old file or the new one, never half of one."""
        assert self.path is not None
        text = json.dumps(
            {"primary": self.primary, "keys": {kid: base64.b64encode(k).decode() for kid, k in self.keys.items()}},
            indent=1,
        ).encode()
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        target = self.path if exclusive else f"{self.path}.tmp-{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        fd = os.open(target, flags, 0o600)
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not exclusive:
            try:
                os.replace(target, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(target)
                raise

    def with_new_primary(self) -> SecretCipher:
        """This ring plus a new key that seals from now on (the old ones still open)."""
        kid = secrets.token_hex(4)
        while kid in self.keys:
            kid = secrets.token_hex(4)
        return SecretCipher({**self.keys, kid: AESGCM.generate_key(bit_length=256)}, kid, self.path)

    def only_primary(self) -> SecretCipher:
        return SecretCipher({self.primary: self.keys[self.primary]}, self.primary, self.path)
