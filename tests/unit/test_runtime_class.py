"""``spec.runtimeClassName``: its admission (defaults and refusals), its rendering (runtime, translated
pids limit, hash) and how a failed runsc start's leftovers are found on /proc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.admission.admit import AdmissionError, admit, asks_for_gvisor
from controller.config import ConfigError, Settings
from controller.model.agent import Agent, AgentSpec
from controller.model.runtime_class import GVISOR_MAX_PIDS, host_pids_limit
from controller.runtime.docker.render import desired_container
from controller.runtime.docker.sandbox import find_leftovers

BOTH = frozenset({"runc", "gvisor"})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "agents.db"))


def agent(settings: Settings, classes: frozenset[str] | None = BOTH, **body: Any) -> Agent:
    admitted, _ = admit({"name": "a", "type": "claude", **body}, settings, runtime_classes=classes)
    return admitted


def refusal(settings: Settings, classes: frozenset[str] | None = BOTH, **body: Any) -> dict[str, str]:
    with pytest.raises(AdmissionError) as caught:
        agent(settings, classes, **body)
    assert not caught.value.forbidden
    return {e.field: e.message for e in caught.value.errors}


def test_unset_is_the_settings_default_and_stored_explicitly(settings: Settings, tmp_path: Path) -> None:
    assert agent(settings).spec.runtime_class_name == "runc"
    gvisor_default = Settings(store_path=str(tmp_path / "agents.db"), default_runtime_class="gvisor")
    spec = agent(gvisor_default).spec
    assert spec.runtime_class_name == "gvisor" and spec.to_dict()["runtimeClassName"] == "gvisor"


def test_a_record_stored_before_the_field_existed_stays_runc(settings: Settings, tmp_path: Path) -> None:
    from controller.admission.admit import spec_defaults

    gvisor_default = Settings(store_path=str(tmp_path / "agents.db"), default_runtime_class="gvisor")
    spec = AgentSpec.from_dict({"type": "claude"}, spec_defaults(gvisor_default))
    assert spec.runtime_class_name == "runc"


def test_unknown_class_is_422_naming_the_field(settings: Settings) -> None:
    assert "runtimeClassName" in refusal(settings, runtimeClassName="kata")
    manifest = {"apiVersion": "parallax.ai/v1", "kind": "Agent", "metadata": {"name": "a"}}
    admitted, _ = admit({**manifest, "spec": {"type": "claude", "runtimeClassName": "gvisor"}}, settings)
    assert admitted.spec.runtime_class_name == "gvisor"  # the daemon not asked: admitted, Docker decides
    with pytest.raises(AdmissionError) as caught:
        admit({**manifest, "spec": {"type": "claude", "runtimeClassName": "kata"}}, settings)
    assert [e.field for e in caught.value.errors] == ["spec.runtimeClassName"]


def test_gvisor_without_runsc_on_the_daemon_is_422(settings: Settings) -> None:
    message = refusal(settings, frozenset({"runc"}), runtimeClassName="gvisor")["runtimeClassName"]
    assert "runsc" in message and "setup-gvisor.sh" in message
    assert agent(settings, frozenset({"runc"})).spec.runtime_class_name == "runc"  # runc needs nothing


def test_gvisor_on_the_swarm_runtime_is_422(tmp_path: Path) -> None:
    swarm = Settings(store_path=str(tmp_path / "agents.db"), runtime="swarm")
    assert "Swarm service" in refusal(swarm, runtimeClassName="gvisor")["runtimeClassName"]


def test_gvisor_limits_it_cannot_keep_are_422(settings: Settings) -> None:
    assert "32 MiB" in refusal(settings, runtimeClassName="gvisor", resources={"memory": "16m"})["resources.memory"]
    too_many = {"pids": GVISOR_MAX_PIDS + 1}
    assert "resources.pids" in refusal(settings, runtimeClassName="gvisor", resources=too_many)
    assert agent(settings, runtimeClassName="gvisor", resources={"memory": "32m", "pids": GVISOR_MAX_PIDS})


def test_default_gvisor_with_the_swarm_runtime_does_not_start() -> None:
    with pytest.raises(ConfigError, match="PARALLAX_DEFAULT_RUNTIME_CLASS"):
        Settings.from_env({"PARALLAX_RUNTIME": "swarm", "PARALLAX_DEFAULT_RUNTIME_CLASS": "gvisor"})
    with pytest.raises(ConfigError, match="PARALLAX_DEFAULT_RUNTIME_CLASS"):
        Settings.from_env({"PARALLAX_DEFAULT_RUNTIME_CLASS": "kata"})
    assert Settings.from_env({"PARALLAX_DEFAULT_RUNTIME_CLASS": "gvisor"}).default_runtime_class == "gvisor"


def test_only_bodies_that_may_become_gvisor_ask_the_daemon(settings: Settings, tmp_path: Path) -> None:
    assert not asks_for_gvisor({"name": "a", "type": "claude"}, settings)
    assert asks_for_gvisor({"runtimeClassName": "gvisor"}, settings)
    assert asks_for_gvisor({"spec": {"runtimeClassName": "gvisor"}}, settings)
    gvisor_default = Settings(store_path=str(tmp_path / "agents.db"), default_runtime_class="gvisor")
    assert asks_for_gvisor({"name": "a"}, gvisor_default)


def test_render_sets_the_runtime_and_translates_pids_only_under_gvisor(settings: Settings) -> None:
    runc_body, runc_hash = desired_container(agent(settings, resources={"pids": 100}), settings)
    assert "Runtime" not in runc_body["HostConfig"]  # the body (and hash) an agent had before the field
    assert runc_body["HostConfig"]["PidsLimit"] == 100
    body, digest = desired_container(agent(settings, runtimeClassName="gvisor", resources={"pids": 100}), settings)
    assert body["HostConfig"]["Runtime"] == "runsc"
    assert body["HostConfig"]["PidsLimit"] == host_pids_limit("gvisor", 100) == 64 + 10 * 100
    assert digest != runc_hash  # changing the class makes a new container


def _process(proc: Path, pid: int, *argv: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_leftovers_are_found_by_container_id_with_their_roots(tmp_path: Path) -> None:
    cid, other = "a" * 64, "b" * 64
    task = "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby"
    _process(tmp_path, 10, "/usr/bin/containerd-shim-runc-v2", "-namespace", "moby", "-id", cid, "-address", "/x.sock")
    _process(tmp_path, 11, "runsc-sandbox", "--root=/run/docker/runtime-runc/moby", f"--log={task}/{cid}/log.json")
    _process(tmp_path, 12, "runsc-gofer", "--root=/run/docker/runtime-runc/moby", f"--log={task}/{cid}/log.json")
    _process(tmp_path, 13, "/usr/bin/containerd-shim-runc-v2", "-namespace", "moby", "-id", other)
    (tmp_path / "self").mkdir()
    found = find_leftovers(cid, str(tmp_path))
    assert found.found and found.shim_pids == [10] and sorted(found.sandbox_pids) == [11, 12]
    assert found.runsc_root == "/run/docker/runtime-runc/moby" and found.containerd_address == "/x.sock"
    assert not find_leftovers("c" * 64, str(tmp_path)).found
