"""PARALLAX_STORE is a URL (or a plain path, as before): sqlite:///abs/path, sqlite:relative/path; any
other store is refused at start naming the setting, and a password in the URL is never repeated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli.main import main
from controller.admission.admit import spec_defaults
from controller.admission.policy import default_volume_root, store_files
from controller.config import ConfigError, Settings, parse_store_url
from controller.store.sqlite import SqliteStore
from controller.store.url import open_store


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/var/lib/parallax/agents.db", "/var/lib/parallax/agents.db"),  # a plain path, as before
        ("data/agents.db", "data/agents.db"),
        ("./odd:name.db", "./odd:name.db"),
        ("sqlite:///var/lib/parallax/agents.db", "/var/lib/parallax/agents.db"),
        ("SQLITE:///var/lib/parallax/agents.db", "/var/lib/parallax/agents.db"),
        ("sqlite:/var/lib/parallax/agents.db", "/var/lib/parallax/agents.db"),
        ("sqlite:data/agents.db", "data/agents.db"),
        ("sqlite:///srv/my%20store/agents.db", "/srv/my store/agents.db"),
    ],
)
def test_the_forms_that_name_a_sqlite_file(raw: str, path: str) -> None:
    location = parse_store_url(raw)
    assert (location.scheme, location.path) == ("sqlite", path)
    settings = Settings.from_env({"PARALLAX_STORE": raw})
    assert settings.store_path == path and settings.store == raw


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("postgresql:///parallax", "names its host"),
        ("postgresql://db:port/parallax", "port is not a number"),
        ("mysql://db/parallax", "mysql stores are not supported"),
        ("data:agents.db", "data stores are not supported"),
        ("sqlite://host/agents.db", "a file, not a host"),
        ("sqlite:///agents.db?mode=ro", "no query"),
        ("sqlite://", "names no file"),
        ("sqlite:///var/lib/parallax/", "names no file"),
    ],
)
def test_anything_else_is_refused_naming_the_setting(raw: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as caught:
        Settings.from_env({"PARALLAX_STORE": raw})
    assert str(caught.value).startswith("PARALLAX_STORE: ")
    assert "sqlite:///abs/path/agents.db" in str(caught.value)


def test_a_password_in_a_refused_url_is_not_repeated() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_store_url("mysql://parallax:hunter2@db:5432/parallax?password=hunter2")
    assert "hunter2" not in str(caught.value)
    assert "mysql://parallax:***@db:5432/parallax?..." in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_store_url("postgresql://parallax:hunter2@db:port/parallax")
    assert "hunter2" not in str(caught.value)


def test_serve_refuses_a_store_it_does_not_have_before_starting() -> None:
    result = CliRunner().invoke(main, ["serve"], env={"PARALLAX_STORE": "mysql://u:pw@db/parallax"})
    assert result.exit_code != 0
    assert "PARALLAX_STORE" in result.output and "mysql stores are not supported" in result.output
    assert "pw@" not in result.output


def test_unset_or_empty_is_the_default_file() -> None:
    for env in ({}, {"PARALLAX_STORE": ""}):
        settings = Settings.from_env(env)
        assert settings.store_url is None and settings.store == settings.store_path
        assert settings.store_path.endswith(os.path.join("parallax", "agents.db"))


def test_the_policy_protects_the_file_a_url_names(tmp_path: Path) -> None:
    settings = Settings.from_env({"PARALLAX_STORE": f"sqlite://{tmp_path}/store/agents.db"})
    assert default_volume_root(settings) == str(tmp_path / "store" / "volumes")
    assert str(tmp_path / "store" / "agents.db") in store_files(settings)


async def test_open_store_opens_the_sqlite_file_a_url_names(tmp_path: Path) -> None:
    defaults = spec_defaults(Settings())
    store = await open_store(f"sqlite://{tmp_path}/store/agents.db", defaults)
    try:
        assert isinstance(store, SqliteStore) and store.path == str(tmp_path / "store" / "agents.db")
        assert (tmp_path / "store" / "agents.db").exists()
    finally:
        await store.close()
    with pytest.raises(ConfigError, match="PARALLAX_STORE"):
        await open_store("mysql://db/parallax", defaults)


def test_a_postgresql_url_keeps_the_default_file_for_volumes() -> None:
    settings = Settings.from_env({"PARALLAX_STORE": "postgresql://u:pw@db:5432/parallax"})
    assert parse_store_url(settings.store).dsn == "postgresql://u:pw@db:5432/parallax"
    assert settings.store_path == Settings().store_path
