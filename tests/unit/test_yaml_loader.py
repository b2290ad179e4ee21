"""The safe YAML loader: what it reads, what it refuses (quickly), and the lines it reports."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from controller.apply.yaml_loader import MAX_BYTES, MAX_DEPTH, YamlError, load_documents, load_json_documents

AGENT = """\
apiVersion: parallax.ai/v1
kind: Agent
metadata:
  name: reader
  labels: {team: research}
spec:
  type: claude
  resources:
    memory: 512m
    cpu: 0.5
  env:
    API_KEY: "sk-secret"
"""


def refused(text: str | bytes, max_bytes: int = MAX_BYTES) -> YamlError:
    with pytest.raises(YamlError) as info:
        load_documents(text, max_bytes=max_bytes)
    return info.value


def test_manifest_is_read_as_plain_json_data_with_field_lines() -> None:
    [doc] = load_documents(AGENT)
    assert doc.body["spec"]["resources"] == {"memory": "512m", "cpu": 0.5}
    assert doc.problems == []
    assert doc.line == 1
    assert doc.line_of("spec.resources.memory") == 9
    assert doc.line_of("metadata.labels.team") == 5
    # A missing field is placed at its nearest written ancestor.
    assert doc.line_of("spec.resources.pids") == 8
    assert doc.line_of("spec.nothing.here") == 6


def test_several_documents_keep_their_order_and_empty_ones_are_skipped() -> None:
    stream = "---\n# only a comment\n---\n" + AGENT + "---\n" + AGENT.replace("reader", "writer") + "---\n"
    docs = load_documents(stream)
    assert [d.body["metadata"]["name"] for d in docs] == ["reader", "writer"]
    assert [d.index for d in docs] == [0, 1]
    assert docs[1].line is not None and docs[1].line_of("spec.type") == docs[1].line + 6


def test_billion_laughs_is_refused_quickly_without_eating_memory() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    tracemalloc.start()
    started = time.perf_counter()
    error = refused(bomb)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "alias expansion" in str(error) or "expands to more than" in str(error)
    assert elapsed < 1.0
    assert peak < 20 * 1024 * 1024


def test_small_alias_use_and_merge_keys_are_expanded() -> None:
    [doc] = load_documents(
        "defaults: &d {memory: 64m, cpu: 0.5}\n"
        "spec:\n"
        "  resources:\n"
        "    <<: *d\n"
        "    cpu: 1\n"
        "  volumes: &v ['/a:/b']\n"
        "  again: *v\n"
    )
    assert doc.body["spec"]["resources"] == {"memory": "64m", "cpu": 1}
    assert doc.body["spec"]["again"] == ["/a:/b"]
    assert doc.line_of("spec.resources.cpu") == 5


def test_recursive_alias_is_refused() -> None:
    assert "recursive alias" in str(refused("a: &x [1, *x]\n"))


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['id']\n",
        "a: !!python/name:os.system\n",
        "a: !!binary aGVsbG8=\n",
        "a: !!set {x, y}\n",
        "a: !!omap [{x: 1}]\n",
        "a: !custom thing\n",
        "b: !shady {a: 1}\n",
    ],
)
def test_tags_beyond_the_core_schema_are_refused_with_their_line(text: str) -> None:
    error = refused("ok: 1\n" + text)
    assert "is not allowed" in str(error)
    assert error.problems[0].line == 2


def test_duplicate_keys_are_refused_naming_both_lines() -> None:
    error = refused("metadata:\n  name: a\nspec:\n  type: claude\n  type: codex\n")
    problem = error.problems[0]
    assert problem.line == 5
    assert problem.field == "spec.type"
    assert "duplicate key 'type' (first at line 4)" in problem.message


def test_oversized_stream_is_refused_before_parsing() -> None:
    error = refused("a: " + "x" * 2000 + "\n", max_bytes=1000)
    assert "larger than the limit of 1000 bytes" in str(error)


def test_deep_nesting_is_refused() -> None:
    assert "nested more than" in str(refused("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)))
    assert "nesting depth" in str(refused("a: " + "[" * 5000))


def test_syntax_error_reports_its_line_and_document() -> None:
    error = refused(AGENT + "---\nmetadata:\n  name: [unclosed\nspec: {}\n")
    problem = error.problems[0]
    assert problem.index == 1
    assert problem.line is not None and problem.line >= 15
    assert problem.message.startswith("invalid YAML")


def test_non_utf8_is_refused() -> None:
    assert "not UTF-8" in str(refused(b"a: \xff\xfe\n"))


def test_unquoted_boolean_and_date_where_a_string_is_expected_are_reported_not_mangled() -> None:
    [doc] = load_documents(
        "apiVersion: parallax.ai/v1\n"
        "kind: Agent\n"
        "metadata:\n"
        "  name: dated\n"
        "  labels:\n"
        "    enabled: yes\n"
        "    version: 1.10\n"
        "  annotations:\n"
        "    released: 2024-01-01\n"
        "spec:\n"
        "  type: claude\n"
        "  suspend: no\n"
        "  env:\n"
        "    DEBUG: on\n"
        "    EMPTY:\n"
    )
    found = {p.field: p for p in doc.problems}
    assert set(found) == {
        "metadata.labels.enabled",
        "metadata.labels.version",
        "metadata.annotations.released",
        "spec.env.DEBUG",
        "spec.env.EMPTY",
    }
    assert found["metadata.labels.enabled"].line == 6
    assert "'yes'" in found["metadata.labels.enabled"].message and "boolean" in found["metadata.labels.enabled"].message
    assert "'1.10'" in found["metadata.labels.version"].message
    assert "date" in found["metadata.annotations.released"].message and found["metadata.annotations.released"].line == 9
    assert found["spec.env.DEBUG"].line == 14
    # Env values are secrets: never quoted back, even harmless-looking ones.
    assert "'on'" not in found["spec.env.DEBUG"].message
    # Kept as written, not as YAML's guess.
    assert doc.body["metadata"]["labels"] == {"enabled": "yes", "version": "1.10"}
    assert doc.body["metadata"]["annotations"]["released"] == "2024-01-01"
    # A boolean where the schema wants one is fine.
    assert doc.body["spec"]["suspend"] is False


def test_flat_documents_and_list_items_are_checked_against_the_same_schema() -> None:
    [flat] = load_documents("name: flat\ntype: claude\nenv: {X: off}\n")
    assert [p.field for p in flat.problems] == ["env.X"]
    [listed] = load_documents(
        "apiVersion: parallax.ai/v1\nkind: AgentList\nitems:\n"
        "- apiVersion: parallax.ai/v1\n  kind: Agent\n"
        "  metadata: {name: a, labels: {on: true}}\n  spec: {type: claude}\n"
    )
    assert [p.field for p in listed.problems] == ["items[0].metadata.labels.on"]
    assert listed.body["items"][0]["metadata"]["labels"] == {"on": "true"}


def test_keys_stay_exactly_as_written() -> None:
    [doc] = load_documents("labels: {on: a, yes: b, 1: c, null: d}\n")
    assert doc.body["labels"] == {"on": "a", "yes": "b", "1": "c", "null": "d"}


def test_numbers_where_numbers_belong_are_not_reported() -> None:
    [doc] = load_documents("name: n\ntype: claude\nresources: {memory: 67108864, cpu: 1}\nstopGracePeriodSeconds: 5\n")
    assert doc.problems == []
    assert doc.body["resources"]["memory"] == 67108864


def test_infinite_numbers_are_reported() -> None:
    [doc] = load_documents("name: n\ntype: claude\nresources: {cpu: .inf}\n")
    assert [p.field for p in doc.problems] == ["resources.cpu"]
    assert doc.body["resources"]["cpu"] == ".inf"


def test_json_documents_refuse_duplicate_keys_and_give_the_line_of_syntax_errors() -> None:
    docs = load_json_documents(b'[{"name": "a", "type": "claude"}, {"name": "b", "type": "codex"}]')
    assert [d.body["name"] for d in docs] == ["a", "b"]
    with pytest.raises(YamlError, match="duplicate key 'name'"):
        load_json_documents(b'{"name": "a", "name": "b"}')
    with pytest.raises(YamlError) as info:
        load_json_documents(b'{\n"name": "a",\n}')
    assert info.value.problems[0].line == 3
