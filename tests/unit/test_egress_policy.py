"""The pure egress decisions: allow entries, matching, defaults, the gateway's request parsing, the event
limiter, admission of ``spec.egress`` and how a restricted agent is rendered."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.admission.admit import AdmissionError, admit
from controller.config import ConfigError, Settings
from controller.egress.denials import DenialLimiter
from controller.egress.gateway import Refused, parse_head
from controller.egress.policy import (
    TYPE_ALLOWLISTS,
    EgressSpec,
    RuleError,
    effective,
    parse_rule,
)
from controller.runtime.docker.render import EGRESS_DNS, EGRESS_GATEWAY, render_container, with_gateway


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "store" / "agents.db"))


def allows(entries: list[str], host: str, port: int) -> bool:
    return effective(EgressSpec("Allowlist", tuple(entries)), "custom", "Allowlist").allows(host, port)


# -- entries and matching -------------------------------------------------------------------------------


def test_a_name_without_a_port_allows_http_and_https_only():
    assert allows(["api.anthropic.com"], "api.anthropic.com", 443)
    assert allows(["api.anthropic.com"], "API.Anthropic.com.", 80)
    assert not allows(["api.anthropic.com"], "api.anthropic.com", 22)
    assert not allows(["api.anthropic.com"], "evil-api.anthropic.com", 443)
    assert not allows(["api.anthropic.com"], "api.anthropic.com.evil.com", 443)


def test_a_port_allows_that_port_only():
    assert allows(["registry.npmjs.org:443"], "registry.npmjs.org", 443)
    assert not allows(["registry.npmjs.org:443"], "registry.npmjs.org", 80)


def test_a_wildcard_matches_names_below_the_domain_not_the_domain():
    assert allows(["*.github.com"], "api.github.com", 443)
    assert allows(["*.github.com"], "a.b.github.com", 443)
    assert not allows(["*.github.com"], "github.com", 443)
    assert not allows(["*.github.com"], "evilgithub.com", 443)


def test_an_address_range_matches_address_literals_only():
    assert allows(["10.1.2.0/24:5432"], "10.1.2.7", 5432)
    assert not allows(["10.1.2.0/24:5432"], "10.1.3.7", 5432)
    assert not allows(["10.1.2.0/24:5432"], "10.1.2.7", 5433)
    # a name is never resolved to be judged (the question would leave through DNS)
    assert not allows(["10.1.2.0/24:5432"], "db.internal", 5432)
    assert allows(["[fd00::/64]:443"], "[fd00::5]", 443)
    assert not allows(["[fd00::/64]:443"], "10.1.2.7", 443)


def test_a_name_entry_does_not_allow_an_address():
    assert not allows(["allowed.test:8080"], "10.0.0.1", 8080)


def test_allow_all_and_deny_all_mean_what_they_say():
    assert effective(EgressSpec("AllowAll"), "claude", "Allowlist").allows("anything.example", 25)
    assert not effective(EgressSpec("DenyAll"), "claude", "Allowlist").allows("api.anthropic.com", 443)


@pytest.mark.parametrize(
    "entry",
    [
        "",
        " api.anthropic.com",
        "api.anthropic.com:0",
        "api.anthropic.com:65536",
        "api.anthropic.com:https",
        "*.com",
        "api.*.com",
        "a..b",
        "-bad.example.com",
        "10.1.2.0/33",
        "10.1.2.1/24",
        "0.0.0.0/0",
        "[fd00::1",
        "[fd00::1]x",
        "1.2.3.4.5",
        "http://api.anthropic.com",
        "api.anthropic.com/v1",
    ],
)
def test_meaningless_entries_are_refused(entry: str):
    with pytest.raises(RuleError):
        parse_rule(entry)


# -- defaults ---------------------------------------------------------------------------------------


def test_each_agent_type_brings_its_own_list_and_the_default_is_allowlist(settings: Settings):
    assert settings.egress_policy_default == "Allowlist"
    claude = effective(None, "claude", settings.egress_policy_default)
    assert claude.restricted and claude.allows("api.anthropic.com", 443)
    assert claude.allows("registry.npmjs.org", 443) and claude.allows("api.github.com", 443)
    assert not claude.allows("api.openai.com", 443)
    assert effective(None, "codex", "Allowlist").allows("api.openai.com", 443)
    assert effective(None, "gemini", "Allowlist").allows("generativelanguage.googleapis.com", 443)
    assert not effective(None, "custom", "Allowlist").allows("api.anthropic.com", 443)
    for entries in TYPE_ALLOWLISTS.values():
        for entry in entries:
            parse_rule(entry)


def test_an_own_list_replaces_the_types_list():
    mine = effective(EgressSpec("Allowlist", ("example.org",)), "claude", "Allowlist")
    assert mine.allows("example.org", 443) and not mine.allows("api.anthropic.com", 443)


def test_the_server_default_is_a_setting():
    assert not effective(None, "claude", "AllowAll").restricted
    assert Settings.from_env({"PARALLAX_EGRESS_DEFAULT": "allowall"}).egress_policy_default == "AllowAll"
    with pytest.raises(ConfigError, match="PARALLAX_EGRESS_DEFAULT"):
        Settings.from_env({"PARALLAX_EGRESS_DEFAULT": "open"})
    with pytest.raises(ConfigError, match="PARALLAX_EGRESS_HOSTS"):
        Settings.from_env({"PARALLAX_EGRESS_HOSTS": "allowed.test=not-an-ip"})
    hosts = Settings.from_env({"PARALLAX_EGRESS_HOSTS": "Allowed.Test=10.0.0.2, b.test=10.0.0.3"}).egress_hosts
    assert hosts == (("allowed.test", "10.0.0.2"), ("b.test", "10.0.0.3"))


def test_swarm_defaults_to_open_egress_and_refuses_a_restricted_default():
    assert Settings.from_env({"PARALLAX_RUNTIME": "swarm"}).egress_policy_default == "AllowAll"
    with pytest.raises(ConfigError, match="swarm"):
        Settings.from_env({"PARALLAX_RUNTIME": "swarm", "PARALLAX_EGRESS_DEFAULT": "Allowlist"})


# -- admission --------------------------------------------------------------------------------------


def _refusal(body: dict[str, object], settings: Settings) -> dict[str, str]:
    with pytest.raises(AdmissionError) as caught:
        admit({"name": "a", "type": "claude", **body}, settings)
    assert not caught.value.forbidden
    return {e.field: e.message for e in caught.value.errors}


def test_admission_names_the_bad_entry(settings: Settings):
    errors = _refusal({"egress": {"policy": "Allowlist", "allow": ["ok.example.com", "bad host"]}}, settings)
    assert list(errors) == ["egress.allow[1]"], errors
    errors = _refusal({"egress": {"policy": "Allowlist", "allow": ["10.0.0.0/8:99999"]}}, settings)
    assert "65535" in errors["egress.allow[0]"]


def test_admission_refuses_unknown_policies_and_fields(settings: Settings):
    assert "egress.policy" in _refusal({"egress": {"policy": "Open"}}, settings)
    assert "egress.policy" in _refusal({"egress": {"allow": ["a.example.com"]}}, settings)
    assert "egress.ports" in _refusal({"egress": {"policy": "DenyAll", "ports": [1]}}, settings)


def test_admission_refuses_a_list_with_allow_all_or_deny_all(settings: Settings):
    for policy in ("AllowAll", "DenyAll"):
        errors = _refusal({"egress": {"policy": policy, "allow": ["a.example.com"]}}, settings)
        assert policy in errors["egress.allow"]


def test_admission_refuses_the_internal_networks_names(settings: Settings):
    assert "network" in _refusal({"network": "team-egress"}, settings)


def test_swarm_refuses_what_it_cannot_enforce(tmp_path: Path):
    swarm = Settings(store_path=str(tmp_path / "agents.db"), runtime="swarm")
    for policy in ("Allowlist", "DenyAll"):
        errors = _refusal({"egress": {"policy": policy}}, swarm)
        assert "swarm" in errors["egress.policy"]
    agent, _ = admit({"name": "a", "type": "claude", "egress": {"policy": "AllowAll"}}, swarm)
    assert agent.spec.egress == EgressSpec("AllowAll")


def test_an_admitted_policy_round_trips_and_absence_stays_absent(settings: Settings):
    agent, _ = admit({"name": "a", "type": "claude", "egress": {"policy": "Allowlist", "allow": ["x.test"]}}, settings)
    assert agent.spec.to_dict()["egress"] == {"policy": "Allowlist", "allow": ["x.test"]}
    plain, _ = admit({"name": "b", "type": "claude"}, settings)
    assert plain.spec.egress is None and "egress" not in plain.spec.to_dict()


# -- rendering --------------------------------------------------------------------------------------


def test_a_restricted_agent_is_rendered_onto_the_internal_twin_with_the_proxy(settings: Settings):
    agent, _ = admit({"name": "walled", "type": "claude", "env": {"HTTP_PROXY": "http://mine"}}, settings)
    config = render_container(agent, settings)
    assert config["HostConfig"]["NetworkMode"] == "parallax-agents-egress"
    assert config["NetworkingConfig"]["EndpointsConfig"] == {"parallax-agents-egress": {"Aliases": ["walled"]}}
    assert config["HostConfig"]["Dns"] == [EGRESS_DNS]
    env = dict(entry.split("=", 1) for entry in with_gateway(config, "172.30.0.1")["Env"])
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == "http://172.30.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert all(EGRESS_GATEWAY not in e for e in with_gateway(config, "172.30.0.1")["Env"])


def test_changing_the_allow_list_does_not_change_the_container(settings: Settings):
    one, _ = admit({"name": "a", "type": "claude", "egress": {"policy": "Allowlist", "allow": ["x.test"]}}, settings)
    two, _ = admit({"name": "a", "type": "claude", "egress": {"policy": "DenyAll"}}, settings)
    three, _ = admit({"name": "a", "type": "claude"}, settings)
    opened, _ = admit({"name": "a", "type": "claude", "egress": {"policy": "AllowAll"}}, settings)
    same = render_container(one, settings)
    assert render_container(two, settings) == same == render_container(three, settings)
    assert render_container(opened, settings) != same  # a class change moves it to the open network


# -- the gateway's reading of a request ----------------------------------------------------------------


def test_connect_names_its_destination():
    target = parse_head(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n")
    assert (target.host, target.port, target.connect) == ("allowed.test", 443, True)
    assert parse_head(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").host == "::1"


def test_an_absolute_request_goes_to_its_urls_host_whatever_the_host_header_says():
    target = parse_head(
        b"GET http://allowed.test:8080/a?b=1 HTTP/1.1\r\nHost: denied.test\r\nProxy-Connection: keep-alive\r\n\r\n"
    )
    assert (target.host, target.port, target.connect) == ("allowed.test", 8080, False)
    head = target.head.decode()
    assert head.startswith("GET /a?b=1 HTTP/1.1\r\nHost: allowed.test:8080\r\n")
    assert "denied.test" not in head and "Proxy-Connection" not in head and "Connection: close" in head


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        b"GET https://allowed.test/ HTTP/1.1\r\n\r\n",
        b"CONNECT allowed.test HTTP/1.1\r\n\r\n",
        b"CONNECT allowed.test:0 HTTP/1.1\r\n\r\n",
        b"GET http://user:pw@allowed.test/ HTTP/1.1\r\n\r\n",
        b"HELLO\r\n\r\n",
    ],
)
def test_anything_else_is_a_bad_request(head: bytes):
    with pytest.raises(Refused) as caught:
        parse_head(head)
    assert caught.value.status == 400


# -- events -----------------------------------------------------------------------------------------


def test_a_looping_agent_gets_one_event_per_destination_a_minute():
    limiter = DenialLimiter(repeat_seconds=60.0, per_minute=10)
    assert limiter.admit("a", "x:443", 0.0)
    assert not any(limiter.admit("a", "x:443", t / 10) for t in range(1, 500))
    assert limiter.admit("b", "x:443", 1.0)  # another agent's own
    assert limiter.admit("a", "x:443", 61.0)


def test_an_agent_trying_many_destinations_gets_at_most_the_minutes_budget():
    limiter = DenialLimiter(repeat_seconds=60.0, per_minute=10)
    admitted = sum(limiter.admit("a", f"host{i}:443", i / 100) for i in range(100))
    assert admitted == 10
    assert limiter.admit("a", "later:443", 61.0)


def test_yaml_apply_reads_the_policy_as_written(settings: Settings):
    from controller.apply.yaml_loader import load_documents

    [doc] = load_documents(
        "apiVersion: parallax.ai/v1\nkind: Agent\nmetadata: {name: builder}\n"
        "spec:\n  type: claude\n  egress:\n    policy: Allowlist\n"
        "    allow: [api.anthropic.com, '*.github.com', registry.npmjs.org:443, 10.1.2.0/24:5432]\n"
    )
    assert not doc.problems
    agent, _ = admit(doc.body, settings)
    assert agent.spec.egress == EgressSpec(
        "Allowlist", ("api.anthropic.com", "*.github.com", "registry.npmjs.org:443", "10.1.2.0/24:5432")
    )
    [bad] = load_documents(
        "apiVersion: parallax.ai/v1\nkind: Agent\nmetadata: {name: b}\n"
        "spec:\n  type: claude\n  egress: {policy: Allowlist, allow: [a:99999]}\n"
    )
    with pytest.raises(AdmissionError) as caught:
        admit(bad.body, settings)
    assert [e.field for e in caught.value.errors] == ["spec.egress.allow[0]"]


def test_describe_shows_the_policy(capsys: pytest.CaptureFixture[str]):
    from api.cli.commands import _describe

    base = {"metadata": {"name": "a"}, "spec": {"type": "claude"}, "status": {}}
    _describe({**base, "spec": {"type": "claude", "egress": {"policy": "Allowlist", "allow": ["x.test:1"]}}}, None)
    _describe(base, None)
    out = capsys.readouterr().out
    assert "Egress:" in out and "Allowlist: x.test:1" in out and "(server default" in out
