"""What Docker and the kernel cannot carry, beyond what JSON Schema can say (``controller.admission.admit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.admission.admit import MAX_EXEC_BYTES, AdmissionError, admit
from controller.config import Settings
from controller.runtime.docker.render import desired_container

SECRET = "sk-unit-secret-0123456789"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "agents.db"), allowed_volume_roots=(str(tmp_path),))


def refused(body: dict[str, Any], settings: Settings) -> dict[str, str]:
    with pytest.raises(AdmissionError) as caught:
        admit(body, settings)
    assert not caught.value.forbidden
    return {e.field: e.message for e in caught.value.errors}


def test_env_command_and_args_over_the_exec_budget_are_refused_at_spec_env(settings: Settings) -> None:
    value = "x" * 32000
    env = {f"K{i}": value for i in range(MAX_EXEC_BYTES // 32000 + 1)}
    found = refused({"name": "a", "type": "claude", "env": env}, settings)
    assert list(found) == ["env"] and "1024 KiB" in found["env"]
    # Just under: admitted.
    env = {f"K{i}": value for i in range(MAX_EXEC_BYTES // 32010 - 1)}
    assert admit({"name": "a", "type": "claude", "env": env, "command": ["sh"]}, settings)


def test_an_env_entry_over_max_arg_strlen_is_refused_without_quoting_it(settings: Settings) -> None:
    value = "\U0001f600" * 32768  # within maxLength (characters), over 128 KiB as UTF-8
    found = refused({"name": "a", "type": "claude", "env": {"API_KEY": value}}, settings)
    assert "128 KiB" in found["env.API_KEY"] and "\U0001f600" not in found["env.API_KEY"]


def test_a_nul_in_an_env_value_is_refused_without_quoting_it(settings: Settings) -> None:
    body = {"apiVersion": "parallax.ai/v1", "kind": "Agent", "metadata": {"name": "a"}}
    body["spec"] = {"type": "claude", "env": {"API_KEY": SECRET + "\x00" + SECRET}}
    found = refused(body, settings)
    assert "NUL" in found["spec.env.API_KEY"] and SECRET not in str(found)


def test_a_lone_surrogate_is_refused_where_it_is(settings: Settings) -> None:
    body = {"name": "a", "type": "claude", "env": {"K": SECRET + "\ud800"}, "args": ["x", "\udfff"]}
    found = refused(body, settings)
    assert set(found) == {"env.K", "args[1]"} and SECRET not in str(found)
    assert "surrogate" in found["env.K"]
    found = refused({"name": "a", "type": "claude", "labels": {"k\ud800": "v"}}, settings)
    assert "labels" in found


def test_a_label_key_prefix_over_253_characters_is_refused(settings: Settings) -> None:
    prefix = ".".join(["a" * 63] * 4)  # 255 characters of valid DNS labels
    found = refused({"name": "a", "type": "claude", "labels": {prefix + "/name": "v"}}, settings)
    assert "253" in found["labels"]
    ok = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253
    assert admit({"name": "a", "type": "claude", "labels": {ok + "/" + "n" * 63: "v" * 63}}, settings)


def test_whole_numbers_written_with_a_fraction_become_integers_docker_takes(settings: Settings) -> None:
    body = {
        "name": "a",
        "type": "claude",
        "resources": {"pids": 512.0, "memory": 67108864.0, "cpu": 1.0},
        "stopGracePeriodSeconds": 5.0,
        "securityContext": {"runAsUser": 1000.0, "runAsGroup": 1000.0},
    }
    agent, _ = admit(body, settings)
    spec = agent.spec
    assert spec.resources.pids == 512 and isinstance(spec.resources.pids, int)
    assert spec.stop_grace_period_seconds == 5 and isinstance(spec.stop_grace_period_seconds, int)
    assert spec.security_context.run_as_user == 1000 and isinstance(spec.security_context.run_as_user, int)
    config, _ = desired_container(agent, settings)
    assert config["User"] == "1000:1000"
    assert config["HostConfig"]["PidsLimit"] == 512 and config["HostConfig"]["Memory"] == 67108864
    assert refused({**body, "resources": {"pids": 512.5}}, settings)
