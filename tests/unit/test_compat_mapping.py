"""The Parallax runtime contract's pure mappings: AgentConfig -> Agent body, record -> AgentHandle, and a
change of a handle -> runtime events (shapes from packages/runtime-interface/src/types.ts)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from controller.admission.admit import AdmissionError, admit
from controller.compat.agent_config import generated_id, to_agent_body
from controller.compat.agent_handle import HANDLE_KEYS, handle_of, runtime_events, status_of
from controller.compat.answers import AnswerParser
from controller.config import ConfigError, Settings

SETTINGS = Settings(store_path="/tmp/cpt-unit/agents.db")


def admitted(config: dict[str, Any]) -> Any:
    translated = to_agent_body(config, suffix="0badcafe")
    try:
        return admit(translated.body, SETTINGS)[0]
    except AdmissionError as exc:
        raise translated.renamed(exc) from None


def fields(config: Any) -> list[str]:
    with pytest.raises(AdmissionError) as caught:
        admitted(config)
    return [e.field for e in caught.value.errors]


def test_a_full_agent_config_becomes_an_ordinary_agent():
    agent = admitted(
        {
            "id": "cpt-eng-1",
            "name": "Engineer 1",
            "type": "codex",
            "capabilities": ["code", "review"],
            "role": "engineer",
            "reportsTo": "cpt-lead",
            "executionId": "exec-42",
            "env": {"FOO": "bar"},
            "credentials": {"anthropicKey": "a", "openaiKey": "o", "googleKey": "g", "githubToken": "t"},
            "resources": {"cpu": "500m", "memory": "2Gi"},
            "autoRestart": False,
        }
    )
    assert agent.name == "cpt-eng-1"
    assert agent.spec.type == "codex"
    assert agent.spec.env == {
        "FOO": "bar",
        "ANTHROPIC_API_KEY": "a",
        "OPENAI_API_KEY": "o",
        "GOOGLE_API_KEY": "g",
        "GITHUB_TOKEN": "t",
    }
    assert agent.spec.resources.cpu == "500m" and agent.spec.resources.memory == "2Gi"
    assert agent.spec.restart_policy == "Never"
    assert agent.metadata.labels == {"parallax.ai/role": "engineer", "parallax.ai/execution-id": "exec-42"}
    assert agent.metadata.annotations["parallax.ai/display-name"] == "Engineer 1"
    assert agent.metadata.annotations["parallax.ai/reports-to"] == "cpt-lead"
    handle = handle_of(agent.to_manifest())
    assert handle == {
        "id": "cpt-eng-1",
        "name": "Engineer 1",
        "type": "codex",
        "status": "starting",
        "capabilities": ["code", "review"],
        "role": "engineer",
    }
    assert set(handle) <= HANDLE_KEYS


def test_a_config_without_id_gets_one_made_from_its_name_and_custom_credentials_are_env():
    agent = admitted({"name": "Senior Architect #1", "type": "claude", "credentials": {"custom": {"X_TOKEN": "x"}}})
    assert agent.name == "senior-architect-1-0badcafe"
    assert re.fullmatch(r"architect-1-[0-9a-f]{8}", generated_id("Architect 1"))
    assert generated_id("Ωμέγα", "12345678") == "agent-12345678"
    assert agent.spec.env == {"X_TOKEN": "x"}
    assert agent.spec.restart_policy == "Always"


def test_a_role_that_is_no_label_value_is_kept_as_an_annotation_only():
    agent = admitted({"id": "cpt-r", "name": "r", "type": "custom", "role": "Senior Engineer"})
    assert "parallax.ai/role" not in agent.metadata.labels
    assert handle_of(agent.to_manifest())["role"] == "Senior Engineer"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"type": "claude"}, ["name"]),
        ({"name": "x", "type": "robot"}, ["type"]),
        ({"id": "Not_A_Name", "name": "x", "type": "claude"}, ["id"]),
        ({"name": "x", "type": "claude", "resources": {"cpu": "lots"}}, ["resources.cpu"]),
        ({"name": "x", "type": "claude", "resources": {"memory": "1k"}}, ["resources.memory"]),
        ({"name": "x", "type": "claude", "resources": {"timeout": 0}}, ["resources.timeout"]),
        ({"name": "x", "type": "claude", "resources": {"timeout": "1h"}}, ["resources.timeout"]),
        ({"name": "x", "type": "claude", "resources": {"gpu": 1}}, ["resources.gpu"]),
        ({"name": "x", "type": "claude", "workdir": "/src"}, ["workdir"]),
        ({"name": "x", "type": "claude", "idleTimeout": -300}, ["idleTimeout"]),
        ({"name": "x", "type": "claude", "idleTimeout": 10**9}, ["idleTimeout"]),
        ({"name": "x", "type": "claude", "colour": "blue"}, ["colour"]),
        ({"name": "x", "type": "claude", "autoRestart": "yes"}, ["autoRestart"]),
        ({"name": "x", "type": "claude", "capabilities": "code"}, ["capabilities"]),
        ({"name": "x", "type": "claude", "credentials": {"anthropicKey": 5}}, ["credentials.anthropicKey"]),
        ({"name": "x", "type": "claude", "credentials": {"awsKey": "k"}}, ["credentials.awsKey"]),
        ({"name": "x", "type": "claude", "credentials": {"custom": {"1BAD": "v"}}}, ["credentials.custom.1BAD"]),
        (
            {"name": "x", "type": "claude", "env": {"GITHUB_TOKEN": "a"}, "credentials": {"githubToken": "b"}},
            ["credentials.githubToken"],
        ),
        ({"name": "", "type": "claude"}, ["name"]),
        ([1, 2], ["(body)"]),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_agent_config_field(config: Any, expected: list[str]):
    assert fields(config) == expected


def test_idle_timeout_and_lifetime_are_the_agents_lifecycle():
    agent = admitted({"id": "cpt-l", "name": "l", "type": "claude", "idleTimeout": 300, "resources": {"timeout": 3600}})
    assert agent.spec.lifecycle.idle_timeout_seconds == 300
    assert agent.spec.lifecycle.idle_action == "Suspend"
    assert agent.spec.lifecycle.active_deadline_seconds == 3600


def test_refusals_never_quote_a_secret():
    with pytest.raises(AdmissionError) as caught:
        admitted(
            {
                "name": "x",
                "type": "claude",
                "env": {"GITHUB_TOKEN": "sk-one-secret"},
                "credentials": {"githubToken": "sk-other-secret"},
            }
        )
    assert "secret" not in str(caught.value)


def manifest(phase: str | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "a", "annotations": {}}, "spec": {"type": "claude"}, "status": status}
    if phase is not None:
        status["phase"] = phase
    return body


def ready_condition(reason: str, message: str = "") -> list[dict[str, Any]]:
    return [{"type": "Ready", "status": "False", "reason": reason, "message": message}]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (manifest(), ("starting", None)),
        (manifest("Pending", containerId="c1"), ("starting", None)),
        (
            manifest("Pending", error={"code": "IMAGE_NOT_FOUND", "message": "build it"}),
            ("pending", "IMAGE_NOT_FOUND: build it"),
        ),
        (
            manifest("Pending", error={"code": "SOCKET_ERROR", "message": "down"}),
            ("error", "SOCKET_ERROR: down"),
        ),
        (manifest("Running"), ("ready", None)),
        (
            manifest("Running", conditions=ready_condition("NeedsCredentials", "needs credentials: set X")),
            ("authenticating", "needs credentials: set X"),
        ),
        (
            manifest("CrashLoopBackOff", conditions=ready_condition("CrashLoopBackOff", "back-off 10s")),
            ("error", "back-off 10s"),
        ),
        (
            manifest("Failed", conditions=ready_condition("Error", "exited with code 3")),
            ("error", "exited with code 3"),
        ),
        (manifest("Succeeded"), ("stopped", None)),
        (manifest("Suspended"), ("stopped", None)),
        (manifest("Terminating"), ("stopping", None)),
    ],
)
def test_status_of_a_record(record: dict[str, Any], expected: tuple[str, str | None]):
    assert status_of(record) == expected


def test_a_record_being_deleted_is_stopping_and_exit_codes_show_when_stopped():
    deleting = manifest("Running")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert status_of(deleting) == ("stopping", None)
    failed = handle_of(manifest("Failed", lastState={"exitCode": 3}, containerId="c1"))
    assert failed["exitCode"] == 3 and failed["containerId"] == "c1"
    assert "exitCode" not in handle_of(manifest("Running", lastState={"exitCode": 3}))


def h(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "a", "name": "a", "type": "claude", "status": status, "capabilities": [], **extra}


def names(events: list[tuple[str, Any]]) -> list[str]:
    return [event for event, _ in events]


def test_runtime_events_follow_the_handle():
    assert runtime_events(None, h("starting"), deleted=False) == []
    started = h("ready", startedAt="2026-01-01T00:00:00.000000Z", containerId="c1")
    assert names(runtime_events(h("starting"), started, deleted=False)) == ["agent_started", "agent_ready"]
    assert runtime_events(started, started, deleted=False) == []
    login = h("authenticating", error="needs credentials: set X")
    assert runtime_events(started, login, deleted=False) == [
        ("login_required", {"agent": login, "loginInstructions": "needs credentials: set X"})
    ]
    crashed = h("error", error="exited", exitCode=1)
    assert runtime_events(started, crashed, deleted=False) == [("agent_error", {"agent": crashed, "error": "exited"})]
    restarted = h("ready", startedAt="2026-01-01T00:01:00.000000Z")
    assert names(runtime_events(crashed, restarted, deleted=False)) == ["agent_started", "agent_ready"]
    done = h("stopped", exitCode=0)
    assert runtime_events(started, done, deleted=False) == [
        ("agent_stopped", {"agent": done, "reason": "exited with code 0"})
    ]
    assert runtime_events(done, h("stopping"), deleted=True) == []
    gone = runtime_events(h("stopping"), h("stopping"), deleted=True)
    assert gone == [("agent_stopped", {"agent": h("stopped"), "reason": "deleted"})]


def test_answers_are_read_from_the_entrypoint_s_frames():
    parser = AnswerParser("cpt-a")
    lines = [
        "parallax: none agent ready",
        "parallax: message 1: handing it to claude",
        "first line",
        "second line",
        "parallax: message 1: done",
        "parallax: message 2: handing it to claude",
        "boom",
        "parallax: message 2: claude exited with status 1",
        "parallax: needs credentials: set ANTHROPIC_API_KEY; message 3 was not delivered",
    ]
    answers = [a for a in (parser.feed(line) for line in lines) if a is not None]
    assert [(a["type"], a["content"], a["metadata"]["sequence"]) for a in answers] == [
        ("response", "first line\nsecond line", 1),
        ("error", "boom\nmessage 2: claude exited with status 1", 2),
        ("error", "needs credentials: set ANTHROPIC_API_KEY; message 3 was not delivered", 3),
    ]
    assert all(a["agentId"] == "cpt-a" and a["direction"] == "outbound" for a in answers)
    assert set(answers[0]) == {"id", "agentId", "direction", "type", "content", "metadata", "timestamp"}


def test_the_compat_port_is_read_from_the_environment_and_must_differ_from_port():
    assert Settings.from_env({}).compat_port is None
    assert Settings.from_env({"PARALLAX_COMPAT_PORT": "9877"}).compat_port == 9877
    with pytest.raises(ConfigError, match="PARALLAX_COMPAT_PORT"):
        Settings.from_env({"PARALLAX_COMPAT_PORT": "3200"})
    with pytest.raises(ConfigError, match="PARALLAX_COMPAT_PORT"):
        Settings.from_env({"PARALLAX_COMPAT_PORT": "port"})
