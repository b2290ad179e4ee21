"""The Secret resource's pure parts: admission (names, keys, sizes, never quoting a value), versions,
and resolving an agent's secretKeyRef env."""

from __future__ import annotations

import base64
from pathlib import Path

from controller.admission.admit import admit
from controller.admission.secret import parse_secret
from controller.config import Settings
from controller.model.secret import Secret, resolve_env
from controller.runtime.docker.render import desired_container

VALUE = "sk-model-test-value-91e2"


def fields(body: object, name: str | None = None) -> dict[str, str]:
    _, errors = parse_secret(body, name=name)
    return {e.field: e.message for e in errors}


def test_kubernetes_names_keys_and_base64_are_checked_and_no_message_quotes_a_value():
    assert fields({"metadata": {"name": "a.b-c"}, "data": {"k": base64.b64encode(b"v").decode()}}) == {}
    bad = fields(
        {
            "metadata": {"name": "-bad"},
            "data": {"ok": VALUE, "bad/key": "djE="},
            "stringData": {"nul": VALUE + "\x00", "long": "x" * 32769},
            "extra": 1,
        }
    )
    assert set(bad) == {"metadata.name", "data.ok", "data.bad/key", "stringData.nul", "stringData.long", "extra"}
    assert all(VALUE not in message for message in bad.values())
    assert "metadata.name" in fields({"metadata": {"name": "other"}, "stringData": {"k": "v"}}, name="mine")
    assert fields({"metadata": {"name": "x"}}) == {"data": "a Secret needs at least one key (in data or stringData)"}
    secret, _ = parse_secret({"metadata": {"name": "x"}, "data": {"k": "YQ=="}, "stringData": {"k": "b"}})
    assert secret.data == {"k": "b"}  # stringData wins, as in Kubernetes


def test_versions_move_with_the_data_and_each_key_with_its_value():
    first = Secret("s", {"a": "1", "b": "2"}, version=1, key_versions={"a": 1, "b": 1})
    assert first.next_version({"a": "1", "b": "2"}, {"l": "x"}).version == 1
    second = first.next_version({"a": "1", "b": "3", "c": "4"}, {})
    assert (second.version, second.key_versions) == (2, {"a": 1, "b": 2, "c": 2})
    assert second.to_public(["agent"])["keys"] == {"a": {"version": 1}, "b": {"version": 2}, "c": {"version": 2}}


def test_resolving_puts_the_value_in_the_rendered_env_and_its_hash_moves_with_it(tmp_path: Path):
    s = Settings(store_path=str(tmp_path / "agents.db"))
    ref = {"secretKeyRef": {"name": "anthropic", "key": "apiKey"}}
    agent = admit({"name": "a", "type": "claude", "env": {"KEY": ref, "INLINE": "i"}}, s)[0]
    resolved, missing = resolve_env(agent, {"anthropic": Secret("anthropic", {"apiKey": VALUE})})
    assert missing == [] and resolved.spec.env == {"INLINE": "i", "KEY": VALUE} and agent.spec.env == {"INLINE": "i"}
    body, digest = desired_container(resolved, s)
    assert f"KEY={VALUE}" in body["Env"]
    rolled, _ = resolve_env(agent, {"anthropic": Secret("anthropic", {"apiKey": VALUE + "2"})})
    assert desired_container(rolled, s)[1] != digest
    unresolved, missing = resolve_env(agent, {"anthropic": Secret("anthropic", {"other": "x"})})
    assert [m.message() for m in missing] == ["env KEY: secret 'anthropic' has no key 'apiKey'"]
    assert "KEY=<secretKeyRef anthropic/apiKey>" in desired_container(unresolved, s)[0]["Env"]
    _, gone = resolve_env(agent, {})
    assert [m.message() for m in gone] == ["env KEY: secret 'anthropic' does not exist"]
