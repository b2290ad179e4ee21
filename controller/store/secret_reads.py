"""What both stores answer about Secrets from the copy they keep in memory (the committed Secrets, kept
current by their own writes and, for PostgreSQL, by the other controllers' notifications)."""

from __future__ import annotations

import builtins

from controller.model.secret import Secret
from controller.store.interface import NotFound, Subscription


class SecretReads:
    """A store's Secret reads and change subscriptions, over ``_secrets`` and ``_secret_subscribers``."""

    _secrets: dict[str, Secret]
    _secret_subscribers: set[Subscription[str]]
    _buffer: int

    async def list_secrets(self) -> builtins.list[Secret]:
        return [self._secrets[name].copy() for name in sorted(self._secrets)]

    async def get_secret(self, name: str) -> Secret:
        secret = self._secrets.get(name)
        if secret is None:
            raise NotFound(f"secret {name!r} not found")
        return secret.copy()

    def subscribe_secrets(self) -> Subscription[str]:
        """The names of Secrets whose data changed (created, replaced with other data, deleted) from now on."""
        queue: Subscription[str] = Subscription(self._buffer)
        self._secret_subscribers.add(queue)
        return queue

    def unsubscribe_secrets(self, queue: Subscription[str]) -> None:
        self._secret_subscribers.discard(queue)
