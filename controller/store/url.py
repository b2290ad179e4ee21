"""The store ``PARALLAX_STORE`` names, opened: the one place that knows which stores there are.

``sqlite:///abs/path/agents.db``, ``sqlite:relative/path`` or a plain file path: the embedded SQLite
store. ``postgresql://user:password@host:port/database``: the PostgreSQL store, which several
controllers may share (one leads: ``leader_election``). Anything else is refused when the settings are
read (``controller.config.parse_store_url``). A new store adds its scheme to ``config.STORE_SCHEMES``
and a branch here, and passes ``tests/contract/test_store_contract.py``.
"""

from __future__ import annotations

from controller.config import ConfigError, Settings, parse_store_url
from controller.model.agent import SpecDefaults
from controller.store.cipher import SecretCipher
from controller.store.interface import DEFAULT_SUBSCRIBER_BUFFER, Store
from controller.store.lease import AlwaysLeader, Leadership, LeaseElection
from controller.store.postgres import PostgresStore
from controller.store.sqlite import SqliteStore


async def open_store(
    url: str,
    defaults: SpecDefaults,
    *,
    buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
    cipher: SecretCipher | None = None,
) -> Store:
    """The store ``url`` names, opened, its subscribers bounded by ``buffer`` (``PARALLAX_WATCH_BUFFER``),
    sealing secret material with ``cipher`` (None: the key file beside the SQLite store, or the default one).
    ``ConfigError`` (naming ``PARALLAX_STORE``) for a URL no store takes; ``StoreUnavailable`` when the
    store cannot be opened."""
    location = parse_store_url(url)
    store: Store
    if location.scheme == "sqlite":
        store = SqliteStore(location.path, defaults, buffer=buffer, cipher=cipher)
    elif location.scheme == "postgresql":
        store = PostgresStore(location.dsn, defaults, buffer=buffer, cipher=cipher)
    else:  # parse_store_url knows no other
        raise ConfigError(f"PARALLAX_STORE: no store opens {location.scheme} URLs")
    await store.open()
    return store


def leader_election(store: Store, settings: Settings, address: str) -> Leadership:
    """Who may run the controller over ``store``: a store only this process can open (SQLite's lock file)
    has it always lead; a shared one (PostgreSQL) elects one leader through a lease in the database.
    ``address``: where this process's API answers (shown to whoever asks who leads)."""
    if isinstance(store, PostgresStore):
        return LeaseElection(store, settings, address)
    return AlwaysLeader(settings, address)
