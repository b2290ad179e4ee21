"""The error codes an agent's status can carry (the seed's table), with what to do about each."""

from __future__ import annotations

from collections.abc import Mapping

from controller.model.redact import scrub

IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
NETWORK_ERROR = "NETWORK_ERROR"
RESOURCE_LIMIT = "RESOURCE_LIMIT"
SOCKET_ERROR = "SOCKET_ERROR"
CONTAINER_ERROR = "CONTAINER_ERROR"
SECRET_MISSING = "SECRET_MISSING"

RESOLUTION = {
    IMAGE_NOT_FOUND: "Build the image (see images/ in the README); the agent starts once it exists.",
    NETWORK_ERROR: "Create or check the Docker network, or pick another network name.",
    RESOURCE_LIMIT: "Increase the agent's limits or reduce the number of agents.",
    SOCKET_ERROR: "Check that the Docker daemon is running and that DOCKER_SOCKET points at it.",
    CONTAINER_ERROR: "Check the agent's spec and the Docker daemon's log.",
    SECRET_MISSING: (
        "Create the secret or add the key (parallax create secret NAME --from-literal KEY=VALUE), or fix the "
        "reference; nothing is changed on the container until it resolves."
    ),
}


class AgentError(Exception):
    """A failure with one of the codes above; its message never contains env values."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def scrub(self, env: Mapping[str, str]) -> AgentError:
        """This error with ``env``'s values (an agent's secrets) taken out of its message, in place, so
        every holder of it (status, events, logs, the raised exception) sees the same clean text.

        Docker's own exception, the cause, quotes the same text: it is dropped (a traceback would print it).
        """
        message = scrub(self.message, env)
        if message != self.message:
            self.message = message
            self.args = (f"{self.code}: {message}",)
            self.__cause__ = None
            self.__context__ = None
            self.__suppress_context__ = True
        return self

    @property
    def resolution(self) -> str:
        return RESOLUTION.get(self.code, "")
