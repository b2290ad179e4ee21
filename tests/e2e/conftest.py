"""At the end of the session: no ``parallax serve`` of the tests still running, none of their networks left."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from tests.server_process import INSTANCES, Server, remove_instance


@pytest.fixture(scope="session", autouse=True)
def no_instance_left_behind() -> Iterator[None]:
    yield
    for server in Server.started:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()  # a running server would make its network again
    left = [network for settings in INSTANCES for network in remove_instance(settings.instance)]
    if left:
        warnings.warn(f"test networks Docker would not remove: {left}", stacklevel=1)
