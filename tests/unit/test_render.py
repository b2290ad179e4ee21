"""The container an Agent should have, and the hash that tells "spec changed" from "same spec"."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.admission.admit import admit
from controller.config import Settings
from controller.model.agent import Agent, Resources, container_name
from controller.runtime.docker.render import (
    ANNOTATION_RESTARTED_AT,
    LABEL_AGENT,
    LABEL_GENERATION,
    LABEL_HASH,
    LABEL_MANAGED,
    LABEL_TYPE,
    LABEL_UID,
    config_hash,
    desired_container,
    image_for,
    render_container,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "store" / "agents.db"), allowed_volume_roots=("/host:rw",))


def make_agent(settings: Settings, uid: str = "uid-1", generation: int = 1, **body: Any) -> Agent:
    agent, _ = admit({"name": "heavy-analyzer", "type": "claude", **body}, settings)
    agent.metadata.uid = uid
    agent.metadata.generation = generation
    return agent


def with_spec(agent: Agent, **changes: Any) -> Agent:
    new = agent.copy()
    new.spec = replace(agent.spec, **changes)
    return new


def hash_of(agent: Agent, settings: Settings) -> str:
    return desired_container(agent, settings)[1]


# --- what the container looks like -------------------------------------------------------------


def test_seed_resources_become_docker_limits(settings: Settings) -> None:
    config = render_container(make_agent(settings, resources={"memory": "1g", "cpu": 1.0}), settings)
    assert config["HostConfig"]["Memory"] == 1073741824
    assert config["HostConfig"]["NanoCpus"] == 1_000_000_000


def test_default_resources_become_docker_limits(settings: Settings) -> None:
    config = render_container(make_agent(settings), settings)
    assert config["HostConfig"]["Memory"] == 512 * 1024**2
    assert config["HostConfig"]["NanoCpus"] == 500_000_000
    assert config["HostConfig"]["PidsLimit"] == settings.default_pids


def test_swap_is_not_added_on_top_of_the_memory_limit(settings: Settings) -> None:
    config = render_container(make_agent(settings, resources={"memory": "2Gi"}), settings)
    assert config["HostConfig"]["MemorySwap"] == config["HostConfig"]["Memory"] == 2 * 1024**3


def test_millicore_cpu_becomes_nano_cpus(settings: Settings) -> None:
    config = render_container(make_agent(settings, resources={"cpu": "500m"}), settings)
    assert config["HostConfig"]["NanoCpus"] == 500_000_000


@pytest.mark.parametrize(
    ("type_", "image"),
    [
        ("claude", "parallax/agent-claude:latest"),
        ("codex", "parallax/agent-codex:latest"),
        ("gemini", "parallax/agent-gemini:latest"),
        ("aider", "parallax/agent-aider:latest"),
        ("custom", "parallax/agent-base:latest"),
    ],
)
def test_default_image_follows_the_agent_type(type_: str, image: str, settings: Settings) -> None:
    agent = make_agent(settings, type=type_)
    assert render_container(agent, settings)["Image"] == image
    assert image_for(agent.spec, settings) == image


def test_explicit_image_wins(settings: Settings) -> None:
    agent = make_agent(settings, type="custom", image="example/agent:1.2")
    assert render_container(agent, settings)["Image"] == "example/agent:1.2"


def test_image_prefix_setting_is_honoured(tmp_path: Path) -> None:
    settings = Settings(store_path=str(tmp_path / "s" / "agents.db"), image_prefix="registry.local/team-")
    assert render_container(make_agent(settings), settings)["Image"] == "registry.local/team-claude:latest"
    custom = make_agent(settings, type="custom")
    assert render_container(custom, settings)["Image"] == "registry.local/team-base:latest"


def test_container_names_follow_the_seed() -> None:
    assert container_name("heavy-analyzer") == "parallax-agent-heavy-analyzer"
    assert container_name("agent-123") == "parallax-agent-123"
    assert container_name("agent") == "parallax-agent-agent"


def test_labels_identify_the_agent(settings: Settings) -> None:
    agent = make_agent(settings, uid="0f9c", generation=3)
    config, digest = desired_container(agent, settings)
    labels = config["Labels"]
    assert labels[LABEL_MANAGED] == "true"
    assert labels[LABEL_AGENT] == "heavy-analyzer"
    assert labels[LABEL_UID] == "0f9c"
    assert labels[LABEL_TYPE] == "claude"
    assert labels[LABEL_HASH] == digest
    assert labels[LABEL_GENERATION] == "3"
    assert (LABEL_MANAGED, LABEL_AGENT, LABEL_UID, LABEL_TYPE, LABEL_HASH, LABEL_GENERATION) == (
        "parallax.managed",
        "parallax.agent",
        "parallax.agent.uid",
        "parallax.agent.type",
        "parallax.config-hash",
        "parallax.generation",
    )


def test_all_label_values_are_strings(settings: Settings) -> None:
    config, _ = desired_container(make_agent(settings), settings)
    assert all(isinstance(v, str) for v in config["Labels"].values())


def test_render_container_leaves_hash_and_generation_to_desired_container(settings: Settings) -> None:
    labels = render_container(make_agent(settings), settings)["Labels"]
    assert LABEL_HASH not in labels
    assert LABEL_GENERATION not in labels


def test_desired_container_hash_is_the_hash_of_the_rendered_config(settings: Settings) -> None:
    agent = make_agent(settings)
    _, digest = desired_container(agent, settings)
    assert digest == config_hash(render_container(agent, settings))


def test_container_is_hardened(settings: Settings) -> None:
    host = render_container(make_agent(settings), settings)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "CapAdd" not in host
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert host["Init"] is True
    assert isinstance(host["PidsLimit"], int)
    assert host["PidsLimit"] > 0
    assert host["Privileged"] is False
    assert host["RestartPolicy"] == {"Name": "no"}
    assert host["LogConfig"]["Type"] == "json-file"
    assert set(host["LogConfig"]["Config"]) == {"max-size", "max-file"}
    for key in ("PidMode", "IpcMode", "UsernsMode"):
        assert host.get(key) in (None, "")


def test_writable_scratch_space_is_size_limited_tmpfs(settings: Settings) -> None:
    tmpfs = render_container(make_agent(settings), settings)["HostConfig"]["Tmpfs"]
    assert "/tmp" in tmpfs
    assert all("size=" in options for options in tmpfs.values())


def test_agent_joins_its_network_under_its_own_name(settings: Settings) -> None:
    config = render_container(make_agent(settings, network="custom-network", egress={"policy": "AllowAll"}), settings)
    assert config["HostConfig"]["NetworkMode"] == "custom-network"
    assert config["NetworkingConfig"]["EndpointsConfig"] == {"custom-network": {"Aliases": ["heavy-analyzer"]}}


def test_default_network_comes_from_settings(settings: Settings) -> None:
    config = render_container(make_agent(settings, egress={"policy": "AllowAll"}), settings)
    assert config["HostConfig"]["NetworkMode"] == "parallax-agents"


def test_env_is_rendered_as_key_equals_value(settings: Settings) -> None:
    agent = make_agent(settings, env={"API_KEY": "sk-...", "MODE": "a=b"}, egress={"policy": "AllowAll"})
    config = render_container(agent, settings)
    assert sorted(config["Env"]) == ["API_KEY=sk-...", "MODE=a=b"]


def test_seed_volume_is_rendered_as_a_read_only_bind(settings: Settings) -> None:
    config = render_container(make_agent(settings, volumes=["/host/data:/data:ro"]), settings)
    assert config["HostConfig"]["Binds"] == ["/host/data:/data:ro"]


def test_volume_without_a_mode_is_rendered_read_write(settings: Settings) -> None:
    config = render_container(make_agent(settings, volumes=["/host/data/:/data"]), settings)
    assert config["HostConfig"]["Binds"] == ["/host/data:/data:rw"]


def test_no_command_keeps_the_images_entrypoint(settings: Settings) -> None:
    config = render_container(make_agent(settings), settings)
    assert "Entrypoint" not in config
    assert "Cmd" not in config


def test_command_and_args_override_the_image(settings: Settings) -> None:
    config = render_container(make_agent(settings, command=["python", "-m", "agent"], args=["--x"]), settings)
    assert config["Entrypoint"] == ["python", "-m", "agent"]
    assert config["Cmd"] == ["--x"]


def test_stdin_is_kept_open_for_sending_messages(settings: Settings) -> None:
    config = render_container(make_agent(settings), settings)
    assert config["OpenStdin"] is True
    assert config["Tty"] is False


def test_render_is_pure(settings: Settings) -> None:
    agent = make_agent(settings, env={"A": "1"}, volumes=["/host/data:/data:ro"])
    before = copy.deepcopy(agent.to_manifest(redact=False))
    assert render_container(agent, settings) == render_container(agent, settings)
    assert agent.to_manifest(redact=False) == before


# --- the config hash ---------------------------------------------------------------------------


def test_hash_is_stable_for_equal_agents(settings: Settings) -> None:
    assert hash_of(make_agent(settings), settings) == hash_of(make_agent(settings), settings)


def test_hash_does_not_depend_on_dict_key_order(settings: Settings) -> None:
    one = make_agent(settings, env={"A": "1", "B": "2", "C": "3"})
    two = make_agent(settings, env={"C": "3", "A": "1", "B": "2"})
    assert hash_of(one, settings) == hash_of(two, settings)
    config = render_container(one, settings)
    reordered = dict(reversed(list(config.items())))
    reordered["HostConfig"] = dict(reversed(list(config["HostConfig"].items())))
    assert config_hash(reordered) == config_hash(config)


def test_hash_is_a_short_hex_label_value(settings: Settings) -> None:
    digest = hash_of(make_agent(settings), settings)
    assert len(digest) == 32
    int(digest, 16)


@pytest.mark.parametrize(
    "changes",
    [
        {"resources": Resources(memory="1g", cpu=0.5, pids=512)},
        {"resources": Resources(memory="512m", cpu=1.0, pids=512)},
        {"resources": Resources(memory="512m", cpu=0.5, pids=1024)},
        {"env": {"API_KEY": "sk-other"}},
        {"image": "example/agent:2"},
        {"command": ("run",)},
        {"args": ("--x",)},
        {"volumes": ("/host/data:/data:ro",)},
        {"volumes": ("/host/data:/data:rw",)},
        {"network": "custom-network"},
        {"type": "codex"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_hash_changes_when_the_container_would_differ(changes: dict[str, Any], settings: Settings) -> None:
    agent = make_agent(settings, env={"API_KEY": "sk-..."})
    assert hash_of(with_spec(agent, **changes), settings) != hash_of(agent, settings)


def test_hash_changes_when_memory_changes_between_equivalent_looking_specs(settings: Settings) -> None:
    one = make_agent(settings, resources={"memory": "1g"})
    two = make_agent(settings, resources={"memory": "2g"})
    assert hash_of(one, settings) != hash_of(two, settings)


def test_hash_ignores_how_an_equal_quantity_is_written(settings: Settings) -> None:
    one = make_agent(settings, resources={"memory": "1g", "cpu": 0.5})
    two = make_agent(settings, resources={"memory": "1Gi", "cpu": "500m"})
    assert hash_of(one, settings) == hash_of(two, settings)


@pytest.mark.parametrize(
    "changes",
    [{"restart_policy": "Never"}, {"suspend": True}, {"stop_grace_period_seconds": 60}],
    ids=lambda c: next(iter(c)),
)
def test_hash_ignores_settings_the_container_does_not_carry(changes: dict[str, Any], settings: Settings) -> None:
    agent = make_agent(settings)
    assert hash_of(with_spec(agent, **changes), settings) == hash_of(agent, settings)


def test_hash_ignores_generation(settings: Settings) -> None:
    assert hash_of(make_agent(settings, generation=1), settings) == hash_of(
        make_agent(settings, generation=9), settings
    )


def test_hash_ignores_labels_and_ordinary_annotations(settings: Settings) -> None:
    agent = make_agent(settings)
    labelled = agent.copy()
    labelled.metadata.labels = {"team": "research"}
    labelled.metadata.annotations = {"note": "hello", "parallax.ai/other": "x"}
    assert hash_of(labelled, settings) == hash_of(agent, settings)


def test_restarted_at_annotation_changes_the_hash(settings: Settings) -> None:
    agent = make_agent(settings)
    restarted = agent.copy()
    restarted.metadata.annotations = {ANNOTATION_RESTARTED_AT: "2025-01-01T00:00:00Z"}
    again = restarted.copy()
    again.metadata.annotations = {ANNOTATION_RESTARTED_AT: "2025-01-01T00:05:00Z"}
    assert ANNOTATION_RESTARTED_AT == "parallax.ai/restartedAt"
    hashes = {hash_of(agent, settings), hash_of(restarted, settings), hash_of(again, settings)}
    assert len(hashes) == 3


def test_generation_label_follows_generation_without_changing_the_hash(settings: Settings) -> None:
    one, hash_one = desired_container(make_agent(settings, generation=1), settings)
    two, hash_two = desired_container(make_agent(settings, generation=2), settings)
    assert hash_one == hash_two
    assert (one["Labels"][LABEL_GENERATION], two["Labels"][LABEL_GENERATION]) == ("1", "2")
