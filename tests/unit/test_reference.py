"""Docker's image reference grammar (distribution/reference), as ``controller.admission.reference``
and the schema say it."""

from __future__ import annotations

import re

import pytest

from controller.admission.reference import PATTERN, reference_problem
from controller.admission.schema import ecma_regex, load_schema

ACCEPTED = [
    "busybox",
    "busybox:latest",
    "parallax-test/agent-claude:latest",
    "library/ubuntu:22.04",
    "docker.io/library/ubuntu",
    "localhost:5000/team/agent:v1.2-rc_3",
    "Registry.Example.COM/x/y",  # a registry host is case-insensitive
    "[::1]:5000/agent",
    "a__b/c.d/e--f",
    "busybox:V1",  # tags may be upper-case
    "busybox@sha256:" + "a" * 64,
    "busybox:1.36@sha256:" + "0" * 64,
    "busybox@sha512:" + "f" * 128,
    "a" * 255,
]
REFUSED = [
    ("a::b", "repository name"),
    ("a@sha256:zz", "64 lower-case hex"),
    ("a@sha256:" + "A" * 64, "64 lower-case hex"),
    ("a@sha256:" + "a" * 63, "64 lower-case hex"),
    ("a@md5:" + "0" * 32, "not supported"),
    ("a@", "digest"),
    ("Busybox", "lower-case"),
    ("team/Agent:latest", "lower-case"),
    ("-busybox", "repository name"),
    ("a___b", "repository name"),
    ("a/", "repository name"),
    ("a:.tag", "tag"),
    ("a:" + "t" * 129, "tag"),
    ("a" * 256, "longer than 255"),
    ("busybox\n", ""),
    ("", "empty"),
]


@pytest.mark.parametrize("reference", ACCEPTED)
def test_references_docker_accepts_are_accepted(reference: str) -> None:
    assert reference_problem(reference) is None
    assert ecma_regex(PATTERN).search(reference)


@pytest.mark.parametrize(("reference", "why"), REFUSED)
def test_references_docker_refuses_are_refused_saying_why(reference: str, why: str) -> None:
    problem = reference_problem(reference)
    assert problem is not None and why in problem
    if len(reference) <= 255:
        assert not ecma_regex(PATTERN).search(reference), "the schema's pattern agrees"


def test_the_schema_carries_the_grammar_as_its_pattern() -> None:
    image = load_schema()["$defs"]["spec"]["properties"]["image"]
    assert image["pattern"] == PATTERN
    assert image["format"] == "image-reference"


def test_schema_patterns_mean_what_ecma_262_says_not_what_python_re_does() -> None:
    name = load_schema()["$defs"]["name"]["pattern"]
    assert re.search(name, "agent\n"), "Python's $ matches before a final newline"
    assert not ecma_regex(name).search("agent\n")
    assert not ecma_regex(r"^\w+$").search("agént"), "classes are ASCII"
    assert ecma_regex(r"^a\$$").search("a$")
