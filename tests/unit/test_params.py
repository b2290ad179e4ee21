"""The one parser of query parameters (api/server/params.py): flags, integers, numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from api.server.errors import ApiError
from api.server.params import flag, flag_is_set, integer, integer_value, number, parse_flag, parse_integer


@pytest.mark.parametrize("raw", ["", "true", "True", "TRUE", "1", "yes", "YES", "Yes"])
def test_true_spellings(raw: str):
    assert parse_flag(raw) is True
    assert flag(MultiDict({"watch": raw}), "watch") is True
    assert flag_is_set(MultiDict({"watch": raw}), "watch") is True


@pytest.mark.parametrize("raw", ["false", "False", "0", "no", "NO"])
def test_false_spellings(raw: str):
    assert flag(MultiDict({"watch": raw}), "watch", default=True) is False
    assert flag_is_set(MultiDict({"watch": raw}), "watch") is False


def test_absent_flag_is_its_default_and_junk_is_a_400_naming_it():
    assert flag(MultiDict(), "atomic", default=True) is True
    assert flag_is_set(MultiDict(), "watch") is False
    assert flag_is_set(MultiDict({"watch": "maybe"}), "watch") is False  # the handler refuses it
    with pytest.raises(ApiError) as refused:
        flag(MultiDict({"watch": "maybe"}), "watch")
    assert refused.value.status == 400 and refused.value.details[0]["field"] == "watch"


@pytest.mark.parametrize("raw", ["²", "١٢", "\uff11\uff12", "-1", "+1", " 1", "1 ", "1_000", "0x10", "1e3", "9" * 19])
def test_integers_are_ascii_digits_only(raw: str):
    assert parse_integer(raw) is None
    with pytest.raises(ApiError) as refused:
        integer(MultiDict({"tail": raw}), "tail")
    assert refused.value.status == 400 and refused.value.details == [
        {"field": "tail", "message": refused.value.details[0]["message"]}
    ]


def test_integer_values():
    assert integer(MultiDict({"resourceVersion": "42"}), "resourceVersion") == 42
    assert integer(MultiDict({"resourceVersion": ""}), "resourceVersion") is None
    assert integer(MultiDict(), "resourceVersion") is None
    assert integer_value("9" * 18, "x") == int("9" * 18)
    with pytest.raises(ApiError) as refused:
        integer_value("\uff11", "Last-Event-ID")
    assert refused.value.details[0]["field"] == "Last-Event-ID"
    with pytest.raises(ApiError):
        integer(MultiDict({"n": "11"}), "n", maximum=10)


@given(st.text())
def test_any_text_is_an_integer_exactly_when_it_is_1_to_18_ascii_digits(raw: str):
    expected = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None
    assert parse_integer(raw) == expected


def test_numbers():
    assert number(MultiDict({"timeout": "2.5"}), "timeout") == 2.5
    assert number(MultiDict({"timeout": "30s"}), "timeout", suffix="s") == 30.0
    assert number(MultiDict({"timeout": ".5"}), "timeout") == 0.5
    for raw in ("١٢", "\uff11", "inf", "nan", "1e3", "-1", "²"):
        with pytest.raises(ApiError) as refused:
            number(MultiDict({"timeout": raw}), "timeout", suffix="s")
        assert refused.value.details[0]["field"] == "timeout"
