"""``send`` frames a message as one stdin line that the agent entrypoint decodes with ``printf %b``: the
round trip through the real shells of the images (dash here, busybox in the test image) gives back the
message exactly, whatever newlines, backslashes, escapes or shell syntax it holds."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest

from api.server.routes_live import frame_message

# What the entrypoints do with a line they read: parallax-agent and images/testing/agent.sh.
DECODE = 'IFS= read -r line; printf "%s" "$(printf "%b" "$line")"'

TRICKY = [
    "plain",
    "two\nlines",
    "trailing backslash \\",
    r"literal \n and \\n and \t and \c and \0101 and \x41",
    "carriage\rreturn and\r\nwindows line",
    "run $(id) and `whoami`; echo \"quoted\" 'single' | cat > /tmp/x && $HOME ${PATH} %s %b %%",
    "def f():\n    return '\\\\'\n\n\nprint(f())",
    "unicode: ünïcödé ✓ 你好",
]


def shells() -> list[list[str]]:
    found = [["sh", "-c"]]
    busybox = shutil.which("busybox") or "/bin/busybox"
    if os.path.exists(busybox):
        found.append([busybox, "sh", "-c"])
    return found


def random_messages(count: int) -> list[str]:
    rng = random.Random(7)
    alphabet = "ab \\\n\r\t$`'\"%nrc0x{}()"
    return ["z" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) + "z" for _ in range(count)]


@pytest.mark.parametrize("shell", shells(), ids=lambda s: s[0])
def test_a_framed_message_is_one_line_and_decodes_to_itself(shell: list[str]) -> None:
    for message in TRICKY + random_messages(200):
        framed = frame_message(message)
        assert framed.endswith(b"\n") and framed.count(b"\n") == 1 and b"\r" not in framed
        decoded = subprocess.run([*shell, DECODE], input=framed, capture_output=True, check=True).stdout
        assert decoded.decode() == message.rstrip("\n"), (message, framed)
