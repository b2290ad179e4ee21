"""``scrub``: an agent's env values never survive in text that came back from Docker."""

from __future__ import annotations

import aiodocker

from controller.model.errors import CONTAINER_ERROR, AgentError
from controller.model.redact import MIN_SCRUB_LENGTH, scrub
from controller.runtime.docker.driver import _classify

SECRET = "sk-live-0123456789abcdef"


def test_a_value_is_replaced_wherever_it_appears() -> None:
    text = f"error: {SECRET} and again {SECRET}."
    assert scrub(text, {"API_KEY": SECRET}) == "error: <redacted> and again <redacted>."


def test_runc_quoting_a_nul_value_is_scrubbed_whole_and_in_pieces() -> None:
    value = "sk-abc123\x00defghij456"
    # What runc answered on this machine for such a value (Go's %q spelling of the entry).
    runc = (
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
        "process: error during container init: environment variable value can't contain null(\\x00): "
        '"API_KEY=sk-abc123\\x00defghij456": unknown'
    )
    out = scrub(runc, {"API_KEY": value})
    assert "sk-abc123" not in out and "defghij456" not in out
    assert '"API_KEY=<redacted>"' in out
    # A message cut at the NUL, or showing the pieces apart, or JSON-escaped, or raw.
    for text in ("value sk-abc123", "defghij456 was refused", "sk-abc123\\u0000defghij456", value):
        scrubbed = scrub(text, {"API_KEY": value})
        assert "sk-abc123" not in scrubbed and "defghij456" not in scrubbed, scrubbed


def test_quoted_spellings_of_quotes_backslashes_and_newlines_are_scrubbed() -> None:
    value = 'pa"ss\\word\nline2-secret'
    for text in (value, 'pa\\"ss\\\\word\\nline2-secret', "'pa\"ss\\\\word\\nline2-secret'"):
        scrubbed = scrub(text, {"PASSWORD": value})
        assert "word" not in scrubbed and "line2-secret" not in scrubbed, scrubbed


def test_short_values_are_scrubbed_only_as_key_equals_value() -> None:
    assert MIN_SCRUB_LENGTH == 4
    env = {"DEBUG": "1", "MODE": "on"}
    text = 'invalid "DEBUG=1" in container 1234 (MODE=on), restart policy on-failure'
    expected = 'invalid "DEBUG=<redacted>" in container 1234 (MODE=<redacted>), restart policy on-failure'
    assert scrub(text, env) == expected
    assert scrub("abcd and abc", {"K": "abcd", "L": "abc"}) == "<redacted> and abc"


def test_nothing_to_scrub_leaves_the_text_alone() -> None:
    assert scrub("plain", {}) == "plain"
    assert scrub("plain", {"EMPTY": ""}) == "plain"
    assert scrub("", {"K": SECRET}) == ""


def test_an_agent_error_from_docker_is_scrubbed_in_place_and_loses_its_cause() -> None:
    docker_error = aiodocker.DockerError(500, f'invalid "API_KEY={SECRET}"')
    try:
        try:
            raise docker_error
        except aiodocker.DockerError as exc:
            raise _classify(exc, "starting container x") from exc
    except AgentError as err:
        caught = err
    assert SECRET in str(caught) and caught.__cause__ is docker_error
    same = caught.scrub({"API_KEY": SECRET})
    assert same is caught and caught.code == CONTAINER_ERROR
    for text in (str(caught), caught.message, repr(caught)):
        assert SECRET not in text and "API_KEY=<redacted>" in text
    assert caught.__cause__ is None and caught.__context__ is None
