"""Settings from the environment: the seed's names and defaults, and refusals that name the variable."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, Settings


def test_empty_environment_gives_the_seed_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.port == 3200
    assert settings.docker_socket == "/var/run/docker.sock"
    assert settings.network == "parallax-agents"
    assert settings.default_memory == "512m"
    assert settings.default_cpu == 0.5
    assert settings.host == "127.0.0.1"
    assert settings.api_token is None
    assert settings.image_prefix == "parallax/agent-"
    assert settings.docker_url == "unix:///var/run/docker.sock"


def test_from_env_does_not_read_the_process_environment_when_given_a_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("DOCKER_NETWORK", "from-process")
    settings = Settings.from_env({})
    assert settings.port == 3200
    assert settings.network == "parallax-agents"


def test_from_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    assert Settings.from_env().port == 9999


def test_values_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "PORT": "8080",
            "DOCKER_SOCKET": "/tmp/docker.sock",
            "DOCKER_NETWORK": "lab-net",
            "DEFAULT_MEMORY": "1g",
            "DEFAULT_CPU": "2",
            "PARALLAX_HOST": "0.0.0.0",
            "PARALLAX_STORE": "/tmp/parallax/agents.db",
            "PARALLAX_API_TOKEN": "t0ken",
            "PARALLAX_IMAGE_PREFIX": "registry.local/agent-",
            "PARALLAX_WORKERS": "8",
            "PARALLAX_RESYNC_SECONDS": "5",
            "PARALLAX_INSTANCE": "ci",
            "PARALLAX_IDLE_TIMEOUT": "15",
        }
    )
    assert settings.idle_timeout_seconds == 15.0
    assert settings.port == 8080
    assert settings.docker_socket == "/tmp/docker.sock"
    assert settings.docker_url == "unix:///tmp/docker.sock"
    assert settings.network == "lab-net"
    assert settings.default_memory == "1g"
    assert settings.default_cpu == 2.0
    assert settings.host == "0.0.0.0"
    assert settings.store_path == "/tmp/parallax/agents.db"
    assert settings.api_token == "t0ken"
    assert settings.image_prefix == "registry.local/agent-"
    assert settings.workers == 8
    assert settings.resync_seconds == 5.0
    assert settings.instance == "ci"


@pytest.mark.parametrize(("memory", "cpu", "expected_cpu"), [("2Gi", "500m", 0.5), ("1G", "1.0", 1.0)])
def test_default_quantities_accept_every_documented_form(memory: str, cpu: str, expected_cpu: float) -> None:
    settings = Settings.from_env({"DEFAULT_MEMORY": memory, "DEFAULT_CPU": cpu})
    assert settings.default_memory == memory
    assert settings.default_cpu == expected_cpu


def test_empty_values_fall_back_to_defaults() -> None:
    settings = Settings.from_env({"PORT": "", "PARALLAX_API_TOKEN": "", "PARALLAX_WORKERS": ""})
    assert settings.port == 3200
    assert settings.api_token is None
    assert settings.workers == 4


@pytest.mark.parametrize("port", ["abc", "0", "70000", "-1", "3200.5"])
def test_invalid_port_is_refused_naming_port(port: str) -> None:
    with pytest.raises(ConfigError, match=r"^PORT\b"):
        Settings.from_env({"PORT": port})


@pytest.mark.parametrize("port", ["1", "65535"])
def test_port_range_bounds_are_accepted(port: str) -> None:
    assert Settings.from_env({"PORT": port}).port == int(port)


@pytest.mark.parametrize("memory", ["lots", "0", "-1g", "1m"])
def test_invalid_default_memory_is_refused_naming_the_variable(memory: str) -> None:
    with pytest.raises(ConfigError, match=r"^DEFAULT_MEMORY\b"):
        Settings.from_env({"DEFAULT_MEMORY": memory})


@pytest.mark.parametrize("cpu", ["0", "fast", "-1", "0m"])
def test_invalid_default_cpu_is_refused_naming_the_variable(cpu: str) -> None:
    with pytest.raises(ConfigError, match=r"^DEFAULT_CPU\b"):
        Settings.from_env({"DEFAULT_CPU": cpu})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PARALLAX_WORKERS", "0"),
        ("PARALLAX_WORKERS", "many"),
        ("PARALLAX_RESYNC_SECONDS", "0"),
        ("PARALLAX_RESYNC_SECONDS", "soon"),
        ("PARALLAX_DEFAULT_PIDS", "1"),
        ("PARALLAX_MAX_BODY_BYTES", "10"),
    ],
)
def test_other_invalid_numbers_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}\b"):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name", ["DOCKER_NETWORK", "PARALLAX_IMAGE_PREFIX", "PARALLAX_INSTANCE"])
def test_empty_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: ""})


def test_nan_resync_period_is_refused() -> None:
    with pytest.raises(ConfigError, match="PARALLAX_RESYNC_SECONDS"):
        Settings.from_env({"PARALLAX_RESYNC_SECONDS": "nan"})


def test_host_network_as_the_default_network_is_refused() -> None:
    with pytest.raises(ConfigError, match="DOCKER_NETWORK"):
        Settings.from_env({"DOCKER_NETWORK": "host"})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_the_runtime_is_docker_unless_named_and_an_unknown_one_is_refused() -> None:
    assert Settings.from_env({}).runtime == "docker"
    assert Settings.from_env({"PARALLAX_RUNTIME": "docker"}).runtime == "docker"
    assert Settings.from_env({"PARALLAX_RUNTIME": "swarm"}).runtime == "swarm"
    with pytest.raises(ConfigError, match="PARALLAX_RUNTIME"):
        Settings.from_env({"PARALLAX_RUNTIME": "kubernetes"})


def test_swarm_node_endpoints_are_hostname_url_pairs() -> None:
    settings = Settings.from_env({"PARALLAX_SWARM_NODES": "n1=unix:///run/n1.sock, n2=tcp://10.0.0.2:2376"})
    assert settings.swarm_nodes == (("n1", "unix:///run/n1.sock"), ("n2", "tcp://10.0.0.2:2376"))
    with pytest.raises(ConfigError, match="PARALLAX_SWARM_NODES"):
        Settings.from_env({"PARALLAX_SWARM_NODES": "n1=/run/n1.sock"})
