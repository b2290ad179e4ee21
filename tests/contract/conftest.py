"""The stores the contract suite runs against. A new store passes ``test_store_contract.py`` unchanged:
write a factory (an opened, empty store of that kind, its subscribers bounded by ``buffer``) and add it
to ``STORES``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from controller.admission.admit import spec_defaults
from controller.config import Settings
from controller.model.agent import SpecDefaults
from controller.store.cipher import SecretCipher
from controller.store.interface import Store
from controller.store.url import open_store
from tests.postgres import drop_test_schemas_now, fresh_url

StoreFactory = Callable[[Path, SpecDefaults, int], Awaitable[Store]]
"""``factory(directory, defaults, buffer)``: a new, empty, opened store (``directory`` is the test's own)."""


async def sqlite_store(directory: Path, defaults: SpecDefaults, buffer: int) -> Store:
    return await open_store(f"sqlite://{directory}/agents.db", defaults, buffer=buffer)


async def postgres_store(directory: Path, defaults: SpecDefaults, buffer: int) -> Store:
    """A store in a schema of its own in the test cluster (scripts/setup-postgres.sh)."""
    cipher = SecretCipher.load(str(directory / "secret.key"))
    return await open_store(await fresh_url(), defaults, buffer=buffer, cipher=cipher)


STORES = [
    pytest.param(sqlite_store, id="sqlite"),
    pytest.param(postgres_store, id="postgresql"),
]


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schemas() -> object:
    yield
    drop_test_schemas_now()


@pytest.fixture(params=STORES)
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    factory: StoreFactory = request.param
    return factory


@pytest.fixture
async def make_store(store_factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Store]]]:
    """``await make_store(buffer=n)``: another store of the kind under test (closed at the end)."""
    opened: list[Store] = []

    async def make(*, buffer: int = 4096) -> Store:
        directory = tmp_path / f"store-{len(opened)}"
        directory.mkdir(mode=0o700)
        store = await store_factory(directory, spec_defaults(Settings(store_path=str(directory / "agents.db"))), buffer)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[Store]]) -> Store:
    return await make_store()
