"""``parallax images build``: build the agent images in ``images/`` through the Docker Engine API.

The plan (which images, in which order, from which base, with which build arguments) is a pure function
of the command line; the rest sends each build context to the daemon and reports its progress. Images
named after our own tags are never pulled: an agent image whose base is missing is an error, while the
base image's own ``FROM`` (by default ``node:22-bookworm-slim``) may be pulled as usual.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import click

IMAGES_DIR = Path(__file__).resolve().parents[2] / "images"
AGENT_IMAGES = ("base", "claude", "codex", "gemini", "aider")
TARGETS = (*AGENT_IMAGES, "testing")
DEFAULT_TAG_PREFIX = "parallax/agent-"
CLI_VERSION_LABEL = "ai.parallax.agent.cli-version"
STAGE_LABEL = "ai.parallax.build-stage"
_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)
_UNREACHABLE = (aiohttp.ClientConnectionError, OSError, asyncio.TimeoutError)


class BuildError(click.ClickException):
    """A build that cannot start or did not succeed; the message says what to do."""


@dataclass(frozen=True)
class BuildStep:
    """One ``docker build``: what to build, from where, and whether its base must already be local."""

    target: str
    tag: str
    context: Path
    from_image: str | None
    base_must_be_local: bool
    buildargs: dict[str, str] = field(default_factory=dict)
    ca_certificates: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildResult:
    tag: str
    seconds: float
    size_bytes: int
    cli_version: str


def expand_targets(names: Iterable[str]) -> list[str]:
    """The images to build, in dependency order (base first); no name or ``all`` means every agent image."""
    wanted = set(names) or {"all"}
    if "all" in wanted:
        wanted = (wanted - {"all"}) | set(AGENT_IMAGES)
    return [target for target in TARGETS if target in wanted]


def dockerfile_default_base(dockerfile: str) -> str | None:
    """The default of ``ARG BASE_IMAGE=...`` in a Dockerfile, the image it builds FROM without arguments."""
    match = re.search(r"^\s*ARG\s+BASE_IMAGE=(\S+)\s*$", dockerfile, re.MULTILINE)
    return match.group(1) if match else None


def split_certificates(pem: str) -> list[str]:
    """The PEM certificates in a bundle, one string each; keys are refused (they never belong in an image)."""
    if "PRIVATE KEY-----" in pem:
        raise click.BadParameter("the file contains a private key; give only CA certificates", param_hint="--ca-bundle")
    certificates = [match.group(0) + "\n" for match in _CERTIFICATE.finditer(pem)]
    if not certificates:
        raise click.BadParameter(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file", param_hint="--ca-bundle"
        )
    return certificates


def plan_builds(
    targets: Sequence[str],
    *,
    images_dir: Path,
    tag_prefix: str,
    base_image: str | None,
    build_args: dict[str, str],
    ca_certificates: Sequence[str] = (),
) -> list[BuildStep]:
    """The builds for ``targets``: base from ``base_image`` (or its Dockerfile's default), agents from base."""
    base_tag = f"{tag_prefix}base:latest"
    steps = []
    for target in targets:
        context = images_dir / target
        args = dict(build_args)
        if target == "base":
            if base_image:
                args["BASE_IMAGE"] = base_image
            default = dockerfile_default_base((context / "Dockerfile").read_text())
            steps.append(
                BuildStep(
                    target,
                    base_tag,
                    context,
                    from_image=base_image or default,
                    base_must_be_local=False,
                    buildargs=args,
                    ca_certificates=tuple(ca_certificates),
                )
            )
        elif target == "testing":
            steps.append(BuildStep(target, f"{tag_prefix}testing:latest", context, None, False, args))
        else:
            args["BASE_IMAGE"] = base_tag
            steps.append(BuildStep(target, f"{tag_prefix}{target}:latest", context, base_tag, True, args))
    return steps


def dockerignore_patterns(context: Path) -> list[str]:
    ignore = context / ".dockerignore"
    if not ignore.exists():
        return []
    lines = (line.strip() for line in ignore.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _ignored(relative: str, patterns: Sequence[str]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in patterns for prefix in prefixes)


def context_tar(context: Path) -> bytes:
    """The build context as a tar archive, honouring simple ``.dockerignore`` patterns like the docker CLI."""
    patterns = dockerignore_patterns(context)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(context.rglob("*")):
            relative = path.relative_to(context).as_posix()
            if not _ignored(relative, patterns):
                archive.add(path, arcname=relative, recursive=False)
    return buffer.getvalue()


@contextlib.contextmanager
def staged_context(step: BuildStep) -> Iterator[Path]:
    """The step's context directory; a temporary copy when CA certificates or a busybox must be added."""
    needs_busybox = step.target == "testing" and not (step.context / "busybox").exists()
    if not step.ca_certificates and not needs_busybox:
        yield step.context
        return
    with tempfile.TemporaryDirectory(prefix=f"parallax-build-{step.target}-") as tmp:
        staged = Path(tmp) / step.target
        shutil.copytree(step.context, staged, symlinks=True)
        if step.ca_certificates:
            folder = staged / "ca-certificates"
            folder.mkdir(exist_ok=True)
            for index, certificate in enumerate(step.ca_certificates, start=1):
                (folder / f"parallax-extra-{index:03d}.crt").write_text(certificate)
        if needs_busybox:
            busybox = shutil.which("busybox") or "/bin/busybox"
            if not Path(busybox).exists():
                raise BuildError("the testing image needs a static busybox: apt-get install busybox-static")
            shutil.copy(busybox, staged / "busybox")
        yield staged


def _human_size(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"


class ImageBuilder:
    """Runs planned builds against one Docker daemon, echoing progress."""

    def __init__(self, docker: aiodocker.Docker, *, verbose: bool, echo: Any = click.echo) -> None:
        self.docker = docker
        self.verbose = verbose
        self.echo = echo

    async def check_daemon(self, url: str) -> None:
        try:
            await asyncio.wait_for(self.docker.version(), 10)
        except (*_UNREACHABLE, aiodocker.DockerError) as exc:
            detail = exc.message if isinstance(exc, aiodocker.DockerError) else str(exc) or type(exc).__name__
            raise BuildError(
                f"cannot reach the Docker daemon at {url}: {detail}\n"
                "is it running? (scripts/setup.sh starts it; DOCKER_SOCKET names another socket)"
            ) from exc

    async def image(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.docker.images.inspect(name)
            return result
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def check_bases(self, steps: Sequence[BuildStep]) -> None:
        """Fail before building anything when an agent image's base is neither local nor built first."""
        built = {step.tag for step in steps}
        for step in steps:
            local_base = step.base_must_be_local and step.from_image and step.from_image not in built
            if local_base and step.from_image and await self.image(step.from_image) is None:
                raise BuildError(
                    f"{step.tag} is built FROM {step.from_image}, which is not present locally (it is never pulled); "
                    "build it first: parallax images build base [--base-image IMG]"
                )

    async def build(self, step: BuildStep) -> BuildResult:
        if step.from_image and not step.base_must_be_local and await self.image(step.from_image) is None:
            self.echo(f"  base image {step.from_image} is not present locally; Docker will try to pull it")
        previous = await self.image(step.tag)
        started = time.monotonic()
        self.echo(
            f"==> building {step.tag} from images/{step.target}"
            + (f" (FROM {step.from_image})" if step.from_image else "")
        )
        tail: collections.deque[str] = collections.deque(maxlen=60)
        try:
            with staged_context(step) as context:
                archive = context_tar(context)
            async for line in self._stream(step, archive):
                tail.append(line)
                if self.verbose:
                    self.echo(f"  {line}")
                elif line.startswith("Step "):
                    self.echo(f"  {line[:150]}")
        except _UNREACHABLE as exc:
            raise BuildError(f"lost the Docker daemon while building {step.tag}: {exc}") from exc
        except (aiodocker.DockerError, BuildFailed) as exc:
            message = exc.message if isinstance(exc, aiodocker.DockerError) else str(exc)
            for line in tail:
                self.echo(f"  | {line}", err=True)
            hint = ""
            if step.from_image and not step.base_must_be_local and await self.image(step.from_image) is None:
                hint = (
                    f"\nthe base image {step.from_image} is missing and could not be pulled; build from a local "
                    "image: scripts/make-debian-base.sh, then --base-image parallax/debian-bookworm:local"
                )
            elapsed = time.monotonic() - started
            raise BuildError(f"building {step.tag} failed after {elapsed:.0f} s: {message.strip()}{hint}") from exc
        seconds = time.monotonic() - started
        image = await self.image(step.tag)
        if image is None:
            raise BuildError(f"the build of {step.tag} reported success but the image is missing")
        await self._remove_replaced(previous, image)
        await self._prune_stage_images()
        labels = (image.get("Config") or {}).get("Labels") or {}
        result = BuildResult(step.tag, seconds, int(image.get("Size", 0)), labels.get(CLI_VERSION_LABEL, ""))
        version = f", {step.target} {result.cli_version}" if result.cli_version else ""
        self.echo(f"==> built {step.tag} in {seconds:.0f} s ({_human_size(result.size_bytes)}{version})")
        return result

    async def _stream(self, step: BuildStep, archive: bytes) -> AsyncIterator[str]:
        chunks = self.docker.images.build(
            fileobj=io.BytesIO(archive),
            encoding="application/x-tar",
            tag=step.tag,
            buildargs=step.buildargs,
            rm=True,
            forcerm=True,
            stream=True,
        )
        async for chunk in chunks:
            if "error" in chunk:
                raise BuildFailed(str(chunk.get("error", "")).strip())
            text = chunk.get("stream") or chunk.get("status") or ""
            for line in str(text).splitlines():
                if line.strip():
                    yield line.rstrip()

    async def _prune_stage_images(self) -> None:
        """The legacy builder leaves each build's intermediate stage (the base's ``node`` stage) as an
        untagged image; keep the newest one as the cache for the next build and remove the older ones."""
        stages = await self.docker.images.list(filters={"dangling": ["true"], "label": [STAGE_LABEL]})
        stages.sort(key=lambda image: int(image.get("Created", 0)), reverse=True)
        for image in stages[1:]:
            with contextlib.suppress(aiodocker.DockerError):
                await self.docker.images.delete(str(image["Id"]), noprune=False)
                self.echo(f"  removed an older build-stage image {str(image['Id'])[7:19]}")

    async def _remove_replaced(self, previous: dict[str, Any] | None, current: dict[str, Any]) -> None:
        """Rebuilding a tag leaves the old image dangling: remove it when nothing else names or uses it."""
        if previous is None or previous.get("Id") == current.get("Id"):
            return
        old = await self.image(str(previous["Id"]))
        if old is None or old.get("RepoTags"):
            return
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.images.delete(str(previous["Id"]), noprune=False)
            self.echo(f"  removed the replaced image {str(previous['Id'])[7:19]}")


class BuildFailed(Exception):
    """The daemon reported an error in the build stream."""


async def run_builds(steps: Sequence[BuildStep], *, docker_url: str, verbose: bool) -> list[BuildResult]:
    docker = aiodocker.Docker(url=docker_url)
    try:
        builder = ImageBuilder(docker, verbose=verbose)
        await builder.check_daemon(docker_url)
        await builder.check_bases(steps)
        return [await builder.build(step) for step in steps]
    finally:
        await docker.close()


def _parse_build_args(values: Sequence[str]) -> dict[str, str]:
    args = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--build-arg")
        args[key] = rest
    return args


@click.group()
def images() -> None:
    """Build the agent images (parallax/agent-base, -claude, -codex, -gemini, -aider, -testing)."""


@images.command()
@click.argument("targets", nargs=-1, type=click.Choice([*TARGETS, "all"]))
@click.option(
    "--base-image",
    metavar="IMG",
    help="Image to build agent-base FROM (default: the Dockerfile's node:22-bookworm-slim). "
    "Any local Debian-based image works, e.g. one made by scripts/make-debian-base.sh.",
)
@click.option(
    "--tag-prefix", default=DEFAULT_TAG_PREFIX, show_default=True, metavar="P", help="Images are tagged P<name>:latest."
)
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM file of extra CA certificates (e.g. a TLS-intercepting proxy's) for the base image's trust store.",
)
@click.option("--build-arg", "build_arg", multiple=True, metavar="KEY=VALUE", help="Extra build argument (repeatable).")
@click.option("--images-dir", type=click.Path(file_okay=False, path_type=Path), default=IMAGES_DIR, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Show the full build output, not only the steps.")
def build(
    targets: tuple[str, ...],
    base_image: str | None,
    tag_prefix: str,
    ca_bundle: Path | None,
    build_arg: tuple[str, ...],
    images_dir: Path,
    verbose: bool,
) -> None:
    """Build TARGETS (base, claude, codex, gemini, aider, testing or all; default all = base and the four agents).

    Agent images are built FROM <prefix>base:latest, which must exist or be built in the same run.
    """
    wanted = expand_targets(targets)
    certificates = split_certificates(ca_bundle.read_text(errors="replace")) if ca_bundle else []
    if certificates and "base" not in wanted:
        click.echo("note: --ca-bundle only changes the base image; the others inherit its trust store")
    steps = plan_builds(
        wanted,
        images_dir=images_dir,
        tag_prefix=tag_prefix,
        base_image=base_image,
        build_args=_parse_build_args(build_arg),
        ca_certificates=certificates,
    )
    for step in steps:
        if not (step.context / "Dockerfile").exists():
            raise BuildError(f"no Dockerfile in {step.context}")
    docker_url = f"unix://{os.environ.get('DOCKER_SOCKET', '/var/run/docker.sock')}"
    started = time.monotonic()
    results = asyncio.run(run_builds(steps, docker_url=docker_url, verbose=verbose))
    click.echo(f"built {len(results)} image(s) in {time.monotonic() - started:.0f} s:")
    for result in results:
        version = f"  {result.cli_version}" if result.cli_version else ""
        click.echo(f"  {result.tag:<36} {_human_size(result.size_bytes):>8} {result.seconds:6.0f} s{version}")


if __name__ == "__main__":
    images()
