"""The runtime ``PARALLAX_RUNTIME`` names: the one place a new backend is wired in."""

from __future__ import annotations

from collections.abc import Callable

from controller.config import ConfigError, Settings
from controller.runtime.docker.driver import DockerObserver
from controller.runtime.docker.runtime import DockerRuntime
from controller.runtime.interface import Runtime
from controller.runtime.swarm.runtime import SwarmRuntime

RUNTIMES: dict[str, Callable[[Settings, DockerObserver | None], Runtime]] = {
    "docker": DockerRuntime,
    "swarm": SwarmRuntime,
}


def make_runtime(settings: Settings, observer: DockerObserver | None = None) -> Runtime:
    """The runtime of ``settings.runtime``, not yet opened."""
    try:
        return RUNTIMES[settings.runtime](settings, observer)
    except KeyError:
        raise ConfigError(f"PARALLAX_RUNTIME: {settings.runtime!r} is not one of {', '.join(RUNTIMES)}") from None
