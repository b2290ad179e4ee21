"""The ``parallax`` command. ``parallax serve`` runs the API and the controller in one process."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click
from aiohttp import web

from controller.config import ConfigError, Settings
from controller.store import StoreUnavailable


@click.group()
def main() -> None:
    """Parallax: run AI coding agents in isolated Docker containers."""


@main.command()
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def serve(log_level: str) -> None:
    """Run the HTTP API and the reconcile loop (settings come from the environment)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(f"invalid setting: {exc}") from exc
    try:
        asyncio.run(_serve(settings))
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc


async def _serve(settings: Settings) -> None:
    from api.app import make_app

    app = make_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        logging.getLogger("parallax").info(
            "serving on http://%s:%d (store %s, Docker %s)",
            settings.host,
            settings.port,
            settings.store_path,
            settings.docker_socket,
        )
        await stop.wait()
        logging.getLogger("parallax").info("shutting down; agents keep running")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
