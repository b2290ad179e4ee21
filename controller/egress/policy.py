"""Pure egress decisions: allow entries, matching a destination against them, the type defaults.

An allow entry is one of ``host``, ``*.domain``, ``host:port``, ``*.domain:port``, ``ip``, ``ip:port``,
``cidr``, ``cidr:port`` (IPv6 in brackets: ``[fd00::/64]:443``). Without a port an entry allows 80 and
443 only (HTTP and HTTPS). ``*.github.com`` matches every name below github.com, not github.com itself.
A name entry matches the name the agent asked for; an address entry matches an address the agent asked
for literally. A name is never resolved to be judged (resolving it would carry it to a DNS server: a
channel out), so a name is allowed by name entries only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

ALLOWLIST = "Allowlist"
ALLOW_ALL = "AllowAll"
DENY_ALL = "DenyAll"
POLICIES = (ALLOWLIST, ALLOW_ALL, DENY_ALL)
DEFAULT_PORTS = (80, 443)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$", re.ASCII)

# The hosts each agent type's CLI talks to: its model API, and the package registries and code hosts it
# installs from. An Allowlist policy without its own ``allow`` list gets its type's.
_CODE_HOSTS = ("github.com", "*.github.com", "*.githubusercontent.com", "codeload.github.com")
_NPM = ("registry.npmjs.org",)
_PYPI = ("pypi.org", "files.pythonhosted.org")
TYPE_ALLOWLISTS: dict[str, tuple[str, ...]] = {
    "claude": ("api.anthropic.com", "statsig.anthropic.com", "statsig.com", "sentry.io", *_NPM, *_PYPI, *_CODE_HOSTS),
    "codex": ("api.openai.com", "auth.openai.com", "chatgpt.com", *_NPM, *_PYPI, *_CODE_HOSTS),
    "gemini": (
        "generativelanguage.googleapis.com",
        "cloudcode-pa.googleapis.com",
        "oauth2.googleapis.com",
        "accounts.google.com",
        *_NPM,
        *_PYPI,
        *_CODE_HOSTS,
    ),
    "aider": (
        "api.anthropic.com",
        "api.openai.com",
        "generativelanguage.googleapis.com",
        "openrouter.ai",
        *_PYPI,
        *_CODE_HOSTS,
    ),
    "custom": (),
}


class RuleError(ValueError):
    """An allow entry that means nothing (the message says why)."""


@dataclass(frozen=True)
class AllowRule:
    """One parsed allow entry: a name (``suffix`` for ``*.domain``) or an address range, and its ports."""

    name: str | None = None
    suffix: bool = False
    network: IPNetwork | None = None
    ports: tuple[int, ...] = DEFAULT_PORTS

    def allows(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        literal = address_literal(host)
        if self.network is not None:
            return literal is not None and literal.version == self.network.version and literal in self.network
        if literal is not None:
            return False
        name = normalise_host(host)
        if self.suffix:
            return name.endswith("." + str(self.name))
        return name == self.name


@dataclass(frozen=True)
class EgressSpec:
    """``spec.egress`` as written: ``allow`` None means "the agent type's list"."""

    policy: str
    allow: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"policy": self.policy}
        if self.allow is not None:
            out["allow"] = list(self.allow)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EgressSpec:
        allow = data.get("allow")
        return cls(
            policy=str(data.get("policy", ALLOWLIST)),
            allow=tuple(str(a) for a in allow) if isinstance(allow, list) else None,
        )


@dataclass(frozen=True)
class Effective:
    """The policy that holds for an agent now, its entries parsed."""

    policy: str
    rules: tuple[AllowRule, ...] = ()

    @property
    def restricted(self) -> bool:
        """Traffic goes through the gateway (Allowlist, DenyAll), not straight out."""
        return self.policy != ALLOW_ALL

    def allows(self, host: str, port: int) -> bool:
        if self.policy == ALLOW_ALL:
            return True
        if self.policy == DENY_ALL:
            return False
        return any(rule.allows(host, port) for rule in self.rules)


def normalise_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.removesuffix(".")


def address_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(normalise_host(host).partition("%")[0])
    except ValueError:
        return None


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RuleError(f"{entry!r}: port {text!r} must be a number from 1 to 65535")
    return int(text)


def _split_port(entry: str) -> tuple[str, tuple[int, ...]]:
    """``host[:port]`` / ``[v6]:port`` / bare IPv6 into the host part and its ports."""
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise RuleError(f"{entry!r}: '[' without ']'")
        host, rest = entry[1:end], entry[end + 1 :]
        if not rest:
            return host, DEFAULT_PORTS
        if not rest.startswith(":"):
            raise RuleError(f"{entry!r}: only ':port' may follow ']'")
        return host, (_port(rest[1:], entry),)
    if entry.count(":") > 1:
        return entry, DEFAULT_PORTS  # a bare IPv6 address or range: no port without brackets
    host, colon, port = entry.partition(":")
    return host, ((_port(port, entry),) if colon else DEFAULT_PORTS)


def parse_rule(entry: str) -> AllowRule:
    """One allow entry, or ``RuleError`` saying what is wrong with it."""
    if not isinstance(entry, str) or not entry.strip() or entry != entry.strip():
        raise RuleError(f"{entry!r}: an entry is a host, *.domain or address range, optionally with :port")
    host, ports = _split_port(entry)
    if not host:
        raise RuleError(f"{entry!r}: no host before the port")
    if any(c.isdigit() for c in host[:1]) or ":" in host or "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            if "/" in host or ":" in host or _looks_numeric(host):
                raise RuleError(f"{entry!r}: not an IP address or CIDR range ({exc})") from exc
        else:
            if network.prefixlen == 0:
                raise RuleError(f"{entry!r}: a range of every address is AllowAll; say policy AllowAll instead")
            return AllowRule(network=network, ports=ports)
    name = host.lower()
    suffix = name.startswith("*.")
    if suffix:
        name = name[2:]
    if "*" in name:
        raise RuleError(f"{entry!r}: '*' may only be the whole first label ('*.example.com')")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise RuleError(f"{entry!r}: {host!r} is not a DNS name (letters, digits, '-', dot-separated labels)")
    if suffix and len(labels) < 2:
        raise RuleError(f"{entry!r}: '*.' needs a domain of at least two labels ('*.example.com')")
    return AllowRule(name=name, suffix=suffix, ports=ports)


def _looks_numeric(host: str) -> bool:
    return all(part.isdigit() for part in host.split("."))


def rule_problems(entries: Sequence[str]) -> list[tuple[int, str]]:
    """Each refused entry's index and why."""
    problems = []
    for i, entry in enumerate(entries):
        try:
            parse_rule(entry)
        except RuleError as exc:
            problems.append((i, str(exc)))
    return problems


def effective(egress: EgressSpec | None, agent_type: str, default_policy: str) -> Effective:
    """The policy an agent lives under: its own ``spec.egress``, else the server default; an Allowlist
    without its own list has its type's."""
    policy = egress.policy if egress is not None else default_policy
    if policy != ALLOWLIST:
        return Effective(policy)
    entries = egress.allow if egress is not None and egress.allow is not None else TYPE_ALLOWLISTS.get(agent_type, ())
    return Effective(policy, tuple(parse_rule(e) for e in entries))


EGRESS_NETWORK_SUFFIX = "-egress"
"""An agent whose traffic goes through the gateway sits on ``<spec.network>-egress``, an internal network
(no route out) beside its network; every such agent of that network is on it, reachable by name."""


def egress_network(network: str) -> str:
    return network + EGRESS_NETWORK_SUFFIX
