"""An agent's answers, read from its output lines: the agent images' entrypoint (``images/base/parallax-agent``)
frames each message it hands to its CLI with ``parallax: message N: handing it to <cli>`` and
``parallax: message N: done`` (or ``... <cli> exited with status S``), and says
``parallax: needs credentials: ...; message N was not delivered`` when it cannot deliver one. What the CLI
printed between the two is the answer: a runtime-interface ``AgentMessage`` (``direction: outbound``,
``type: response``, or ``error`` when the CLI failed or the message was not delivered).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from controller.model.timestamps import now_iso

_HANDING = re.compile(r"^parallax: message (\d+): handing it to ")
_DONE = re.compile(r"^parallax: message (\d+): done$")
_FAILED = re.compile(r"^parallax: message (\d+): .* exited with status (\d+)$")
_UNDELIVERED = re.compile(r"^parallax: needs credentials: .*; message (\d+) was not delivered$")
MAX_ANSWER_CHARS = 1024 * 1024


def agent_message(agent_id: str, type_: str, content: str, sequence: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "agentId": agent_id,
        "direction": "outbound",
        "type": type_,
        "content": content,
        "metadata": {"sequence": sequence},
        "timestamp": now_iso(),
    }


@dataclass
class AnswerParser:
    """Fed one output line at a time; returns an ``AgentMessage`` when a line completes an answer."""

    agent_id: str
    _current: int | None = None
    _lines: list[str] = field(default_factory=list)
    _size: int = 0

    def feed(self, line: str) -> dict[str, Any] | None:
        if match := _HANDING.match(line):
            self._current, self._lines, self._size = int(match.group(1)), [], 0
            return None
        if match := _UNDELIVERED.match(line):
            return agent_message(self.agent_id, "error", line.removeprefix("parallax: "), int(match.group(1)))
        if self._current is None:
            return None
        done, failed = _DONE.match(line), _FAILED.match(line)
        if (done or failed) and int((done or failed).group(1)) == self._current:  # type: ignore[union-attr]
            content = "\n".join(self._lines)
            if failed:
                content = "\n".join([*self._lines, line.removeprefix("parallax: ")])
            message = agent_message(self.agent_id, "response" if done else "error", content, self._current)
            self._current, self._lines, self._size = None, [], 0
            return message
        if self._size + len(line) <= MAX_ANSWER_CHARS:
            self._lines.append(line)
            self._size += len(line) + 1
        return None
