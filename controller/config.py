"""Settings from the environment: the seed's names (PORT, DOCKER_*, DEFAULT_*) plus PARALLAX_*.

Every setting has a safe default so ``parallax serve`` needs none; a value that cannot be used stops
the start with the variable's name instead of being replaced by a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.model.quantity import QuantityError, parse_cpu, parse_memory
from controller.model.runtime_class import RUNTIME_CLASSES
from controller.store.rules import DEFAULT_SUBSCRIBER_BUFFER


class ConfigError(ValueError):
    """A setting that cannot be used."""


def default_store_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "parallax" / "agents.db")


STORE_SCHEMES = ("sqlite", "postgresql", "postgres")
"""The stores ``PARALLAX_STORE`` may name (``controller.store.url.open_store`` opens them)."""

_STORE_FORMS = (
    "sqlite:///abs/path/agents.db, sqlite:relative/path/agents.db, a file path "
    "or postgresql://user:password@host:port/database"
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class StoreLocation:
    """What ``PARALLAX_STORE`` names: a kind of store (``scheme``) and, for SQLite, its file (for
    PostgreSQL ``path`` is empty and ``dsn`` the URL as given)."""

    scheme: str
    path: str
    dsn: str = ""


def parse_store_url(raw: str, name: str = "PARALLAX_STORE") -> StoreLocation:
    """``sqlite:///abs/path`` (a file URL: empty host, absolute path), ``sqlite:relative/path``, or a plain
    path (``/abs/path``, ``relative/path``; ``./a:b.db`` for a relative path with a colon). Any other
    scheme, a host, a query or a fragment is a ``ConfigError`` naming ``name``; a password in the URL is
    never repeated in it."""
    match = _SCHEME.match(raw)
    if match is None:
        if not raw:
            raise ConfigError(f"{name}: empty; use {_STORE_FORMS}")
        return StoreLocation("sqlite", raw)
    scheme = match.group(0)[:-1].lower()
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            f"{name}: {_shown(raw)}: {scheme} stores are not supported (SQLite and PostgreSQL are); use {_STORE_FORMS}"
        )
    if scheme in ("postgresql", "postgres"):
        parsed = urllib.parse.urlsplit(raw)
        if not parsed.netloc and "host=" not in parsed.query:
            raise ConfigError(f"{name}: {_shown(raw)}: a PostgreSQL URL names its host; use {_STORE_FORMS}")
        try:
            parsed.port  # noqa: B018 (a port that is not a number raises)
        except ValueError as exc:
            raise ConfigError(f"{name}: {_shown(raw)}: the port is not a number; use {_STORE_FORMS}") from exc
        return StoreLocation("postgresql", "", raw)
    rest = raw[match.end() :]
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host:
            raise ConfigError(f"{name}: {_shown(raw)}: a SQLite store is a file, not a host; use {_STORE_FORMS}")
        rest = slash + path
    if "?" in rest or "#" in rest:
        raise ConfigError(f"{name}: {_shown(raw)}: a SQLite URL takes no query or fragment; use {_STORE_FORMS}")
    path = urllib.parse.unquote(rest)
    if not path or path.endswith("/") or "\0" in path:
        raise ConfigError(f"{name}: {_shown(raw)}: names no file; use {_STORE_FORMS}")
    return StoreLocation(scheme, path)


def _shown(raw: str) -> str:
    """``raw`` for a message: without the password or the query a database URL may carry."""
    shown = raw.split("?", 1)[0] + ("?..." if "?" in raw else "")
    return repr(re.sub(r"^([^:/?#]+://[^:/@]*):[^@/]*@", r"\1:***@", shown))


@dataclass(frozen=True)
class Settings:
    port: int = 3200
    host: str = "127.0.0.1"
    docker_socket: str = "/var/run/docker.sock"
    network: str = "parallax-agents"
    default_memory: str = "512m"
    default_cpu: float = 0.5
    default_pids: int = 512
    store_path: str = field(default_factory=default_store_path)
    """The SQLite file (policy keeps it and its directory out of mounts). Derived from ``store_url``
    when that is given."""
    store_url: str | None = None
    """``PARALLAX_STORE`` as given (a URL or a plain path, see ``parse_store_url``); None: the SQLite
    file ``store_path``."""
    image_prefix: str = "parallax/agent-"
    resync_seconds: float = 30.0
    relist_seconds: float = 300.0
    """How old the runtime cache's last full list may get before a resync lists again (a safety net:
    the event stream keeps the cache current in between)."""
    workers: int = 4
    instance: str = "default"
    api_token: str | None = None
    max_body_bytes: int = 1024 * 1024
    docker_timeout_seconds: float = 30.0
    stats_seconds: float = 10.0
    docker_concurrency: int = 8
    api_concurrency: int = 8
    log_format: str = "text"
    agent_metrics: bool = True
    # Host directories bind mounts may come from: "PATH" (read-only mounts) or "PATH:rw". None: only
    # the ``volumes/`` directory beside the store (see controller/admission/policy.py).
    allowed_volume_roots: tuple[str, ...] | None = None
    metrics_auth: bool = True
    body_timeout_seconds: float = 30.0
    # A connection without a complete request for this long is closed: an idle keep-alive connection, or
    # a client sending its headers a byte at a time (slowloris), which would otherwise hold it forever.
    idle_timeout_seconds: float = 60.0
    # Streams open at once (followed logs, watches, /events, /ws); one more gets 429. Live views talk to
    # Docker through their own pool of max_streams + LIVE_SPARE_CONNECTIONS connections, never the
    # reconciler's.
    max_streams: int = 100
    # status.lastActivityTime is written at most once per this many seconds per agent (API replica): a
    # followed log or a burst of execs is not a store write each. Idle is decided this much later (never early).
    activity_write_seconds: float = 5.0
    # How long a send or exec to a suspended agent with spec.lifecycle.resumeOnActivity waits for it to
    # run again before answering 503.
    resume_wait_seconds: float = 60.0
    # Changes a subscriber of the store, or a watch client, may fall behind before it is cut off: a
    # watch then ends with an ERROR item, code 410 (re-list); the controller's own subscriber re-queues
    # every agent. So a client too slow to read costs at most this many queued items.
    watch_buffer: int = DEFAULT_SUBSCRIBER_BUFFER
    # What runs agents (controller.runtime.select.RUNTIMES): the local Docker daemon, or a Docker Swarm.
    runtime: str = "docker"
    # Egress (controller.egress): the policy of agents whose spec says none (None: Allowlist on the local
    # runtime, AllowAll on the swarm runtime, which cannot enforce the others); the gateway's port on each
    # internal network's bridge address; names the gateway resolves itself, before DNS ((name, address)).
    egress_default: str | None = None
    egress_port: int = 3128
    egress_hosts: tuple[tuple[str, str], ...] = ()
    # Swarm runtime only: the Docker endpoint of each node, by hostname (live views of a task go to its
    # node); how often the manager is polled for task changes; host paths every node shares (bind mounts
    # elsewhere are refused at admission, since a task may land on any node).
    swarm_nodes: tuple[tuple[str, str], ...] = ()
    swarm_poll_seconds: float = 0.5
    swarm_shared_roots: tuple[str, ...] = ()
    # A second port serving the Parallax control plane's runtime contract (/api/* and its /ws), on
    # PARALLAX_HOST like the main one; None: only /api/* on the main port (api.server.compat).
    compat_port: int | None = None
    # The runtime class an agent gets when its spec names none (``spec.runtimeClassName``), and the name
    # the Docker daemon knows gVisor's runsc by (its daemon.json ``runtimes`` key; scripts/setup-gvisor.sh).
    default_runtime_class: str = "runc"
    gvisor_runtime: str = "runsc"

    # Exec and files (api.server.routes_exec, routes_files): the output an exec answer keeps of each of
    # stdout and stderr (the rest is counted, ``truncated``); execs running at once in one agent (one
    # more gets 429); the longest timeoutSeconds an exec may ask for; the largest upload.
    exec_output_bytes: int = 1024 * 1024
    exec_concurrency: int = 32
    exec_max_timeout_seconds: int = 3600
    files_max_bytes: int = 1024 * 1024 * 1024

    # Leader election, when controllers share a store (PostgreSQL): client-go's three durations. A
    # leader that could not renew its lease for renew_deadline stops acting; the others may take it over
    # once lease_duration has passed since its last renewal; every one tries (or renews) each retry_period.
    # See README "Several controllers on one database" for why these numbers.
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0
    identity: str | None = None
    """This controller's name in the lease (``PARALLAX_IDENTITY``); None: ``host:pid``."""
    secret_key_file: str | None = None
    """``PARALLAX_SECRET_KEY_FILE``: the key file sealing secret material in the store
    (``controller.store.cipher``); None: ``secret.key`` beside the SQLite store file."""

    def __post_init__(self) -> None:
        if self.store_url is not None:
            location = parse_store_url(self.store_url)
            if location.scheme == "sqlite":
                object.__setattr__(self, "store_path", location.path)

    @property
    def egress_policy_default(self) -> str:
        if self.egress_default is not None:
            return self.egress_default
        return "AllowAll" if self.runtime == "swarm" else "Allowlist"

    @property
    def store(self) -> str:
        """What ``controller.store.url.open_store`` opens: ``store_url``, else the file ``store_path``."""
        return self.store_url if self.store_url is not None else self.store_path

    @property
    def secret_key_path(self) -> str:
        if self.secret_key_file is not None:
            return self.secret_key_file
        return os.path.join(os.path.dirname(os.path.abspath(self.store_path)), "secret.key")

    @property
    def docker_url(self) -> str:
        return f"unix://{self.docker_socket}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        base = cls()
        memory = env.get("DEFAULT_MEMORY", base.default_memory)
        cpu_text = env.get("DEFAULT_CPU", str(base.default_cpu))
        try:
            parse_memory(memory)
        except QuantityError as exc:
            raise ConfigError(f"DEFAULT_MEMORY: {exc}") from exc
        try:
            cpu = parse_cpu(cpu_text)
        except QuantityError as exc:
            raise ConfigError(f"DEFAULT_CPU: {exc}") from exc
        settings = cls(
            port=_int(env, "PORT", base.port, 1, 65535),
            host=env.get("PARALLAX_HOST", base.host),
            docker_socket=env.get("DOCKER_SOCKET", base.docker_socket),
            network=env.get("DOCKER_NETWORK", base.network),
            default_memory=memory,
            default_cpu=cpu,
            default_pids=_int(env, "PARALLAX_DEFAULT_PIDS", base.default_pids, 16, 1 << 20),
            store_url=env.get("PARALLAX_STORE") or None,
            image_prefix=env.get("PARALLAX_IMAGE_PREFIX", base.image_prefix),
            resync_seconds=_float(env, "PARALLAX_RESYNC_SECONDS", base.resync_seconds, 0.1),
            relist_seconds=_float(env, "PARALLAX_RELIST_SECONDS", base.relist_seconds, 1.0),
            workers=_int(env, "PARALLAX_WORKERS", base.workers, 1, 256),
            instance=env.get("PARALLAX_INSTANCE", base.instance),
            api_token=env.get("PARALLAX_API_TOKEN") or None,
            max_body_bytes=_int(env, "PARALLAX_MAX_BODY_BYTES", base.max_body_bytes, 1024, 1 << 30),
            docker_timeout_seconds=_float(env, "PARALLAX_DOCKER_TIMEOUT", base.docker_timeout_seconds, 0.1),
            stats_seconds=_float(env, "PARALLAX_STATS_SECONDS", base.stats_seconds, 0.5),
            docker_concurrency=_int(env, "PARALLAX_DOCKER_CONCURRENCY", base.docker_concurrency, 1, 256),
            api_concurrency=_int(env, "PARALLAX_API_CONCURRENCY", base.api_concurrency, 1, 1024),
            log_format=_choice(env, "PARALLAX_LOG_FORMAT", base.log_format, ("text", "json")),
            agent_metrics=_switch(env, "PARALLAX_AGENT_METRICS", base.agent_metrics),
            allowed_volume_roots=_volume_roots(env, "PARALLAX_ALLOWED_VOLUME_ROOTS"),
            metrics_auth=_switch(env, "PARALLAX_METRICS_AUTH", base.metrics_auth),
            body_timeout_seconds=_float(env, "PARALLAX_BODY_TIMEOUT", base.body_timeout_seconds, 0.1),
            idle_timeout_seconds=_float(env, "PARALLAX_IDLE_TIMEOUT", base.idle_timeout_seconds, 0.1),
            max_streams=_int(env, "PARALLAX_MAX_STREAMS", base.max_streams, 1, 10000),
            activity_write_seconds=_float(env, "PARALLAX_ACTIVITY_WRITE_SECONDS", base.activity_write_seconds, 0.0),
            resume_wait_seconds=_float(env, "PARALLAX_RESUME_WAIT_SECONDS", base.resume_wait_seconds, 0.1),
            watch_buffer=_int(env, "PARALLAX_WATCH_BUFFER", base.watch_buffer, 16, 1 << 20),
            runtime=_choice(env, "PARALLAX_RUNTIME", base.runtime, ("docker", "swarm")),
            swarm_nodes=_node_endpoints(env, "PARALLAX_SWARM_NODES"),
            swarm_poll_seconds=_float(env, "PARALLAX_SWARM_POLL_SECONDS", base.swarm_poll_seconds, 0.05),
            swarm_shared_roots=_volume_roots(env, "PARALLAX_SWARM_SHARED_ROOTS") or (),
            compat_port=_int(env, "PARALLAX_COMPAT_PORT", 0, 1, 65535) or None,
            default_runtime_class=_choice(
                env, "PARALLAX_DEFAULT_RUNTIME_CLASS", base.default_runtime_class, RUNTIME_CLASSES
            ),
            gvisor_runtime=env.get("PARALLAX_GVISOR_RUNTIME") or base.gvisor_runtime,
            exec_output_bytes=_int(env, "PARALLAX_EXEC_OUTPUT_BYTES", base.exec_output_bytes, 1024, 1 << 30),
            exec_concurrency=_int(env, "PARALLAX_EXEC_CONCURRENCY", base.exec_concurrency, 1, 1024),
            exec_max_timeout_seconds=_int(
                env, "PARALLAX_EXEC_MAX_TIMEOUT", base.exec_max_timeout_seconds, 1, 7 * 24 * 3600
            ),
            files_max_bytes=_int(env, "PARALLAX_FILES_MAX_BYTES", base.files_max_bytes, 1, 1 << 40),
            lease_duration_seconds=_float(env, "PARALLAX_LEASE_DURATION", base.lease_duration_seconds, 0.5),
            renew_deadline_seconds=_float(env, "PARALLAX_RENEW_DEADLINE", base.renew_deadline_seconds, 0.3),
            retry_period_seconds=_float(env, "PARALLAX_RETRY_PERIOD", base.retry_period_seconds, 0.1),
            identity=env.get("PARALLAX_IDENTITY") or None,
            secret_key_file=env.get("PARALLAX_SECRET_KEY_FILE") or None,
            egress_default=_egress_policy(env, "PARALLAX_EGRESS_DEFAULT"),
            egress_port=_int(env, "PARALLAX_EGRESS_PORT", base.egress_port, 1, 65535),
            egress_hosts=_egress_hosts(env, "PARALLAX_EGRESS_HOSTS"),
        )
        if settings.runtime == "swarm" and settings.egress_policy_default != "AllowAll":
            raise ConfigError(
                f"PARALLAX_EGRESS_DEFAULT: {settings.egress_default} cannot be enforced on the swarm runtime "
                "(its agents' egress is open); leave it unset or set AllowAll"
            )
        if settings.compat_port is not None and settings.compat_port == settings.port:
            raise ConfigError(f"PARALLAX_COMPAT_PORT: {settings.compat_port} is already PORT; pick another port")
        if settings.runtime == "swarm" and settings.default_runtime_class == "gvisor":
            raise ConfigError(
                "PARALLAX_DEFAULT_RUNTIME_CLASS: gvisor cannot be the default with PARALLAX_RUNTIME=swarm "
                "(a Swarm service cannot choose its OCI runtime)"
            )
        if not settings.renew_deadline_seconds < settings.lease_duration_seconds:
            raise ConfigError(
                f"PARALLAX_RENEW_DEADLINE: {settings.renew_deadline_seconds} must be less than "
                f"PARALLAX_LEASE_DURATION ({settings.lease_duration_seconds}): a leader stops acting before "
                "another may take over"
            )
        if not settings.retry_period_seconds < settings.renew_deadline_seconds:
            raise ConfigError(
                f"PARALLAX_RETRY_PERIOD: {settings.retry_period_seconds} must be less than "
                f"PARALLAX_RENEW_DEADLINE ({settings.renew_deadline_seconds}): a leader renews before its deadline"
            )
        if settings.network in ("host", "none", "bridge", "default"):
            raise ConfigError(
                f"DOCKER_NETWORK: {settings.network!r} cannot be used; agents need a user-defined network"
            )
        if not settings.network or not settings.image_prefix or not settings.instance:
            raise ConfigError("DOCKER_NETWORK, PARALLAX_IMAGE_PREFIX and PARALLAX_INSTANCE may not be empty")
        return settings


def _node_endpoints(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``host1=unix:///run/n1.sock,host2=tcp://10.0.0.2:2376``: each node's Docker endpoint by hostname."""
    found = []
    for item in filter(None, (part.strip() for part in env.get(name, "").split(","))):
        host, _, url = item.partition("=")
        if not host or not url.startswith(("unix://", "tcp://")):
            raise ConfigError(f"{name}: {item!r} is not HOSTNAME=unix:///path or HOSTNAME=tcp://host:port")
        found.append((host, url))
    return tuple(found)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {raw!r} is not an integer") from exc
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is outside {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {raw!r} is not a number") from exc
    if not value >= low:
        raise ConfigError(f"{name}: {value} must be at least {low}")
    return value


def _volume_roots(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """Comma-separated ``/abs/path`` or ``/abs/path:rw`` entries; unset means the default root."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    roots = []
    for entry in (part.strip() for part in raw.split(",")):
        path, _, mode = entry.partition(":")
        if not path.startswith("/") or mode not in ("", "ro", "rw"):
            raise ConfigError(f"{name}: {entry!r} must be an absolute path, optionally followed by :ro or :rw")
        if os.path.normpath(path) == "/":
            raise ConfigError(f"{name}: / cannot be an allowed volume root")
        roots.append(entry)
    return tuple(roots)


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in allowed:
        raise ConfigError(f"{name}: {raw!r} is not one of {', '.join(allowed)}")
    return raw.lower()


def _egress_policy(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    for policy in ("Allowlist", "AllowAll", "DenyAll"):
        if raw.lower() == policy.lower():
            return policy
    raise ConfigError(f"{name}: {raw!r} is not one of Allowlist, AllowAll, DenyAll")


def _egress_hosts(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``name=address,name=address``: names the egress gateway resolves to these addresses."""
    raw = env.get(name) or ""
    out = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        host, eq, address = item.partition("=")
        try:
            ipaddress.ip_address(address.strip())
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not NAME=IP-ADDRESS") from None
        if not eq or not host.strip():
            raise ConfigError(f"{name}: {item!r} is not NAME=IP-ADDRESS")
        out.append((host.strip().lower().removesuffix("."), address.strip()))
    return tuple(out)


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: {raw!r} is not on/off (1/0, true/false, yes/no)")
