"""``parallax secrets rotate-key``: seal everything in the store under a new key, then retire the old.

1. A new key is added to the key file as its primary one (the old keys stay in it), atomically.
2. The store is opened with that key ring: opening seals again everything not sealed with the primary
   key (``controller.store.sqlite._reseal``, ``PostgresStore._reseal``), in one transaction.
3. Only then are the old keys removed from the key file.

A rotation stopped between the steps leaves a key file that still opens every value; running it again
finishes it. No controller may use the store meanwhile (a SQLite store's lock says so; PostgreSQL
controllers must be stopped: each reads the key file only when it starts).
"""

from __future__ import annotations

from controller.admission.admit import spec_defaults
from controller.config import Settings
from controller.store.cipher import CipherError, SecretCipher
from controller.store.rules import StoreUnavailable
from controller.store.url import open_store


async def rotate(settings: Settings) -> tuple[list[str], str]:
    """Rotate the key of the store ``settings`` names; the retired key ids and the new one."""
    path = settings.secret_key_path
    try:
        ring = SecretCipher.load(path, create=False).with_new_primary()
        ring.save()
    except CipherError as exc:
        raise StoreUnavailable(str(exc)) from exc
    except OSError as exc:
        raise StoreUnavailable(f"PARALLAX_SECRET_KEY_FILE {path} cannot be written: {exc.strerror}") from exc
    store = await open_store(settings.store, spec_defaults(settings), cipher=ring)
    await store.close()
    retired = sorted(kid for kid in ring.keys if kid != ring.primary)
    ring.only_primary().save()
    return retired, ring.primary
