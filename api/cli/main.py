"""The ``parallax`` command. ``parallax serve`` runs the API and the controller in one process."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from api.cli import work
from api.cli.commands import register as register_client_commands
from api.cli.images import images
from controller.config import ConfigError, Settings
from controller.observe.logging_setup import configure_logging
from controller.store.interface import StoreUnavailable

log = logging.getLogger("parallax.cli")


@click.group()
def main() -> None:
    """Parallax: run AI coding agents in isolated Docker containers."""


@main.command()
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
@click.option(
    "--specs-dir",
    type=click.Path(exists=True, file_okay=False),
    envvar="PARALLAX_SPECS_DIR",
    help="Keep the agents described by the YAML files in this directory applied (or PARALLAX_SPECS_DIR).",
)
def serve(log_level: str, specs_dir: str | None) -> None:
    """Run the HTTP API and the reconcile loop (settings come from the environment)."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(f"invalid setting: {exc}") from exc
    from api.server.auth import check_bind

    try:
        warning = check_bind(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(log_level, settings.log_format, sys.stderr)
    if warning:
        log.warning("%s", warning)
    try:
        asyncio.run(_serve(settings, specs_dir))
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc


async def _serve(settings: Settings, specs_dir: str | None = None) -> None:
    from aiohttp import web  # imported here: the client commands start faster without it

    from api.server.app import make_app

    app = make_app(settings, specs_dir=specs_dir)
    # aiohttp's keep-alive timer also runs from the moment a connection opens until its request's headers
    # are complete, so it is the header timeout as well. The access log is ours too: parallax.access.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        keepalive_timeout=settings.idle_timeout_seconds,
        access_log=logging.getLogger("parallax.access"),
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        from controller.config import _shown

        log.info(
            "serving on http://%s:%d (store %s, Docker %s)",
            settings.host,
            settings.port,
            _shown(settings.store) if settings.store_url else settings.store_path,
            settings.docker_socket,
        )
        await stop.wait()
        log.info("shutting down; agents keep running")
    finally:
        await runner.cleanup()


@main.group()
def store() -> None:
    """Work on a store (PARALLAX_STORE) while no controller uses it."""


@store.command("migrate")
@click.option("--from", "source", required=True, help="The SQLite store to copy: sqlite:///abs/path/agents.db.")
@click.option("--to", "target", required=True, help="The empty PostgreSQL store: postgresql://user:pw@host/db.")
def migrate(source: str, target: str) -> None:
    """Copy every agent, status, event and the resourceVersion from a SQLite store into PostgreSQL."""
    from controller.admission.admit import spec_defaults
    from controller.config import parse_store_url
    from controller.store.cipher import CipherError, SecretCipher
    from controller.store.migrate import migrate_store
    from controller.store.sqlite import default_key_file

    try:
        settings = Settings.from_env()
        location = parse_store_url(source, "--from")
        key_file = settings.secret_key_file or default_key_file(location.path or settings.store_path)
        cipher = SecretCipher.load(key_file)
        copied = asyncio.run(migrate_store(source, target, spec_defaults(settings), cipher))
    except (ConfigError, StoreUnavailable, CipherError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"copied {copied.agents} agents, {copied.events} events and {copied.secrets} secrets; "
        f"resourceVersion {copied.resource_version}; sealed with the key file {key_file}: the PostgreSQL "
        "controllers need it (PARALLAX_SECRET_KEY_FILE)"
    )


@main.group("secrets")
def secrets_group() -> None:
    """Work on the key that seals secret material in the store."""


@secrets_group.command("rotate-key")
def rotate_key() -> None:
    """Seal every secret in the store (PARALLAX_STORE) under a new key, then retire the old keys.

    Stop every controller using the store first (a SQLite store is locked while one runs). The new key
    is added to the key file (PARALLAX_SECRET_KEY_FILE) first, so an interrupted rotation leaves every
    value readable; run it again to finish. Afterwards copy the key file to every controller host.
    """
    from controller.store.rotate import rotate

    try:
        settings = Settings.from_env()
        old, new = asyncio.run(rotate(settings))
    except (ConfigError, StoreUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"store sealed with key {new}; retired {', '.join(old) or 'no key'}")


register_client_commands(main)
main.add_command(images)
main.add_command(work.exec_command)
main.add_command(work.cp)

if __name__ == "__main__":
    main()
