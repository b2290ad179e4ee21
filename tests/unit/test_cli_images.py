"""``parallax images build``: the build plan, the CA bundle handling and the errors a user sees first."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli.images import (
    AGENT_IMAGES,
    IMAGES_DIR,
    context_tar,
    dockerfile_default_base,
    expand_targets,
    images,
    plan_builds,
    split_certificates,
)

CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----"


def test_no_target_or_all_means_base_and_the_four_agents_base_first() -> None:
    assert expand_targets([]) == list(AGENT_IMAGES)
    assert expand_targets(["all"]) == ["base", "claude", "codex", "gemini", "aider"]
    assert expand_targets(["aider", "base", "aider"]) == ["base", "aider"]
    assert expand_targets(["all", "testing"])[-1] == "testing"


def test_base_is_built_from_the_given_image_and_agents_from_the_local_base() -> None:
    steps = plan_builds(
        ["base", "claude"],
        images_dir=IMAGES_DIR,
        tag_prefix="px/agent-",
        base_image="debian:local",
        build_args={"X": "1"},
    )
    base, claude = steps
    assert (base.tag, base.from_image, base.base_must_be_local) == ("px/agent-base:latest", "debian:local", False)
    assert base.buildargs == {"X": "1", "BASE_IMAGE": "debian:local"}
    assert (claude.tag, claude.from_image, claude.base_must_be_local) == (
        "px/agent-claude:latest",
        "px/agent-base:latest",
        True,
    )
    assert claude.buildargs["BASE_IMAGE"] == "px/agent-base:latest"


def test_without_base_image_the_base_builds_from_its_dockerfile_default() -> None:
    (base,) = plan_builds(["base"], images_dir=IMAGES_DIR, tag_prefix="p/", base_image=None, build_args={})
    assert base.from_image == "node:22-bookworm-slim"
    assert "BASE_IMAGE" not in base.buildargs
    assert dockerfile_default_base("FROM x\n") is None


def test_a_ca_bundle_is_split_into_one_certificate_each_and_keys_are_refused() -> None:
    assert split_certificates(f"junk\n{CERT}\n{CERT}\n") == [CERT + "\n", CERT + "\n"]
    with pytest.raises(Exception, match="no PEM certificate"):
        split_certificates("hello")
    with pytest.raises(Exception, match="private key"):
        split_certificates(CERT + "\n-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n")


def test_build_context_leaves_out_what_dockerignore_names(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "ca-certificates").mkdir()
    (tmp_path / "ca-certificates" / "README.md").write_text("doc")
    (tmp_path / "ca-certificates" / "proxy.crt").write_text(CERT)
    (tmp_path / ".dockerignore").write_text("# comment\nca-certificates/README.md\n")
    with tarfile.open(fileobj=io.BytesIO(context_tar(tmp_path))) as archive:
        names = sorted(archive.getnames())
    assert names == [".dockerignore", "Dockerfile", "ca-certificates", "ca-certificates/proxy.crt"]


def test_build_says_plainly_when_the_docker_daemon_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_SOCKET", str(tmp_path / "no-docker.sock"))
    result = CliRunner().invoke(images, ["build", "claude"])
    assert result.exit_code == 1
    assert "cannot reach the Docker daemon at unix://" in result.output
    assert "is it running?" in result.output


def test_build_rejects_an_unknown_image_and_a_file_without_certificates(tmp_path: Path) -> None:
    result = CliRunner().invoke(images, ["build", "chatgpt"])
    assert result.exit_code == 2
    assert "'chatgpt' is not one of" in result.output
    not_pem = tmp_path / "bundle.pem"
    not_pem.write_text("nothing here")
    result = CliRunner().invoke(images, ["build", "base", "--ca-bundle", str(not_pem)])
    assert result.exit_code == 2
    assert "--ca-bundle" in result.output
