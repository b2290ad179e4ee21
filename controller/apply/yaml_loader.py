"""Reading YAML that strangers wrote: bounded, core tags only, and honest about what YAML guessed.

``load_documents`` turns a YAML stream into plain JSON-shaped documents, each with a map from field
path to line number so any later error can say where it is. What it refuses (``YamlError``): syntax
errors, documents over the size bound, tags beyond YAML's core schema (no ``!!python/...``, no
``!!binary``, no custom tags), duplicate keys, recursive aliases, nesting deeper than ``MAX_DEPTH``
and alias expansion past ``MAX_NODES`` nodes (a "billion laughs" document is refused after reading
its few hundred bytes, without building anything).

What it reports per document (``Document.problems``): a plain scalar YAML 1.1 would turn into a
boolean, date, number or null where the Agent schema expects a string (``DEBUG: on``, ``date:
2024-01-01``, ``version: 1.10``). The value is kept as written, never mangled, and the user is told to
quote it. Env values are never quoted back: they are secrets. Likewise a plain key YAML reads as something
other than a string (``1:``, ``on:``, ``null:``) where the Agent has keys of its user's choosing (labels,
annotations, env): JSON keys are strings, and coercing ``1`` to ``"1"`` (or ``on`` to ``"true"``, as
Kubernetes' YAML reader does) would be a guess; the key is kept as written and the user told to quote it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller.admission.schema import MANIFEST_KEYS, load_schema

MAX_BYTES = 1024 * 1024
MAX_DOCUMENTS = 1000
MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_EXPANDED_CHARS = 8 * 1024 * 1024

LIST_KINDS = ("List", "AgentList")

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
MAP, SEQ, MERGE, TIMESTAMP, VALUE = (_TAG + t for t in ("map", "seq", "merge", "timestamp", "value"))
_KIND = {BOOL: "boolean", INT: "integer", FLOAT: "number", NULL: "null", TIMESTAMP: "timestamp"}
_KIND_WORDS = {
    "boolean": "a boolean",
    "integer": "a number",
    "number": "a number",
    "null": "null (no value)",
    "timestamp": "a date",
}

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_scalars = yaml.constructor.SafeConstructor()

Path = tuple[str | int, ...]
ExpectedTypes = Callable[[Path, Any], frozenset[str] | None]
"""Given a value's path and the whole document: the JSON types allowed there, or None when unknown."""
FreeKeys = Callable[[Path, Any], bool]
"""Given a mapping's path and the whole document: whether its keys are the user's (labels, env)."""


@dataclass(frozen=True)
class YamlProblem:
    message: str
    line: int | None = None
    index: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.field + ': ' if self.field else ''}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "line": self.line, "field": self.field, "message": self.message}


class YamlError(ValueError):
    """The stream cannot be read safely; every problem found, each with its line."""

    def __init__(self, problems: list[YamlProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def field_path(parts: Path) -> str:
    """``spec.volumes[0]``: the same spelling as the schema validator's field paths."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Document:
    index: int
    line: int | None
    body: Any
    lines: dict[str, int] = field(default_factory=dict)
    problems: list[YamlProblem] = field(default_factory=list)

    def line_of(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor that was written (a missing field's parent)."""
        best, best_len = self.line, -1
        for key, line in self.lines.items():
            if len(key) > best_len and (
                path == key or (path.startswith(key) and path[len(key) : len(key) + 1] in (".", "["))
            ):
                best, best_len = line, len(key)
        return best

    def child(self, index: int, parts: Path) -> Document:
        """The document found at ``parts`` inside this one (an item of a ``kind: List``)."""
        body = self.body
        for part in parts:
            body = body[part]
        prefix = field_path(parts)
        lines = {
            key[len(prefix) :].lstrip("."): line
            for key, line in self.lines.items()
            if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1] in (".", "[", "")
        }
        lines = {k: v for k, v in lines.items() if k}
        return Document(index, self.lines.get(prefix, self.line), body, lines)


def load_documents(
    text: str | bytes,
    *,
    max_bytes: int = MAX_BYTES,
    expected_types: ExpectedTypes | None = None,
    free_keys: FreeKeys | None = None,
) -> list[Document]:
    """The non-empty documents of a YAML stream, in order; raises ``YamlError``."""
    if expected_types is None:
        expected_types = agent_expected_types
    if free_keys is None:
        free_keys = agent_free_keys
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise YamlError([YamlProblem(f"the YAML is {len(raw)} bytes, larger than the limit of {max_bytes} bytes")])
    try:
        source = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlError([YamlProblem(f"the YAML is not UTF-8 text (byte {exc.start})")]) from exc
    _check_shape(source)
    documents: list[Document] = []
    budget = _Budget()
    index = 0
    try:
        for root in yaml.compose_all(source, Loader=_Loader):
            if root is None or (isinstance(root, ScalarNode) and root.tag == NULL):
                continue  # an empty document (only comments, or a stray ---)
            builder = _Builder(index, budget)
            body = builder.build_root(root)
            doc = Document(index, root.start_mark.line + 1, body, builder.lines)
            doc.problems = builder.problems + _one_per_field(
                _misread_keys(builder.key_guesses, body, free_keys, index)
                + _misread_scalars(builder.guesses, body, expected_types, index)
            )
            documents.append(doc)
            index += 1
    except yaml.MarkedYAMLError as exc:
        raise YamlError([_syntax_problem(exc, index)]) from exc
    except yaml.YAMLError as exc:
        raise YamlError([YamlProblem(f"invalid YAML: {exc}", index=index)]) from exc
    return documents


def expand_lists(documents: list[Document]) -> list[Document]:
    """``kind: List`` / ``AgentList`` documents (what ``get -o yaml`` prints) become their items."""
    out: list[Document] = []
    for doc in documents:
        body = doc.body
        if isinstance(body, dict) and body.get("kind") in LIST_KINDS and isinstance(body.get("items"), list):
            out.extend(doc.child(len(out) + i, ("items", i)) for i in range(len(body["items"])))
        else:
            out.append(replace(doc, index=len(out)))
    return out


def load_json_documents(data: str | bytes, *, max_bytes: int = MAX_BYTES) -> list[Document]:
    """A JSON body (one object, or a list of them) as documents; duplicate keys are refused here too."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise YamlError([YamlProblem(f"the JSON is {len(raw)} bytes, larger than the limit of {max_bytes} bytes")])
    try:
        value = json.loads(raw, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise YamlError([YamlProblem(f"invalid JSON: {exc.msg} at column {exc.colno}", line=exc.lineno)]) from exc
    except (ValueError, RecursionError) as exc:
        raise YamlError([YamlProblem(f"invalid JSON: {exc}")]) from exc
    items = value if isinstance(value, list) else [value]
    return [Document(i, None, item) for i, item in enumerate(items)]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _syntax_problem(exc: yaml.MarkedYAMLError, index: int) -> YamlProblem:
    mark = exc.problem_mark or exc.context_mark
    parts = [p for p in (exc.context, exc.problem) if p]
    message = "invalid YAML: " + (", ".join(parts) if parts else "cannot be parsed")
    return YamlProblem(message, line=mark.line + 1 if mark else None, index=index)


def _check_shape(source: str) -> None:
    """Nesting depth and document count, from the parser's events (iterative, so cheap and safe)."""
    depth = documents = 0
    try:
        for event in yaml.parse(source, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else None
                    raise YamlError(
                        [YamlProblem(f"nested more than {MAX_DEPTH} levels deep", line=line, index=documents)]
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.DocumentStartEvent):
                if documents >= MAX_DOCUMENTS:
                    raise YamlError([YamlProblem(f"more than {MAX_DOCUMENTS} documents in one stream")])
            elif isinstance(event, yaml.DocumentEndEvent):
                documents += 1
    except yaml.MarkedYAMLError as exc:
        raise YamlError([_syntax_problem(exc, documents)]) from exc
    except yaml.YAMLError as exc:
        raise YamlError([YamlProblem(f"invalid YAML: {exc}", index=documents)]) from exc


@dataclass
class _Budget:
    """Expanded size of everything built so far, aliases counted every time they are used."""

    nodes: int = 0
    chars: int = 0


@dataclass(frozen=True)
class _Guess:
    """A plain scalar the resolver typed; kept to check against what the schema expects there."""

    path: Path
    kind: str
    line: int
    text: str


class _Builder:
    def __init__(self, index: int, budget: _Budget) -> None:
        self.index = index
        self.budget = budget
        self.lines: dict[str, int] = {}
        self.problems: list[YamlProblem] = []
        self.guesses: list[_Guess] = []
        self.key_guesses: list[_Guess] = []  # path: the mapping's; text: the key
        self._sizes: dict[int, tuple[int, int]] = {}

    def fail(self, message: str, node: Node, path: Path = ()) -> YamlError:
        return YamlError(
            [YamlProblem(message, line=node.start_mark.line + 1, index=self.index, field=field_path(path) or None)]
        )

    def build_root(self, root: Node) -> Any:
        nodes, chars = self._expanded(root, 0, set())
        self.budget.nodes += nodes
        self.budget.chars += chars
        if self.budget.nodes > MAX_NODES or self.budget.chars > MAX_EXPANDED_CHARS:
            raise self.fail(
                f"the YAML expands to more than {MAX_NODES} nodes or {MAX_EXPANDED_CHARS} characters "
                "once aliases are expanded; refusing it",
                root,
            )
        return self.build(root, ())

    def _expanded(self, node: Node, depth: int, visiting: set[int]) -> tuple[int, int]:
        """(nodes, characters) of ``node`` with every alias expanded, memoized, so a bomb costs nothing."""
        key = id(node)
        if key in self._sizes:
            return self._sizes[key]
        if key in visiting:
            raise self.fail("recursive alias: an anchor is used inside itself", node)
        if depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", node)
        visiting.add(key)
        nodes, chars = 1, 0
        if isinstance(node, ScalarNode):
            chars = len(node.value)
        else:
            children: Iterator[Node] = (
                iter(node.value) if isinstance(node, SequenceNode) else (child for pair in node.value for child in pair)
            )
            for child in children:
                n, c = self._expanded(child, depth + 1, visiting)
                nodes, chars = nodes + n, chars + c
                if nodes > MAX_NODES or chars > MAX_EXPANDED_CHARS:
                    raise self.fail(
                        f"alias expansion exceeds {MAX_NODES} nodes or {MAX_EXPANDED_CHARS} characters "
                        "(a 'billion laughs' document?); refusing it",
                        node,
                    )
        visiting.discard(key)
        self._sizes[key] = (nodes, chars)
        return nodes, chars

    def build(self, node: Node, path: Path) -> Any:
        self.lines.setdefault(field_path(path), node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != SEQ:
                raise self.fail(f"the tag {node.tag!r} is not allowed (only YAML's core tags are)", node, path)
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != MAP:
                raise self.fail(f"the tag {node.tag!r} is not allowed (only YAML's core tags are)", node, path)
            return self.mapping(node, path)
        raise self.fail(f"unexpected YAML node {type(node).__name__}", node, path)

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == MERGE:
                merges.append(value_node)
                continue
            key = self.key(key_node, path)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise self.fail(f"duplicate key {key!r} (first at line {seen[key]})", key_node, (*path, key))
            seen[key] = line
            self.lines.setdefault(field_path((*path, key)), line)
            result[key] = self.build(value_node, (*path, key))
        for merge in merges:
            for source in self.merge_sources(merge, path):
                for key, value in source.items():
                    result.setdefault(key, value)
        return result

    def merge_sources(self, node: Node, path: Path) -> list[dict[str, Any]]:
        """``<<: *base`` or ``<<: [*a, *b]``; earlier sources win, keys written here win over all."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        built: list[dict[str, Any]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                raise self.fail("a merge key (<<) takes a mapping or a list of mappings", source, path)
            built.append(self.mapping(source, path))
        return built

    def key(self, node: Node, path: Path) -> str:
        if not isinstance(node, ScalarNode):
            raise self.fail("mapping keys must be plain strings, not lists or mappings", node, path)
        if node.tag not in (STR, INT, FLOAT, BOOL, NULL, TIMESTAMP, VALUE):
            raise self.fail(f"the tag {node.tag!r} is not allowed (only YAML's core tags are)", node, path)
        if node.tag in _KIND and node.style in (None, ""):
            self.key_guesses.append(_Guess(path, _KIND[node.tag], node.start_mark.line + 1, str(node.value)))
        # The key exactly as written: `on:` stays "on", never "True".
        return str(node.value)

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        tag = node.tag
        if tag == STR:
            return node.value
        if tag in (VALUE, MERGE):
            return node.value
        if tag not in _KIND:
            raise self.fail(f"the tag {tag!r} is not allowed (only YAML's core tags are)", node, path)
        line = node.start_mark.line + 1
        if node.style in (None, ""):
            self.guesses.append(_Guess(path, _KIND[tag], line, node.value))
        if tag == TIMESTAMP:
            return node.value  # never a datetime: dates are not JSON
        try:
            value = {
                BOOL: _scalars.construct_yaml_bool,
                INT: _scalars.construct_yaml_int,
                FLOAT: _scalars.construct_yaml_float,
                NULL: _scalars.construct_yaml_null,
            }[tag](node)
        except (ValueError, yaml.YAMLError) as exc:
            raise self.fail(f"{node.value!r} is not a valid {_KIND[tag]}", node, path) from exc
        if isinstance(value, float) and not math.isfinite(value):
            self.problems.append(
                YamlProblem(
                    "YAML reads this as an infinite or not-a-number value; quote it or use a finite number",
                    line=line,
                    index=self.index,
                    field=field_path(path),
                )
            )
            return node.value
        return value


def _misread_scalars(guesses: list[_Guess], body: Any, expected_types: ExpectedTypes, index: int) -> list[YamlProblem]:
    problems = []
    for guess in guesses:
        allowed = expected_types(guess.path, body)
        if allowed is None or "string" not in allowed:
            continue
        if guess.kind in allowed or (guess.kind == "integer" and "number" in allowed):
            continue
        path = field_path(guess.path)
        _put(body, guess.path, guess.text)
        written = "" if _is_env_path(guess.path, body) else f" {guess.text!r}"
        message = (
            f"a string is expected, but YAML reads the unquoted value{written} as {_KIND_WORDS[guess.kind]}; "
            "put it in quotes"
        )
        if guess.kind == "null":
            message = 'a string is expected, but the value is empty (null); write "" for an empty string'
        problems.append(YamlProblem(message, line=guess.line, index=index, field=path))
    return problems


def _one_per_field(problems: list[YamlProblem]) -> list[YamlProblem]:
    """A key and its value misread at once (``{on: yes}``) make one problem saying both."""
    merged: dict[str | None, YamlProblem] = {}
    out: list[YamlProblem] = []
    for problem in problems:
        first = merged.get(problem.field)
        if first is None or problem.field is None:
            merged[problem.field] = problem
            out.append(problem)
        else:
            joined = replace(first, message=f"{first.message}; and {problem.message}")
            out[out.index(first)] = merged[problem.field] = joined
    return out


def _misread_keys(guesses: list[_Guess], body: Any, free_keys: FreeKeys, index: int) -> list[YamlProblem]:
    return [
        YamlProblem(
            f"a key must be a string, but YAML reads the unquoted key {guess.text!r} as "
            f"{_KIND_WORDS[guess.kind]}; put it in quotes",
            line=guess.line,
            index=index,
            field=field_path((*guess.path, guess.text)),
        )
        for guess in guesses
        if free_keys(guess.path, body)
    ]


def _put(body: Any, path: Path, text: str) -> None:
    """Keep the value as it was written: the document is refused anyway, but never with a mangled value."""
    if not path:
        return
    container = body
    for part in path[:-1]:
        container = container[part]
    container[path[-1]] = text


# --- what the Agent schema expects where -------------------------------------------------------


def _agent_path(path: Path, body: Any) -> Path | None:
    """``path`` inside a manifest, whatever shape the document has (manifest, flat body, List item)."""
    if not isinstance(body, Mapping):
        return None
    if body.get("kind") in LIST_KINDS and path[:1] == ("items",):
        items = body.get("items")
        if len(path) < 2 or not isinstance(items, list) or not isinstance(path[1], int) or path[1] >= len(items):
            return None
        return _agent_path(path[2:], items[path[1]])
    if any(key in body for key in MANIFEST_KEYS):
        return path
    if not path:
        return path
    head = "metadata" if path[0] in ("name", "labels", "annotations", "resourceVersion") else "spec"
    return (head, *path)


def _is_env_path(path: Path, body: Any) -> bool:
    agent_path = _agent_path(path, body)
    return agent_path is not None and agent_path[:2] == ("spec", "env")


def _resolve(schema: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return None
        node = schema
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
    return node


def _types_of(node: dict[str, Any]) -> frozenset[str]:
    branches = node.get("oneOf") or node.get("anyOf")
    if isinstance(branches, list):
        return frozenset().union(*(_types_of(b) for b in branches if isinstance(b, dict)))
    declared = node.get("type")
    if isinstance(declared, str):
        return frozenset({declared})
    if isinstance(declared, list):
        return frozenset(declared)
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if values:
        names = {"str": "string", "bool": "boolean", "int": "integer", "float": "number", "NoneType": "null"}
        return frozenset(names.get(type(v).__name__, "object") for v in values)
    return frozenset()


def _schema_node(path: Path, body: Any) -> Any:
    """The (resolved) node of ``specs/agent.schema.json`` describing ``path``, or None."""
    agent_path = _agent_path(path, body)
    if agent_path is None:
        return None
    schema = load_schema()
    node: Any = schema
    for part in agent_path:
        node = _resolve(schema, node)
        if not isinstance(node, dict):
            return None
        if isinstance(part, int):
            node = node.get("items")
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return _resolve(schema, node)


def agent_free_keys(path: Path, body: Any) -> bool:
    """Whether the mapping at ``path`` has keys of the user's choosing (a map: labels, annotations, env)."""
    node = _schema_node(path, body)
    return isinstance(node, dict) and isinstance(node.get("additionalProperties"), dict)


def agent_expected_types(path: Path, body: Any) -> frozenset[str] | None:
    """The JSON types ``specs/agent.schema.json`` allows at ``path``; None where it does not say."""
    node = _schema_node(path, body)
    if not isinstance(node, dict):
        return None
    types = _types_of(node)
    return types or None
