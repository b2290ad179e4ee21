"""Kubernetes label selectors for GET /agents?labelSelector=..."""

from __future__ import annotations

import pytest

from controller.model.selector import SelectorError, parse_selector

RESEARCH = {"team": "research", "env": "a"}
OPS = {"team": "ops", "env": "b"}
UNLABELLED: dict[str, str] = {}
ALL = {"research": RESEARCH, "ops": OPS, "unlabelled": UNLABELLED}


def matching(selector: str) -> set[str]:
    predicate = parse_selector(selector)
    return {name for name, labels in ALL.items() if predicate(labels)}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("team=research", {"research"}),
        ("team==research", {"research"}),
        ("team = research", {"research"}),
        ("team!=research", {"ops", "unlabelled"}),
        ("team!=x", {"research", "ops", "unlabelled"}),
        ("team", {"research", "ops"}),
        ("!team", {"unlabelled"}),
        ("env in (a,b)", {"research", "ops"}),
        ("env in (a, b)", {"research", "ops"}),
        ("env in (a)", {"research"}),
        ("env notin (a)", {"ops", "unlabelled"}),
        ("team=research,env in (a,b)", {"research"}),
        ("team,env notin (a)", {"ops"}),
        ("env in (a,b),!missing", {"research", "ops"}),
        ("team=research,team=ops", set()),
        ("app.kubernetes.io/name=x", set()),
    ],
)
def test_selector_matches_the_agents_kubernetes_would(selector: str, expected: set[str]) -> None:
    assert matching(selector) == expected


@pytest.mark.parametrize("selector", ["", "   ", ",", None])
def test_empty_selector_matches_everything(selector: str | None) -> None:
    predicate = parse_selector(selector)  # type: ignore[arg-type]
    assert {name for name, labels in ALL.items() if predicate(labels)} == set(ALL)


@pytest.mark.parametrize("selector", ["=x", "a b c", "==x", "!=x", "team=research,=x", "! ", "a b=c"])
def test_invalid_selector_is_refused(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(selector)


def test_selector_error_names_the_bad_term() -> None:
    with pytest.raises(SelectorError, match="a b c"):
        parse_selector("team=research,a b c")


def test_selector_error_is_a_value_error() -> None:
    assert issubclass(SelectorError, ValueError)
