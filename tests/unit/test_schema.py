"""Admission of the seed's bodies and of manifests: defaults, field-path errors, volume policy, secrets."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from controller.admission.admit import AdmissionError, admit
from controller.admission.schema import FieldError, flat_to_manifest, validate_manifest
from controller.config import Settings

SECRET = "sk-secret"

SEED_BODIES: dict[str, dict[str, Any]] = {
    "heavy-analyzer": {"name": "heavy-analyzer", "type": "claude", "resources": {"memory": "1g", "cpu": 1.0}},
    "file-processor": {"name": "file-processor", "type": "claude", "volumes": ["/host/data:/data:ro"]},
    "secure-agent": {"name": "secure-agent", "type": "claude", "env": {"API_KEY": "sk-..."}},
    "isolated-agent": {"name": "isolated-agent", "type": "claude", "network": "custom-network"},
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "store" / "agents.db"), allowed_volume_roots=("/host", str(tmp_path)))


def as_manifest(body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    name = body.pop("name")
    return {"apiVersion": "parallax.ai/v1", "kind": "Agent", "metadata": {"name": name}, "spec": body}


def refusal(body: Any, settings: Settings, **kwargs: Any) -> AdmissionError:
    with pytest.raises(AdmissionError) as excinfo:
        admit(body, settings, **kwargs)
    return excinfo.value


def fields(error: AdmissionError) -> set[str]:
    return {e.field for e in error.errors}


def messages_for(error: AdmissionError, field: str) -> list[str]:
    return [e.message for e in error.errors if e.field == field]


# --- the seed's bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEED_BODIES))
def test_seed_body_is_admitted(name: str, settings: Settings) -> None:
    agent, resource_version = admit(copy.deepcopy(SEED_BODIES[name]), settings)
    assert agent.name == name
    assert agent.spec.type == "claude"
    assert resource_version is None


@pytest.mark.parametrize("name", sorted(SEED_BODIES))
def test_flat_body_and_manifest_mean_the_same_agent(name: str, settings: Settings) -> None:
    flat_agent, _ = admit(copy.deepcopy(SEED_BODIES[name]), settings)
    manifest_agent, _ = admit(as_manifest(SEED_BODIES[name]), settings)
    assert flat_agent.spec == manifest_agent.spec
    assert flat_agent.metadata.name == manifest_agent.metadata.name


def test_seed_resources_are_kept_as_written(settings: Settings) -> None:
    agent, _ = admit(SEED_BODIES["heavy-analyzer"], settings)
    assert agent.spec.resources.memory == "1g"
    assert agent.spec.resources.cpu == 1.0


def test_seed_volume_env_and_network_are_kept(settings: Settings) -> None:
    assert admit(SEED_BODIES["file-processor"], settings)[0].spec.volumes == ("/host/data:/data:ro",)
    assert admit(SEED_BODIES["secure-agent"], settings)[0].spec.env == {"API_KEY": "sk-..."}
    assert admit(SEED_BODIES["isolated-agent"], settings)[0].spec.network == "custom-network"


def test_flat_body_becomes_the_manifest_it_stands_for() -> None:
    body = {"name": "a", "labels": {"team": "research"}, "type": "codex", "env": {"K": "v"}}
    assert flat_to_manifest(body) == {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": "a", "labels": {"team": "research"}},
        "spec": {"type": "codex", "env": {"K": "v"}},
    }


def test_labels_and_annotations_of_a_flat_body_land_in_metadata(settings: Settings) -> None:
    agent, _ = admit(
        {"name": "a", "type": "claude", "labels": {"team": "research"}, "annotations": {"note": "hi"}}, settings
    )
    assert agent.metadata.labels == {"team": "research"}
    assert agent.metadata.annotations == {"note": "hi"}


def test_resource_version_in_the_body_is_returned_for_conflict_checks(settings: Settings) -> None:
    _, rv = admit({"name": "a", "type": "claude", "resourceVersion": "7"}, settings)
    assert rv == "7"
    _, rv = admit(
        {
            "apiVersion": "parallax.ai/v1",
            "kind": "Agent",
            "metadata": {"name": "a", "resourceVersion": 8},
            "spec": {"type": "claude"},
        },
        settings,
    )
    assert rv == "8"


def test_status_in_a_manifest_is_ignored_on_input(settings: Settings) -> None:
    manifest = as_manifest(SEED_BODIES["heavy-analyzer"])
    manifest["status"] = {"phase": "Running"}
    agent, _ = admit(manifest, settings)
    assert agent.status == {}


# --- defaults ----------------------------------------------------------------------------------


def test_defaults_are_filled_from_settings(settings: Settings) -> None:
    agent, _ = admit({"name": "plain", "type": "claude"}, settings)
    spec = agent.spec
    assert spec.resources.memory == "512m"
    assert spec.resources.cpu == 0.5
    assert spec.resources.pids == settings.default_pids
    assert spec.network == "parallax-agents"
    assert spec.restart_policy == "Always"
    assert spec.stop_grace_period_seconds == 10
    assert spec.suspend is False
    assert spec.image is None
    assert spec.command is None
    assert spec.args is None
    assert spec.env == {}
    assert spec.volumes == ()


def test_defaults_follow_custom_settings(tmp_path: Path) -> None:
    custom = Settings(
        store_path=str(tmp_path / "s" / "agents.db"), default_memory="2g", default_cpu=1.5, network="lab-net"
    )
    agent, _ = admit({"name": "plain", "type": "gemini"}, custom)
    assert agent.spec.resources.memory == "2g"
    assert agent.spec.resources.cpu == 1.5
    assert agent.spec.network == "lab-net"


def test_partial_resources_keep_the_other_default(settings: Settings) -> None:
    agent, _ = admit({"name": "a", "type": "claude", "resources": {"memory": "1g"}}, settings)
    assert agent.spec.resources.memory == "1g"
    assert agent.spec.resources.cpu == settings.default_cpu


def test_explicit_values_win_over_defaults(settings: Settings) -> None:
    agent, _ = admit(
        {
            "name": "a",
            "type": "custom",
            "image": "example/agent:1",
            "command": ["run"],
            "args": ["--fast"],
            "restartPolicy": "OnFailure",
            "suspend": True,
            "stopGracePeriodSeconds": 30,
            "resources": {"memory": "512Mi", "cpu": "500m", "pids": 64},
        },
        settings,
    )
    spec = agent.spec
    assert (spec.image, spec.command, spec.args) == ("example/agent:1", ("run",), ("--fast",))
    assert (spec.restart_policy, spec.suspend, spec.stop_grace_period_seconds) == ("OnFailure", True, 30)
    assert (spec.resources.memory, spec.resources.cpu, spec.resources.pids) == ("512Mi", "500m", 64)


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_every_restart_policy_is_accepted(policy: str, settings: Settings) -> None:
    agent, _ = admit({"name": "a", "type": "claude", "restartPolicy": policy}, settings)
    assert agent.spec.restart_policy == policy


@pytest.mark.parametrize("type_", ["claude", "codex", "gemini", "aider", "custom"])
def test_every_agent_type_is_accepted(type_: str, settings: Settings) -> None:
    assert admit({"name": "a", "type": type_}, settings)[0].spec.type == type_


@pytest.mark.parametrize(
    "memory", ["512m", "1g", "2g", "1.5g", "512Mi", "2Gi", 1073741824, "1073741824", "1G", "512M"], ids=repr
)
def test_every_documented_memory_form_is_admitted(memory: object, settings: Settings) -> None:
    assert admit({"name": "a", "type": "claude", "resources": {"memory": memory}}, settings)[0]


@pytest.mark.parametrize("cpu", [0.5, 1.0, 2, 2.0, "500m", "2"], ids=repr)
def test_every_documented_cpu_form_is_admitted(cpu: object, settings: Settings) -> None:
    assert admit({"name": "a", "type": "claude", "resources": {"cpu": cpu}}, settings)[0]


# --- errors carry the field path ---------------------------------------------------------------


def test_unknown_field_in_a_flat_body_is_reported_by_its_name(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "colour": "red"}, settings)
    assert error.forbidden is False
    assert [e.to_dict() for e in error.errors] == [{"field": "colour", "message": "unknown field"}]


def test_unknown_field_in_a_manifest_is_reported_under_spec(settings: Settings) -> None:
    manifest = as_manifest({"name": "a", "type": "claude", "colour": "red"})
    error = refusal(manifest, settings)
    assert fields(error) == {"spec.colour"}


def test_unknown_nested_field_is_reported_with_its_full_path(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "resources": {"gpu": 1}}, settings)
    assert fields(error) == {"resources.gpu"}


def test_unknown_top_level_manifest_field_is_reported(settings: Settings) -> None:
    manifest = as_manifest({"name": "a", "type": "claude"})
    manifest["extra"] = 1
    assert fields(refusal(manifest, settings)) == {"extra"}


def test_non_quantity_cpu_is_reported_at_resources_cpu(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "resources": {"cpu": "fast"}}, settings)
    assert fields(error) == {"resources.cpu"}
    assert any("fast" in m for m in messages_for(error, "resources.cpu"))


def test_cpu_of_the_wrong_json_type_is_reported_at_resources_cpu(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "resources": {"cpu": [1]}}, settings)
    assert fields(error) == {"resources.cpu"}


@pytest.mark.parametrize("memory", ["lots", "0", "-1g", 0, "1m", True, "1.5.5g"], ids=repr)
def test_bad_memory_is_reported_at_resources_memory(memory: object, settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "resources": {"memory": memory}}, settings)
    assert fields(error) == {"resources.memory"}
    assert all(messages_for(error, "resources.memory"))


def test_bad_memory_in_a_manifest_is_reported_under_spec(settings: Settings) -> None:
    error = refusal(as_manifest({"name": "a", "type": "claude", "resources": {"memory": "lots"}}), settings)
    assert fields(error) == {"spec.resources.memory"}


@pytest.mark.parametrize("name", ["Bad_Name", "-x", "x-", "a" * 64, "", "UPPER", "dot.ted", "sp ace"], ids=repr)
def test_invalid_names_are_reported_at_name(name: str, settings: Settings) -> None:
    error = refusal({"name": name, "type": "claude"}, settings)
    assert fields(error) == {"name"}


@pytest.mark.parametrize(
    "name",
    [
        "Bad_Name",
        "-x",
        "x-",
        "",
        "a" * 64,
    ],
    ids=repr,
)
def test_invalid_name_message_explains_dns_1123(name: str, settings: Settings) -> None:
    error = refusal({"name": name, "type": "claude"}, settings)
    assert any("DNS-1123" in m for m in messages_for(error, "name"))


def test_invalid_name_in_a_manifest_is_reported_at_metadata_name(settings: Settings) -> None:
    error = refusal(as_manifest({"name": "Bad_Name", "type": "claude"}), settings)
    assert fields(error) == {"metadata.name"}


@pytest.mark.parametrize("name", ["a", "a" * 63, "agent-123", "0abc", "heavy-analyzer"])
def test_valid_dns_1123_names_are_admitted(name: str, settings: Settings) -> None:
    assert admit({"name": name, "type": "claude"}, settings)[0].name == name


def test_bad_label_value_is_not_explained_as_an_agent_name(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "labels": {"app.kubernetes.io/name": "bad value"}}, settings)
    assert error.errors
    assert not any("DNS-1123" in e.message for e in error.errors)


def test_missing_type_is_reported_at_type(settings: Settings) -> None:
    error = refusal({"name": "a"}, settings)
    assert [e.to_dict() for e in error.errors] == [{"field": "type", "message": "required field is missing"}]


def test_missing_name_is_reported_at_name(settings: Settings) -> None:
    assert fields(refusal({"type": "claude"}, settings)) == {"name"}


def test_unknown_type_is_reported_at_type(settings: Settings) -> None:
    assert fields(refusal({"name": "a", "type": "robot"}, settings)) == {"type"}


def test_bad_restart_policy_is_reported_at_restart_policy(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "restartPolicy": "Sometimes"}, settings)
    assert fields(error) == {"restartPolicy"}
    assert "Sometimes" in error.errors[0].message


def test_several_errors_are_all_reported_at_once(settings: Settings) -> None:
    error = refusal(
        {
            "name": "Bad_Name",
            "type": "robot",
            "colour": "red",
            "resources": {"memory": "lots", "cpu": "fast"},
            "restartPolicy": "Sometimes",
            "volumes": ["relative:/x"],
        },
        settings,
    )
    assert fields(error) == {
        "name",
        "type",
        "colour",
        "resources.memory",
        "resources.cpu",
        "restartPolicy",
        "volumes[0]",
    }
    for field in fields(error):
        assert field in str(error)


def test_errors_come_in_a_stable_order() -> None:
    manifest = as_manifest({"name": "a", "type": "robot", "restartPolicy": "x", "colour": 1})
    first = validate_manifest(manifest)
    assert first == validate_manifest(copy.deepcopy(manifest))
    assert first == sorted(first, key=lambda e: (e.field, e.message))


def test_validate_manifest_reports_flat_paths_when_asked() -> None:
    manifest = flat_to_manifest({"name": "a", "type": "claude", "resources": {"memory": "lots"}})
    assert [e.field for e in validate_manifest(manifest, flat=True)] == ["resources.memory"]
    assert [e.field for e in validate_manifest(manifest)] == ["spec.resources.memory"]


def test_valid_manifest_has_no_errors() -> None:
    assert validate_manifest(as_manifest(SEED_BODIES["heavy-analyzer"])) == []


def test_wrong_api_version_and_kind_are_reported() -> None:
    manifest = as_manifest({"name": "a", "type": "claude"})
    manifest["apiVersion"] = "v2"
    manifest["kind"] = "Pod"
    assert {e.field for e in validate_manifest(manifest)} == {"apiVersion", "kind"}


@pytest.mark.parametrize("body", [[], "agent", 42, None, ["name", "a"]], ids=repr)
def test_a_body_that_is_not_an_object_is_refused(body: Any, settings: Settings) -> None:
    error = refusal(body, settings)
    assert error.forbidden is False
    assert [e.to_dict() for e in error.errors] == [{"field": "(body)", "message": "must be a JSON object"}]


def test_field_error_serialises_as_field_and_message() -> None:
    assert FieldError("resources.memory", "bad").to_dict() == {"field": "resources.memory", "message": "bad"}


# --- the name in the URL (PUT / PATCH) ---------------------------------------------------------


def test_name_from_the_url_fills_a_body_without_one(settings: Settings) -> None:
    agent, _ = admit({"type": "claude"}, settings, name="heavy-analyzer")
    assert agent.name == "heavy-analyzer"


def test_matching_name_in_body_and_url_is_admitted(settings: Settings) -> None:
    agent, _ = admit(SEED_BODIES["heavy-analyzer"], settings, name="heavy-analyzer")
    assert agent.name == "heavy-analyzer"


def test_body_naming_another_agent_than_the_url_is_refused(settings: Settings) -> None:
    error = refusal({"name": "x", "type": "claude"}, settings, name="other")
    assert error.forbidden is False
    assert fields(error) == {"name"}
    assert "'x'" in str(error)
    assert "'other'" in str(error)


def test_manifest_naming_another_agent_than_the_url_is_refused_at_metadata_name(settings: Settings) -> None:
    error = refusal(as_manifest({"name": "x", "type": "claude"}), settings, name="other")
    assert fields(error) == {"metadata.name"}


def test_manifest_without_a_name_takes_the_one_from_the_url(settings: Settings) -> None:
    manifest = as_manifest({"name": "x", "type": "claude"})
    del manifest["metadata"]["name"]
    agent, _ = admit(manifest, settings, name="from-url")
    assert agent.name == "from-url"


# --- volume policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "volume",
    [
        "/etc:/x",
        "/etc/passwd:/x",
        "/var/run/docker.sock:/sock",
        "/run/docker.sock:/sock",
        "/var/run:/x",
        "/:/host",
        "/data/../etc:/x",
        "/proc:/p",
        "/sys:/s",
        "/dev:/d",
        "/root:/r",
        "/boot:/b",
        "/var/lib/docker:/d",
        "//etc:/x",
        "/etc/:/x:ro",
    ],
)
def test_host_paths_that_expose_the_host_are_forbidden(volume: str, settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "volumes": [volume]}, settings)
    assert error.forbidden is True
    assert fields(error) == {"volumes[0]"}
    assert "may not be mounted" in error.errors[0].message


@pytest.mark.parametrize("volume", ["/var:/x", "/var/lib:/x"])
def test_parents_of_forbidden_paths_are_forbidden(volume: str, settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "volumes": [volume]}, settings)
    assert error.forbidden is True


def test_symlink_to_the_root_is_forbidden(tmp_path: Path, settings: Settings) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/")
    error = refusal({"name": "a", "type": "claude", "volumes": [f"{link}:/x"]}, settings)
    assert error.forbidden is True
    assert fields(error) == {"volumes[0]"}


def test_symlink_to_etc_is_forbidden(tmp_path: Path, settings: Settings) -> None:
    link = tmp_path / "config"
    link.symlink_to("/etc")
    error = refusal({"name": "a", "type": "claude", "volumes": [f"{link}:/x:ro"]}, settings)
    assert error.forbidden is True


def test_the_configured_docker_socket_is_forbidden(tmp_path: Path) -> None:
    socket = tmp_path / "sock" / "docker.sock"
    socket.parent.mkdir()
    socket.touch()
    settings = Settings(store_path=str(tmp_path / "store" / "agents.db"), docker_socket=str(socket))
    for volume in (f"{socket}:/sock", f"{socket.parent}:/dir"):
        error = refusal({"name": "a", "type": "claude", "volumes": [volume]}, settings)
        assert error.forbidden is True


def test_the_controllers_store_is_forbidden(tmp_path: Path, settings: Settings) -> None:
    store_dir = os.path.dirname(settings.store_path)
    for volume in (f"{store_dir}:/x", f"{tmp_path}:/x"):
        error = refusal({"name": "a", "type": "claude", "volumes": [volume]}, settings)
        assert error.forbidden is True


def test_an_ordinary_host_directory_is_admitted(tmp_path: Path, settings: Settings) -> None:
    data = tmp_path / "data"
    data.mkdir()
    agent, _ = admit({"name": "a", "type": "claude", "volumes": [f"{data}:/data:ro"]}, settings)
    assert agent.spec.volumes == (f"{data}:/data:ro",)


def test_forbidden_volume_is_reported_at_its_index(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "volumes": ["/host/data:/data:ro", "/etc:/x", "/:/y"]}, settings)
    assert error.forbidden is True
    assert fields(error) == {"volumes[1]", "volumes[2]"}


def test_forbidden_volume_in_a_manifest_is_reported_under_spec(settings: Settings) -> None:
    error = refusal(as_manifest({"name": "a", "type": "claude", "volumes": ["/etc:/x"]}), settings)
    assert error.forbidden is True
    assert fields(error) == {"spec.volumes[0]"}


@pytest.mark.parametrize(
    "volume", ["relative:/x", "/a", "/a:/b:rx", "/a:relative", "/a:/", "/a:/b:ro:extra", ""], ids=repr
)
def test_malformed_volume_is_invalid_input_not_forbidden(volume: str, settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "volumes": [volume]}, settings)
    assert error.forbidden is False
    assert fields(error) == {"volumes[0]"}


def test_malformed_volume_is_reported_before_policy(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "volumes": ["/etc:/x", "/a:/b:rx"]}, settings)
    assert error.forbidden is False
    assert fields(error) == {"volumes[1]"}


# --- secrets -----------------------------------------------------------------------------------


def test_refusal_never_repeats_an_env_value(settings: Settings) -> None:
    error = refusal(
        {
            "name": "Bad_Name",
            "type": "claude",
            "env": {"API_KEY": SECRET, "bad key": SECRET, "PORT": 8080},
            "resources": {"memory": "lots"},
        },
        settings,
    )
    assert {"env.PORT", "name", "resources.memory"} <= fields(error)
    assert any(e.field == "env" and "bad key" in e.message for e in error.errors)
    assert SECRET not in str(error)
    assert all(SECRET not in e.message for e in error.errors)


@pytest.mark.parametrize(
    "env",
    [
        {"API_KEY": SECRET + "x" * 32768},
        SECRET,
        {"API_KEY": [SECRET]},
        {"API_KEY": {"value": SECRET}},
    ],
    ids=["value-too-long", "env-not-an-object", "value-in-a-list", "value-in-an-object"],
)
def test_refusal_of_an_invalid_env_value_never_repeats_it(env: Any, settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "env": env}, settings)
    assert SECRET not in str(error)


def test_refusal_of_a_numeric_env_value_never_repeats_it(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "env": {"PIN": 987654321}}, settings)
    assert fields(error) == {"env.PIN"}
    assert "987654321" not in str(error)


def test_invalid_env_key_message_says_it_is_the_key(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "env": {"bad key": "v"}}, settings)
    assert fields(error) == {"env"}
    assert "key" in error.errors[0].message.replace("bad key", "")


# --- host network ------------------------------------------------------------------------------


def test_host_network_is_refused(settings: Settings) -> None:
    error = refusal({"name": "a", "type": "claude", "network": "host"}, settings)
    assert fields(error) == {"network"}


@pytest.mark.parametrize("network", ["", "-net", "bad net", "a:b", "x" * 129], ids=repr)
def test_invalid_network_names_are_reported_at_network(network: str, settings: Settings) -> None:
    assert fields(refusal({"name": "a", "type": "claude", "network": network}, settings)) == {"network"}
