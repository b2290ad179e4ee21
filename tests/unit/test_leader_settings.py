"""The leader election's settings: client-go's defaults, read from the environment, and refused (naming
the variable) when a leader could keep acting after another may take over."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, Settings


def test_the_defaults_are_client_gos() -> None:
    s = Settings.from_env({})
    assert (s.lease_duration_seconds, s.renew_deadline_seconds, s.retry_period_seconds) == (15.0, 10.0, 2.0)
    assert s.identity is None


def test_they_are_read_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "PARALLAX_LEASE_DURATION": "6",
            "PARALLAX_RENEW_DEADLINE": "4",
            "PARALLAX_RETRY_PERIOD": "1",
            "PARALLAX_IDENTITY": "ctl-a",
        }
    )
    assert (s.lease_duration_seconds, s.renew_deadline_seconds, s.retry_period_seconds, s.identity) == (
        6.0,
        4.0,
        1.0,
        "ctl-a",
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PARALLAX_LEASE_DURATION": "5", "PARALLAX_RENEW_DEADLINE": "5"}, "PARALLAX_RENEW_DEADLINE"),
        ({"PARALLAX_RENEW_DEADLINE": "3", "PARALLAX_RETRY_PERIOD": "3"}, "PARALLAX_RETRY_PERIOD"),
        ({"PARALLAX_LEASE_DURATION": "soon"}, "PARALLAX_LEASE_DURATION"),
        ({"PARALLAX_RETRY_PERIOD": "0"}, "PARALLAX_RETRY_PERIOD"),
    ],
)
def test_durations_that_cannot_work_are_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(f"{named}: ")
