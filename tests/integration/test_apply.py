"""``POST /apply`` against a real controller and Docker daemon, and the specs-directory follower."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import yaml

from controller.admission.admit import admit, spec_defaults
from controller.apply.applier import Applier
from controller.apply.specs_dir import FILE_ANNOTATION, SOURCE_LABEL, SpecsDirFollower
from controller.apply.yaml_loader import load_documents
from controller.config import Settings
from controller.runtime.docker.runtime import DockerRuntime
from controller.store.sqlite import SqliteStore
from tests.harness import REPO, Controller, inspect, running, wait_for

pytestmark = pytest.mark.docker

EXAMPLES = REPO / "specs" / "examples"


async def apply(controller: Controller, text: str, content_type: str = "application/yaml", **query: str) -> Any:
    assert controller.session is not None
    async with controller.session.post(
        controller.base_url + "/apply", data=text.encode(), headers={"Content-Type": content_type}, params=query
    ) as resp:
        return resp.status, await resp.json()


def outcomes(body: dict[str, Any]) -> dict[str, str]:
    return {r["name"]: r["outcome"] for r in body["results"]}


def examples(tag: str, network: str) -> dict[str, str]:
    """The example specs, renamed ``apply-<name>-<tag>`` (the Docker daemon is shared) and on our network."""
    docs = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text()
        name = yaml.safe_load(text)["metadata"]["name"]
        text = text.replace(f"name: {name}", f"name: apply-{name}-{tag}")
        text = text.replace("network: parallax-agents", f"network: {network}")
        text = text.replace("network: custom-network", f"network: {network}-custom")
        docs[f"apply-{name}-{tag}"] = text
    return docs


def suspended(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """An agent that needs no container: these tests are about the store, not Docker."""
    return {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"type": "claude", "suspend": True, **spec},
    }


def stream(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


async def test_examples_apply_then_reapply_unchanged_then_one_edit_recreates_exactly_one(
    controller: Controller, docker: aiodocker.Docker
) -> None:
    tag = uuid.uuid4().hex[:6]
    files = examples(tag, controller.settings.network)
    assert len(files) >= 5
    status, body = await apply(controller, "---\n".join(files.values()))
    assert status == 200, body
    assert outcomes(body) == dict.fromkeys(files, "created")
    agents = {name: await controller.wait_agent(name, running) for name in files}
    containers = {name: await inspect(docker, agent["status"]["containerId"]) for name, agent in agents.items()}

    status, body = await apply(controller, "---\n".join(files.values()))
    assert status == 200, body
    assert outcomes(body) == dict.fromkeys(files, "unchanged")
    assert all(r["plan"] == [] for r in body["results"])
    for name in files:
        again = await controller.agent(name)
        assert again is not None
        assert again["metadata"]["resourceVersion"] == agents[name]["metadata"]["resourceVersion"], "nothing written"

    heavy = f"apply-heavy-analyzer-{tag}"
    edited = {**files, heavy: files[heavy].replace('memory: "1g"', 'memory: "2g"')}
    assert edited[heavy] != files[heavy]

    status, body = await apply(controller, "---\n".join(edited.values()), dryRun="true")
    assert status == 200, body
    assert body["dryRun"] is True
    assert outcomes(body) == {**dict.fromkeys(files, "unchanged"), heavy: "configured"}
    [result] = [r for r in body["results"] if r["name"] == heavy]
    assert result["plan"] == [
        {
            "action": "recreate",
            "target": f"container parallax-agent-{heavy}",
            "cause": "resources.memory changed 1g -> 2g",
        }
    ]
    after_dry_run = await controller.agent(heavy)
    assert after_dry_run is not None and after_dry_run["spec"]["resources"]["memory"] == "1g"
    assert after_dry_run["metadata"]["resourceVersion"] == agents[heavy]["metadata"]["resourceVersion"]

    status, body = await apply(controller, "---\n".join(edited.values()))
    assert status == 200, body
    assert outcomes(body) == {**dict.fromkeys(files, "unchanged"), heavy: "configured"}
    old_id = agents[heavy]["status"]["containerId"]
    recreated = await controller.wait_agent(heavy, lambda a: running(a) and a["status"]["containerId"] != old_id)
    info = await inspect(docker, recreated["status"]["containerId"])
    assert info is not None and info["HostConfig"]["Memory"] == 2 * 1024**3
    assert await inspect(docker, old_id) is None
    for name in files:
        if name == heavy:
            continue
        now = await inspect(docker, agents[name]["status"]["containerId"])
        before = containers[name]
        assert now is not None and before is not None
        assert now["State"]["StartedAt"] == before["State"]["StartedAt"], f"{name} was touched"


async def test_prune_removes_exactly_the_agents_that_left_the_set(controller: Controller) -> None:
    app = {"app": "apply-prune"}
    names = [f"apply-prune-{i}" for i in range(3)]
    status, body = await apply(
        controller, stream(*(suspended(n, app) for n in names), suspended("apply-bystander", {"app": "other"}))
    )
    assert status == 200, body

    status, body = await apply(
        controller,
        stream(*(suspended(n, app) for n in names[:2])),
        prune="true",
        selector="app=apply-prune",
        dryRun="1",
    )
    assert status == 200, body
    assert [p["name"] for p in body["pruned"]] == [names[2]]
    assert body["pruned"][0]["plan"][0]["action"] == "delete"
    assert await controller.agent(names[2]) is not None, "a dry run deletes nothing"

    status, body = await apply(
        controller, stream(*(suspended(n, app) for n in names[:2])), prune="true", selector="app=apply-prune"
    )
    assert status == 200, body
    assert outcomes(body) == dict.fromkeys(names[:2], "unchanged")
    assert [(p["name"], p["outcome"]) for p in body["pruned"]] == [(names[2], "pruned")]
    await controller.wait_gone(names[2])
    for name in [*names[:2], "apply-bystander"]:
        agent = await controller.agent(name)
        assert agent is not None and agent["metadata"]["deletionTimestamp"] is None


async def test_prune_without_a_selector_is_refused(controller: Controller) -> None:
    status, body = await apply(controller, stream(suspended("apply-lonely")), prune="true")
    assert status == 400
    assert body["error"]["details"][0]["field"] == "selector"
    assert await controller.agent("apply-lonely") is None


async def test_one_invalid_document_applies_nothing_and_names_index_line_and_field(controller: Controller) -> None:
    text = stream(suspended("apply-good"), suspended("apply-bad", resources={"memory": "lots"}))
    status, body = await apply(controller, text)
    assert status == 422
    [detail] = body["error"]["details"]
    assert detail["index"] == 1
    assert detail["name"] == "apply-bad"
    assert detail["field"] == "spec.resources.memory"
    assert text.splitlines()[detail["line"] - 1].strip() == "memory: lots"
    assert outcomes(body) == {"apply-good": "skipped", "apply-bad": "error"}
    assert "nothing was applied" in body["error"]["message"]
    assert await controller.agent("apply-good") is None


async def test_non_atomic_apply_writes_the_valid_documents_and_answers_207(controller: Controller) -> None:
    text = stream(suspended("apply-partial-ok"), suspended("apply-partial-bad", restartPolicy="Sometimes"))
    status, body = await apply(controller, text, atomic="false")
    assert status == 207, body
    assert outcomes(body) == {"apply-partial-ok": "created", "apply-partial-bad": "error"}
    assert body["error"]["code"] == "PARTIALLY_APPLIED"
    assert await controller.agent("apply-partial-ok") is not None
    assert await controller.agent("apply-partial-bad") is None


async def test_forbidden_mount_is_403_and_duplicate_names_are_a_conflict(controller: Controller) -> None:
    status, body = await apply(controller, stream(suspended("apply-sneaky", volumes=["/var/run/docker.sock:/s"])))
    assert status == 403, body
    assert body["error"]["details"][0]["field"] == "spec.volumes[0]"
    status, body = await apply(controller, stream(suspended("apply-twice"), suspended("apply-twice")))
    assert status == 409, body
    assert "also defined by document 0" in body["error"]["details"][0]["message"]
    assert await controller.agent("apply-twice") is None


@pytest.mark.parametrize(
    ("name", "text", "status", "words"),
    [
        (
            "billion-laughs",
            'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
            + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
            400,
            "alias expansion",
        ),
        ("python-tag", "apiVersion: !!python/object/apply:os.system ['touch /tmp/pwned']\n", 400, "not allowed"),
        ("duplicate-key", "metadata: {name: apply-dup}\nmetadata: {name: apply-dup2}\n", 400, "duplicate key"),
        ("recursion", "a: &x [*x]\n", 400, "recursive alias"),
        ("deep", "a: " + "[" * 200 + "]" * 200 + "\n", 400, "nested more than"),
        ("syntax", "metadata: {name: [\n", 400, "invalid YAML"),
    ],
)
async def test_yaml_attacks_are_refused_with_4xx(
    controller: Controller, name: str, text: str, status: int, words: str
) -> None:
    started = time.monotonic()
    got, body = await apply(controller, text)
    assert got == status, body
    assert words in body["error"]["message"]
    assert body["error"]["details"][0]["line"] is not None
    assert time.monotonic() - started < 2.0
    _, listing = await controller.request("GET", "/agents")
    assert listing["items"] == []


async def test_oversized_body_is_413(controller: Controller) -> None:
    status, body = await apply(controller, "a: " + "x" * (controller.settings.max_body_bytes + 10))
    assert status == 413, body


async def test_unquoted_boolean_or_date_where_a_string_is_expected_is_422_with_its_line(
    controller: Controller,
) -> None:
    text = (
        "apiVersion: parallax.ai/v1\nkind: Agent\nmetadata:\n  name: apply-dated\n"
        "  labels: {enabled: yes}\nspec:\n  type: claude\n  suspend: true\n  env:\n    STARTED: 2024-01-01\n"
    )
    status, body = await apply(controller, text)
    assert status == 422, body
    details = {d["field"]: d for d in body["error"]["details"]}
    assert details["metadata.labels.enabled"]["line"] == 5
    assert details["spec.env.STARTED"]["line"] == 10
    assert "quotes" in details["spec.env.STARTED"]["message"]
    assert "2024-01-01" not in json.dumps(body), "env values are never echoed"
    assert await controller.agent("apply-dated") is None


async def test_json_list_with_flat_and_manifest_documents_is_applied(controller: Controller) -> None:
    docs = [{"name": "apply-flat", "type": "claude", "suspend": True}, suspended("apply-manifest")]
    status, body = await apply(controller, json.dumps(docs), content_type="application/json")
    assert status == 200, body
    assert outcomes(body) == {"apply-flat": "created", "apply-manifest": "created"}
    assert body["results"][0]["agent"]["metadata"]["generation"] == 1


async def test_reading_an_agent_back_and_applying_it_changes_nothing_and_keeps_its_secret(
    controller: Controller,
) -> None:
    status, body = await apply(controller, stream(suspended("apply-secret", env={"API_KEY": "sk-apply-secret"})))
    assert status == 200, body
    assert "sk-apply-secret" not in json.dumps(body)
    _, read = await controller.request("GET", "/agents/apply-secret")
    assert read["spec"]["env"] == {"API_KEY": "<redacted>"}
    _, listing = await controller.request("GET", "/agents")
    status, body = await apply(controller, yaml.safe_dump(listing))
    assert status == 200, body
    assert outcomes(body) == {"apply-secret": "unchanged"}

    edited = suspended("apply-secret", env={"API_KEY": "<redacted>", "OTHER": "x"})
    status, body = await apply(controller, stream(edited), dryRun="true")
    assert [s["cause"] for s in body["results"][0]["plan"]] == [
        "env.OTHER added; the container is recreated when resumed"
    ]
    status, body = await apply(controller, stream(suspended("apply-nosecret", env={"K": "<redacted>"})))
    assert status == 422
    assert body["error"]["details"][0]["field"] == "spec.env.K"


# --- the specs-directory follower (store only: no Docker, no HTTP, no sleeps) -----------------------------


@pytest.fixture
async def follower(tmp_path: Path) -> Any:
    settings = Settings(store_path=str(tmp_path / "store" / "agents.db"), allowed_volume_roots=("/host",))
    store = SqliteStore(settings.store_path, spec_defaults(settings))
    await store.open()
    specs = tmp_path / "specs"
    specs.mkdir()
    follow = SpecsDirFollower(specs, Applier(store, settings, DockerRuntime(settings).render))
    yield follow
    await store.close()


async def settle(follow: SpecsDirFollower) -> dict[str, Any]:
    """Two passes: a file is read once it held still for one poll."""
    await follow.sync()
    await follow.sync()
    agents = await follow.applier.store.list()
    return {a.name: a for a in agents if a.metadata.deletion_timestamp is None}


def write(path: Path, *docs: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(stream(*docs))


async def test_specs_dir_follows_added_changed_and_removed_files(follower: SpecsDirFollower) -> None:
    root = follower.root
    write(root / "team" / "a.yaml", suspended("apply-dir-a"), suspended("apply-dir-b"))
    write(root / "c.yaml", suspended("apply-dir-c"))
    (root / "notes.txt").write_text("not a spec")
    agents = await settle(follower)
    assert set(agents) == {"apply-dir-a", "apply-dir-b", "apply-dir-c"}
    assert agents["apply-dir-a"].metadata.labels[SOURCE_LABEL] == "specs-dir"
    assert agents["apply-dir-a"].metadata.annotations[FILE_ANNOTATION] == "team/a.yaml"

    write(root / "team" / "a.yaml", suspended("apply-dir-a", resources={"cpu": 1}))
    agents = await settle(follower)
    assert set(agents) == {"apply-dir-a", "apply-dir-c"}, "the document removed from a.yaml is pruned"
    assert agents["apply-dir-a"].spec.resources.cpu == 1
    assert agents["apply-dir-a"].metadata.generation == 2

    (root / "c.yaml").unlink()
    agents = await settle(follower)
    assert set(agents) == {"apply-dir-a"}


async def test_specs_dir_leaves_other_agents_alone_and_keeps_agents_of_a_broken_file(
    follower: SpecsDirFollower,
) -> None:
    await follower.applier.store.create(admit(suspended("apply-outsider"), follower.applier.settings)[0])
    write(follower.root / "a.yaml", suspended("apply-outsider", resources={"cpu": 2}), suspended("apply-mine"))
    agents = await settle(follower)
    assert "apply-mine" not in agents, "all of a file's documents, or none"
    assert agents["apply-outsider"].spec.resources.cpu == 0.5
    assert "not created from the specs directory" in " ".join(follower.errors["a.yaml"])

    write(follower.root / "a.yaml", suspended("apply-mine"))
    agents = await settle(follower)
    assert set(agents) == {"apply-outsider", "apply-mine"}

    (follower.root / "a.yaml").write_text("metadata: {name: [broken\n")
    agents = await settle(follower)
    assert set(agents) == {"apply-outsider", "apply-mine"}, "a broken file prunes nothing"
    assert "invalid YAML" in follower.errors["a.yaml"][0]


async def test_specs_dir_prunes_agents_whose_file_vanished_while_the_controller_was_down(
    follower: SpecsDirFollower,
) -> None:
    write(follower.root / "a.yaml", suspended("apply-gone"))
    await settle(follower)
    (follower.root / "a.yaml").unlink()
    restarted = SpecsDirFollower(follower.root, follower.applier)
    await restarted.sync()
    agents = await follower.applier.store.list()
    assert [a.name for a in agents if a.metadata.deletion_timestamp is None] == []


async def test_concurrent_applies_do_not_interleave(controller: Controller) -> None:
    docs = [stream(suspended(f"apply-race-{i}", {"app": "apply-race"})) for i in range(4)]
    results = await asyncio.gather(*(apply(controller, d, prune="true", selector="app=apply-race") for d in docs))
    assert all(status == 200 for status, _ in results)
    _, listing = await controller.request("GET", "/agents?labelSelector=app=apply-race")
    alive = [a for a in listing["items"] if a["metadata"]["deletionTimestamp"] is None]
    assert len(alive) == 1


async def test_a_write_landing_during_an_apply_stops_all_of_it(tmp_path: Path) -> None:
    """A POST accepted while an apply is being planned (not yet committed when the apply read the store)
    conflicts with one document: nothing of the apply is written, and the answer names that document."""
    settings = Settings(store_path=str(tmp_path / "store" / "agents.db"))
    store = SqliteStore(settings.store_path, spec_defaults(settings))
    await store.open()
    try:
        await store.create(admit({"name": "apply-atom-kept", "type": "claude", "suspend": True}, settings)[0])
        racing = asyncio.create_task(
            store.create(admit({"name": "apply-atom-b", "type": "codex", "suspend": True}, settings)[0])
        )
        await asyncio.sleep(0)  # the POST is queued for commit, not yet committed
        docs = load_documents(
            stream(
                suspended("apply-atom-a"),
                suspended("apply-atom-b"),
                suspended("apply-atom-kept", {"edited": "yes"}),
            )
        )
        report = await Applier(store, settings, DockerRuntime(settings).render).apply(docs)
        await racing
        outcomes = [(r.name, r.outcome) for r in report.results]
        assert outcomes == [
            ("apply-atom-a", "skipped"),
            ("apply-atom-b", "error"),
            ("apply-atom-kept", "skipped"),
        ], outcomes
        assert "already exists" in report.results[1].errors[0].message
        stored = {a.name: a for a in await store.list()}
        assert set(stored) == {"apply-atom-kept", "apply-atom-b"}
        assert stored["apply-atom-b"].spec.type == "codex", "the racing POST won; apply wrote nothing"
        assert "edited" not in stored["apply-atom-kept"].metadata.labels
    finally:
        await store.close()


async def test_an_apply_never_overwrites_a_put_it_did_not_see(tmp_path: Path) -> None:
    """A PUT rotating a secret is queued (accepted, not yet committed) when an apply of the same agent,
    planned from the older record, is written: the apply conflicts instead of putting the old secret back."""
    settings = Settings(store_path=str(tmp_path / "store" / "agents.db"))
    store = SqliteStore(settings.store_path, spec_defaults(settings))
    await store.open()
    try:
        body = {"name": "apply-lost", "type": "claude", "suspend": True, "env": {"TOKEN": "old"}}
        await store.create(admit(body, settings)[0])
        rotated = asyncio.create_task(store.replace(admit({**body, "env": {"TOKEN": "new"}}, settings)[0]))
        await asyncio.sleep(0)  # the PUT is queued for commit, not yet committed
        docs = load_documents(stream(suspended("apply-lost", {"team": "x"}, env={"TOKEN": "<redacted>"})))
        report = await Applier(store, settings, DockerRuntime(settings).render).apply(docs)
        assert (await rotated).spec.env == {"TOKEN": "new"}
        result = report.results[0]
        assert result.outcome == "error" and "apply again" in result.errors[0].message, result
        stored = await store.get("apply-lost")
        assert stored.spec.env == {"TOKEN": "new"} and "team" not in stored.metadata.labels
    finally:
        await store.close()


async def test_a_dry_run_shows_the_reconcilers_own_operations_and_the_reconciler_does_them(
    controller: Controller,
) -> None:
    """``apply --dry-run`` lists the operations of ``decide`` itself, from the runtime's real instances;
    applying for real then makes exactly those (seen in the agent's events)."""
    name = f"dryops-{uuid.uuid4().hex[:6]}"
    doc = {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"type": "claude", "network": controller.settings.network, "command": ["sleep", "3600"]},
    }
    status, body = await apply(controller, stream(doc), dryRun="true")
    assert status == 200, body
    assert [o["operation"] for o in body["results"][0]["operations"]] == ["create", "start"]
    status, body = await apply(controller, stream(doc))
    assert status == 200, body
    await controller.wait_agent(name, running)

    doc["spec"]["resources"] = {"memory": "96m"}
    status, body = await apply(controller, stream(doc), dryRun="true")
    assert status == 200, body
    planned = body["results"][0]["operations"]
    assert [o["operation"] for o in planned] == ["stop", "remove", "create", "start"], planned
    assert "config hash" in planned[0]["cause"]
    status, _ = await apply(controller, stream(doc))
    assert status == 200

    async def recreated() -> bool:
        _, events = await controller.request("GET", f"/agents/{name}/events")
        return [e["reason"] for e in events["items"]][-3:] == ["Recreating", "Created", "Started"]

    await wait_for(recreated, what="the planned recreate to be done")
    await controller.wait_agent(name, running)
