"""The security policy as pure decisions: what may be mounted, which fields and capabilities are
refused, who may run, and who may call the API (bearer token, bind address)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from api.server.auth import check_bind, is_loopback, is_open, token_matches
from api.server.errors import MAX_JSON_DEPTH, MAX_JSON_ITEMS, json_shape_problem
from controller.admission.admit import AdmissionError, admit
from controller.admission.policy import CAPABILITY_ALLOWLIST, default_volume_root, mount_refusal, volume_roots
from controller.config import ConfigError, Settings
from controller.model.mounts import parse_volume
from controller.runtime.docker.render import render_container, workspace_volume


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "agents.db")


def settings_with(store: str, *roots: str, **overrides: Any) -> Settings:
    return Settings(store_path=store, allowed_volume_roots=roots or None, **overrides)


def refusal(body: dict[str, Any], settings: Settings) -> AdmissionError:
    with pytest.raises(AdmissionError) as excinfo:
        admit({"name": "sec-a", "type": "claude", **body}, settings)
    return excinfo.value


# --- allowed volume roots ----------------------------------------------------------------------


def test_by_default_only_the_volumes_directory_beside_the_store_is_mountable(store: str) -> None:
    settings = settings_with(store)
    root = default_volume_root(settings)
    assert root == os.path.join(os.path.dirname(store), "volumes")
    assert mount_refusal(parse_volume(f"{root}/project:/data:ro"), settings) is None
    refused = mount_refusal(parse_volume("/host/data:/data:ro"), settings)
    assert refused is not None and "outside the allowed volume roots" in refused
    assert "PARALLAX_ALLOWED_VOLUME_ROOTS" in refused


def test_the_seed_volume_is_admitted_once_its_root_is_allowed(store: str) -> None:
    agent, _ = admit(
        {"name": "sec-seed", "type": "claude", "volumes": ["/host/data:/data:ro"]}, settings_with(store, "/host")
    )
    assert agent.spec.volumes == ("/host/data:/data:ro",)


@pytest.mark.parametrize("volume", ["/host/data:/data", "/host/data:/data:rw"])
def test_read_write_mounts_need_a_root_marked_rw(volume: str, store: str) -> None:
    refused = mount_refusal(parse_volume(volume), settings_with(store, "/host"))
    assert refused is not None and "read-write" in refused and "/host:rw" in refused
    assert mount_refusal(parse_volume(volume), settings_with(store, "/host:rw")) is None


def test_the_most_specific_root_decides_whether_writes_are_allowed(store: str) -> None:
    settings = settings_with(store, "/host", "/host/work:rw")
    assert mount_refusal(parse_volume("/host/work/repo:/repo:rw"), settings) is None
    assert "read-write" in (mount_refusal(parse_volume("/host/data:/data:rw"), settings) or "")


def test_roots_are_compared_as_paths_not_as_strings(store: str) -> None:
    refused = mount_refusal(parse_volume("/hostile/data:/data:ro"), settings_with(store, "/host"))
    assert refused is not None and "outside" in refused


def test_dot_dot_cannot_leave_an_allowed_root(store: str) -> None:
    settings = settings_with(store, "/host")
    assert "exposes the host" in (mount_refusal(parse_volume("/host/data/../../etc:/x:ro"), settings) or "")
    assert "outside" in (mount_refusal(parse_volume("/host/../srv:/x:ro"), settings) or "")


def test_a_symlink_inside_a_root_is_judged_by_its_target(tmp_path: Path, store: str) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    (allowed / "root").symlink_to("/")
    settings = settings_with(store, str(allowed))
    assert "outside" in (mount_refusal(parse_volume(f"{allowed}/escape:/x:ro"), settings) or "")
    assert "exposes the host" in (mount_refusal(parse_volume(f"{allowed}/root:/x:ro"), settings) or "")
    assert mount_refusal(parse_volume(f"{allowed}/fine:/x:ro"), settings) is None


@pytest.mark.parametrize(
    "host", ["/", "/etc", "/proc/1", "/sys", "/var/run", "/var", "/root", "/usr/lib", "/var/lib/docker/volumes"]
)
def test_system_paths_are_never_mountable_even_below_an_allowed_root(host: str, store: str) -> None:
    refused = mount_refusal(
        parse_volume(f"{host}:/x:ro"), settings_with(store, "/var", "/etc:rw", "/usr", "/proc", "/sys", "/root")
    )
    assert refused is not None and "exposes the host" in refused


def test_the_docker_socket_is_never_mountable_wherever_it_lives(tmp_path: Path, store: str) -> None:
    socket = tmp_path / "d" / "docker.sock"
    socket.parent.mkdir()
    socket.touch()
    settings = settings_with(store, str(tmp_path), docker_socket=str(socket))
    for host in (str(socket), str(socket.parent)):
        assert "Docker socket" in (mount_refusal(parse_volume(f"{host}:/x:ro"), settings) or "")


def test_the_store_and_the_directories_holding_it_are_never_mountable(tmp_path: Path, store: str) -> None:
    settings = settings_with(store, str(tmp_path))
    for host in (store, os.path.dirname(store), str(tmp_path)):
        assert "store" in (mount_refusal(parse_volume(f"{host}:/x:ro"), settings) or "")


def test_roots_from_the_environment() -> None:
    settings = Settings.from_env({"PARALLAX_ALLOWED_VOLUME_ROOTS": "/host/data, /srv/work:rw"})
    assert settings.allowed_volume_roots == ("/host/data", "/srv/work:rw")
    assert [(r.path, r.writable) for r in volume_roots(settings)] == [("/host/data", False), ("/srv/work", True)]
    assert Settings.from_env({}).allowed_volume_roots is None


@pytest.mark.parametrize("value", ["relative", "/data:rx", "/", "/a,,/b"])
def test_unusable_roots_stop_the_start_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="PARALLAX_ALLOWED_VOLUME_ROOTS"):
        Settings.from_env({"PARALLAX_ALLOWED_VOLUME_ROOTS": value})


# --- admission: every refusal names its field and rule, 403 for policy, 422 for nonsense -----------


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"privileged": True}, "privileged", "privileged mode"),
        ({"hostNetwork": True}, "hostNetwork", "network namespace"),
        ({"hostPID": True}, "hostPID", "PID namespace"),
        ({"hostIPC": True}, "hostIPC", "IPC namespace"),
        ({"devices": ["/dev/kvm"]}, "devices", "devices"),
        ({"network": "host"}, "network", "host network"),
        ({"securityContext": {"privileged": True}}, "securityContext.privileged", "privileged mode"),
        (
            {"securityContext": {"allowPrivilegeEscalation": True}},
            "securityContext.allowPrivilegeEscalation",
            "escalation",
        ),
        ({"securityContext": {"runAsUser": 0}}, "securityContext.runAsUser", "root"),
        (
            {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
            "securityContext.capabilities.add[0]",
            "allowlist",
        ),
        (
            {"securityContext": {"capabilities": {"add": ["CAP_NET_ADMIN"]}}},
            "securityContext.capabilities.add[0]",
            "allowlist",
        ),
        ({"volumes": ["/var/run/docker.sock:/sock"]}, "volumes[0]", "may not be mounted"),
    ],
)
def test_policy_refusals_are_forbidden_and_name_the_rule(
    body: dict[str, Any], field: str, rule: str, store: str
) -> None:
    error = refusal(body, settings_with(store, "/host"))
    assert error.forbidden is True
    assert [e.field for e in error.errors] == [field]
    assert rule in error.errors[0].message


def test_forbidden_fields_in_a_manifest_are_reported_under_spec(store: str) -> None:
    body = {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": "sec-a"},
        "spec": {"type": "claude", "privileged": True},
    }
    with pytest.raises(AdmissionError) as excinfo:
        admit(body, settings_with(store))
    assert excinfo.value.forbidden and excinfo.value.errors[0].field == "spec.privileged"


def test_a_false_privileged_flag_is_still_an_unknown_field(store: str) -> None:
    error = refusal({"privileged": False}, settings_with(store))
    assert error.forbidden is False
    assert error.errors[0].message == "unknown field"


def test_invalid_input_is_reported_before_policy_and_keeps_the_rule(store: str) -> None:
    error = refusal({"privileged": True, "resources": {"memory": "lots"}}, settings_with(store))
    assert error.forbidden is False
    assert {e.field for e in error.errors} == {"privileged", "resources.memory"}
    assert any("privileged mode" in e.message for e in error.errors)


@pytest.mark.parametrize(
    ("volumes", "message"),
    [
        (["/host/a:/workspace:ro"], "reserved"),
        (["/host/a:/tmp:ro"], "reserved"),
        (["/host/a:/data:ro", "/host/b:/data:ro"], "also used by volumes[0]"),
    ],
)
def test_container_paths_that_cannot_work_are_invalid(volumes: list[str], message: str, store: str) -> None:
    error = refusal({"volumes": volumes}, settings_with(store, "/host"))
    assert error.forbidden is False
    assert message in error.errors[0].message


def test_run_as_group_needs_run_as_user(store: str) -> None:
    error = refusal({"securityContext": {"runAsGroup": 1000}}, settings_with(store))
    assert error.forbidden is False and error.errors[0].field == "securityContext.runAsGroup"


def test_allowed_capabilities_and_a_non_root_user_are_rendered(store: str) -> None:
    settings = settings_with(store)
    body = {
        "securityContext": {
            "runAsUser": 4242,
            "runAsGroup": 4243,
            "capabilities": {"add": ["CAP_CHOWN", "NET_BIND_SERVICE"]},
        }
    }
    agent, _ = admit({"name": "sec-a", "type": "claude", **body}, settings)
    config = render_container(agent, settings)
    assert config["User"] == "4242:4243"
    assert config["HostConfig"]["CapAdd"] == ["CHOWN", "NET_BIND_SERVICE"]
    assert config["HostConfig"]["CapDrop"] == ["ALL"]


def test_the_allowlist_holds_no_capability_that_escapes_a_container() -> None:
    for dangerous in ("SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "DAC_READ_SEARCH", "NET_RAW", "SYS_RAWIO"):
        assert dangerous not in CAPABILITY_ALLOWLIST


def test_every_agent_gets_its_workspace_volume_and_keep_does_not_change_the_container(store: str) -> None:
    settings = settings_with(store)
    kept, _ = admit({"name": "sec-a", "type": "claude", "workspace": {"keep": True}}, settings)
    dropped, _ = admit({"name": "sec-a", "type": "claude"}, settings)
    mounts = render_container(kept, settings)["HostConfig"]["Mounts"]
    assert mounts == [{"Type": "volume", "Source": workspace_volume("sec-a"), "Target": "/workspace"}]
    assert workspace_volume("sec-a") == "parallax-workspace-sec-a"
    assert render_container(kept, settings) == render_container(dropped, settings)
    assert kept.spec.keep_workspace and not dropped.spec.keep_workspace


def test_an_agent_runs_as_the_images_user_unless_told(store: str) -> None:
    agent, _ = admit({"name": "sec-a", "type": "claude"}, settings_with(store))
    assert "User" not in render_container(agent, settings_with(store))


# --- API access ----------------------------------------------------------------------------------


def test_token_matches_only_the_exact_bearer_token() -> None:
    token = "s3cret-token-0123456789"
    assert token_matches(f"Bearer {token}", token)
    assert token_matches(f"bearer {token}", token)
    for header in (
        None,
        "",
        token,
        f"Basic {token}",
        f"Bearer {token}x",
        f"Bearer {token[:-1]}",
        "Bearer",
        "Bearer ☃\udc80",
    ):
        assert not token_matches(header, token)


def test_probes_are_open_and_metrics_follow_the_setting() -> None:
    protected, open_metrics = Settings(api_token="t" * 20), Settings(api_token="t" * 20, metrics_auth=False)
    assert is_open("/healthz", protected) and is_open("/readyz", protected)
    assert not is_open("/metrics", protected) and is_open("/metrics", open_metrics)
    assert not is_open("/agents", open_metrics) and not is_open("/openapi.json", open_metrics)
    assert Settings.from_env({"PARALLAX_METRICS_AUTH": "off"}).metrics_auth is False
    assert Settings.from_env({}).metrics_auth is True


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_a_token_less_api_refuses_to_listen_beyond_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match="PARALLAX_API_TOKEN"):
        check_bind(Settings(host=host))
    assert check_bind(Settings(host=host, api_token="a-long-enough-random-token")) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_a_token_less_api_on_loopback_starts_with_a_warning(host: str) -> None:
    assert is_loopback(host)
    warning = check_bind(Settings(host=host))
    assert warning is not None and "unauthenticated" in warning


def test_a_short_token_is_warned_about() -> None:
    assert "shorter" in (check_bind(Settings(api_token="short")) or "")


# --- request bodies ------------------------------------------------------------------------------


def test_bodies_deeper_or_longer_than_any_agent_are_refused() -> None:
    deep: Any = "x"
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    assert "nested deeper" in (json_shape_problem(deep) or "")
    assert "more than" in (json_shape_problem({"command": ["x"] * (MAX_JSON_ITEMS + 1)}) or "")
    assert "more than" in (json_shape_problem({str(i): 1 for i in range(MAX_JSON_ITEMS + 1)}) or "")
    assert json_shape_problem({"name": "a", "spec": {"env": {"A": "b"}, "command": ["x"] * 256}}) is None


def test_a_body_with_hundreds_of_errors_gets_a_bounded_report(store: str) -> None:
    error = refusal({"command": [1] * 300}, settings_with(store))
    assert len(error.errors) == 51
    assert error.errors[-1].message == "251 more errors not shown"  # 300 item types and maxItems, 50 shown
