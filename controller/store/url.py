"""The store ``PARALLAX_STORE`` names, opened: the one place that knows which stores there are.

``sqlite:///abs/path/agents.db``, ``sqlite:relative/path`` or a plain file path: the embedded SQLite
store. Anything else is refused when the settings are read (``controller.config.parse_store_url``).
A new store adds its scheme to ``config.STORE_SCHEMES`` and a branch here, and passes
``tests/contract/test_store_contract.py``.
"""

from __future__ import annotations

from controller.config import ConfigError, parse_store_url
from controller.model.agent import SpecDefaults
from controller.store.interface import DEFAULT_SUBSCRIBER_BUFFER, Store
from controller.store.sqlite import SqliteStore


async def open_store(url: str, defaults: SpecDefaults, *, buffer: int = DEFAULT_SUBSCRIBER_BUFFER) -> Store:
    """The store ``url`` names, opened, its subscribers bounded by ``buffer`` (``PARALLAX_WATCH_BUFFER``).
    ``ConfigError`` (naming ``PARALLAX_STORE``) for a URL no store takes; ``StoreUnavailable`` when the
    store cannot be opened."""
    location = parse_store_url(url)
    if location.scheme != "sqlite":  # parse_store_url knows no other yet
        raise ConfigError(f"PARALLAX_STORE: no store opens {location.scheme} URLs")
    store = SqliteStore(location.path, defaults, buffer=buffer)
    await store.open()
    return store
