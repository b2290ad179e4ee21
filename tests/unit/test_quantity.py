"""Memory and CPU quantities: Docker's binary units, Kubernetes suffixes, and never a silent "no limit"."""

from __future__ import annotations

import math

import pytest

from controller.model.quantity import MIN_MEMORY_BYTES, QuantityError, nano_cpus, parse_cpu, parse_memory

KiB = 1024
MiB = 1024**2
GiB = 1024**3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512m", 512 * MiB),
        ("1g", GiB),
        ("2g", 2 * GiB),
        ("1.5g", 1_610_612_736),
        ("512Mi", 512 * MiB),
        ("2Gi", 2 * GiB),
        ("1073741824", GiB),
        (1073741824, GiB),
        ("8192k", 8192 * KiB),
        ("10240Ki", 10 * MiB),
    ],
)
def test_memory_quantities_from_the_seed_and_kubernetes_are_accepted(value: object, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize(("upper", "lower"), [("1G", "1g"), ("512M", "512m"), ("2GI", "2gi"), ("512MI", "512Mi")])
def test_memory_units_are_case_insensitive(upper: str, lower: str) -> None:
    assert parse_memory(upper) == parse_memory(lower)


def test_memory_units_are_binary_like_dockers_cli() -> None:
    assert parse_memory("512m") == 512 * 1024 * 1024
    assert parse_memory("512M") == 512 * 1024**2
    assert parse_memory("1g") == parse_memory("1Gi") == parse_memory("1024m")


def test_memory_tolerates_surrounding_whitespace() -> None:
    assert parse_memory(" 1g ") == GiB


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "-1g",
        "0",
        0,
        "1x",
        True,
        False,
        None,
        [],
        {},
        "1.5.5g",
        "1m",
        "5m",
        MIN_MEMORY_BYTES - 1,
        float("inf"),
        float("-inf"),
        float("nan"),
        "g",
        "1 g b",
    ],
    ids=repr,
)
def test_unusable_memory_is_refused_with_a_message(value: object) -> None:
    with pytest.raises(QuantityError) as excinfo:
        parse_memory(value)
    assert "memory" in str(excinfo.value)


def test_memory_at_dockers_minimum_is_accepted() -> None:
    assert parse_memory("6m") == MIN_MEMORY_BYTES
    assert parse_memory(MIN_MEMORY_BYTES) == MIN_MEMORY_BYTES


def test_memory_below_dockers_minimum_names_the_minimum() -> None:
    with pytest.raises(QuantityError, match="minimum"):
        parse_memory("1m")


def test_quantity_error_is_a_value_error() -> None:
    assert issubclass(QuantityError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (1.0, 1.0), (2, 2.0), ("500m", 0.5), ("2", 2.0), ("0.25", 0.25), ("10m", 0.01), (0.01, 0.01)],
)
def test_cpu_quantities_are_accepted_as_cores(value: object, expected: float) -> None:
    assert parse_cpu(value) == pytest.approx(expected)
    assert isinstance(parse_cpu(value), float)


@pytest.mark.parametrize(
    "value",
    [
        0,
        0.0,
        -1,
        -0.5,
        "0m",
        "0",
        "abc",
        "",
        True,
        False,
        None,
        [],
        "1.5x",
        "500M",
        "-1",
        0.001,
        "5m",
        float("inf"),
        float("nan"),
    ],
    ids=repr,
)
def test_unusable_cpu_is_refused_with_a_message(value: object) -> None:
    with pytest.raises(QuantityError) as excinfo:
        parse_cpu(value)
    assert "cpu" in str(excinfo.value)


def test_cpu_below_dockers_minimum_names_the_minimum() -> None:
    with pytest.raises(QuantityError, match="minimum"):
        parse_cpu(0.005)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, 1_000_000_000), ("500m", 500_000_000), (0.5, 500_000_000), (2, 2_000_000_000), ("0.25", 250_000_000)],
)
def test_nano_cpus_is_what_docker_expects(value: object, expected: int) -> None:
    result = nano_cpus(value)
    assert result == expected
    assert isinstance(result, int)


def test_nano_cpus_has_no_float_noise() -> None:
    assert nano_cpus(0.3) == 300_000_000
    assert nano_cpus("100m") == 100_000_000


def test_nano_cpus_refuses_what_parse_cpu_refuses() -> None:
    with pytest.raises(QuantityError):
        nano_cpus("fast")


def test_nan_is_not_silently_turned_into_a_limit() -> None:
    for parse in (parse_memory, parse_cpu):
        with pytest.raises(QuantityError):
            parse(math.nan)
