"""An agent image that says it has no credentials is shown as needing them, not as healthy."""

from __future__ import annotations

import pytest

from tests.harness import Controller

pytestmark = pytest.mark.docker

LINE = "parallax: needs credentials: set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"


async def test_needs_credentials_is_a_condition_and_an_event(controller: Controller):
    status, body = await controller.request(
        "POST",
        "/agents",
        {"name": "cred-none", "type": "claude", "command": ["sh", "-c", f"sleep 1; echo '{LINE}'; exec sleep 3600"]},
    )
    assert status == 201, body

    def needs(agent: dict) -> bool:
        return any(
            c["type"] == "CredentialsReady" and c["status"] == "False" for c in agent["status"].get("conditions", [])
        )

    agent = await controller.wait_agent("cred-none", needs, timeout=20)
    assert agent["status"]["phase"] == "Running"
    assert agent["status"]["restartCount"] == 0
    ready = next(c for c in agent["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NeedsCredentials"
    assert "ANTHROPIC_API_KEY" in ready["message"]
    _, events = await controller.request("GET", "/agents/cred-none/events")
    assert [e["reason"] for e in events["items"]].count("NeedsCredentials") == 1


async def test_agent_without_the_marker_is_ready(controller: Controller):
    await controller.request("POST", "/agents", {"name": "cred-fine", "type": "claude"})
    agent = await controller.wait_agent("cred-fine", lambda a: a["status"].get("phase") == "Running")
    ready = next(c for c in agent["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert not any(c["type"] == "CredentialsReady" for c in agent["status"].get("conditions", []))
