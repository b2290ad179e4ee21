"""The kubectl-like client commands of ``parallax``: apply, get, describe, delete, logs, restart, pause,
unpause, keepalive, send, top.

They talk to a running server over HTTP (``api.cli.client``); files are read here, with the same safe YAML
loader the server uses, so an invalid file is reported with its name and line before anything is sent.
Every error ends the command with one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import yaml
from rich.console import Console
from rich.table import Table

from api.cli.client import DEFAULT_SERVER, SERVER_ENV, TOKEN_ENV, ApiClient, ClientError, ErrorAnswer, WatchUnsupported
from controller.apply.yaml_loader import Document, YamlError, expand_lists, load_documents, load_json_documents
from controller.model.timestamps import parse_time

F = TypeVar("F", bound=Callable[..., Any])

RESOURCE_WORDS = ("agents", "agent", "ag")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
OK_PHASES = ("Running", "Paused", "Succeeded", "Suspended")
FAILED_PHASES = ("Failed", "CrashLoopBackOff")
POLL_SECONDS = 0.5
WATCH_POLL_SECONDS = 1.0


class UsageProblem(ClientError):
    """A mistake in the command line or in a local file."""


# --- shared plumbing ---------------------------------------------------------------------------------


def _console() -> Console:
    width = None if sys.stdout.isatty() else 250
    return Console(markup=False, highlight=False, emoji=False, width=width, soft_wrap=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def client_command(func: F) -> F:
    """Adds ``--server`` and ``--token``, builds the client, and turns every failure into one line."""

    @click.option(
        "--server",
        envvar=SERVER_ENV,
        default=DEFAULT_SERVER,
        show_default=True,
        help=f"The Parallax API (or set {SERVER_ENV}).",
    )
    @click.option("--token", envvar=TOKEN_ENV, default=None, help=f"Bearer token (or set {TOKEN_ENV}).")
    @functools.wraps(func)
    def wrapper(server: str, token: str | None, **kwargs: Any) -> Any:
        client = ApiClient(server, token or None)
        try:
            return func(client, **kwargs)
        except ClientError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


def _names(args: tuple[str, ...], *, required: bool = True) -> list[str]:
    """``agent NAME...``, ``agents NAME``, ``agent/NAME`` or just ``NAME``: the agent names."""
    words = list(args)
    if words and words[0].lower() in RESOURCE_WORDS:
        words = words[1:]
    names = []
    for word in words:
        kind, slash, name = word.partition("/")
        if slash:
            if kind.lower() not in RESOURCE_WORDS:
                raise UsageProblem(f"unknown resource type {kind!r}: only agents exist")
            word = name
        if not word:
            raise UsageProblem("an empty agent name")
        names.append(word)
    if required and not names:
        raise UsageProblem("name at least one agent (parallax <command> agent NAME)")
    return names


def _resource_and_name(args: tuple[str, ...]) -> str | None:
    """``get agents [NAME]``: the optional name; any other resource type is a usage error."""
    if not args:
        raise UsageProblem("say what to get: parallax get agents [NAME]")
    first, *rest = args
    kind, slash, name = first.partition("/")
    if kind.lower() not in RESOURCE_WORDS:
        raise UsageProblem(f"unknown resource type {kind!r}: only agents exist (parallax get agents)")
    if slash:
        rest = [name, *rest]
    if len(rest) > 1:
        raise UsageProblem("get takes at most one agent name")
    return rest[0] if rest else None


# --- reading spec files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecDoc:
    source: str
    doc: Document

    def where(self, field: str | None = None) -> str:
        line = self.doc.line_of(field) if field else self.doc.line
        return f"{self.source}:{line}" if line is not None else self.source


def _spec_files(path: str) -> list[Path]:
    target = Path(path)
    if target.is_dir():
        return sorted(
            p
            for p in target.rglob("*")
            if p.is_file()
            and p.suffix in SPEC_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(target).parts)
        )
    if target.is_file():
        return [target]
    raise UsageProblem(f"{path}: no such file or directory")


def read_specs(paths: Iterable[str]) -> list[SpecDoc]:
    """Every document of the given files, directories (recursively) and ``-`` (stdin), in order.

    Problems in any file are all reported (file name and line) before this gives up.
    """
    docs: list[SpecDoc] = []
    problems: list[str] = []
    for path in paths:
        sources: list[tuple[str, bytes]]
        if path == "-":
            sources = [("<stdin>", sys.stdin.buffer.read())]
        else:
            sources = [(str(p), p.read_bytes()) for p in _spec_files(path)]
            if not sources:
                raise UsageProblem(f"{path}: no .yaml, .yml or .json files in this directory")
        for source, data in sources:
            try:
                loaded = load_json_documents(data) if source.endswith(".json") else load_documents(data)
            except YamlError as exc:
                problems.extend(f"{source}:{p.line or 1}: {_problem_text(p.field, p.message)}" for p in exc.problems)
                continue
            for doc in expand_lists(loaded):
                problems.extend(f"{source}:{p.line}: {_problem_text(p.field, p.message)}" for p in doc.problems)
                docs.append(SpecDoc(source, doc))
    if problems:
        for problem in problems[:-1]:
            click.echo(f"error: {problem}", err=True)
        raise UsageProblem(problems[-1])
    if not docs:
        raise UsageProblem("no documents to apply")
    return docs


def _problem_text(field: str | None, message: str) -> str:
    return f"{field}: {message}" if field else message


# --- formatting -------------------------------------------------------------------------------------


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's short ages: 42s, 5m, 3h, 2d."""
    if not timestamp:
        return "<unknown>"
    try:
        then = parse_time(timestamp)
    except ValueError:
        return "<unknown>"
    seconds = max(int(((now or datetime.now(UTC)) - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def size(value: float | int | None) -> str:
    if value is None:
        return "-"
    number = float(value)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if abs(number) < 1024 or unit == "Ti":
            return f"{number:.0f}{unit}" if unit == "B" else f"{number:.1f}{unit}"
        number /= 1024
    return f"{number:.1f}Ti"


TABLE_COLUMNS = ("NAME", "TYPE", "PHASE", "RESTARTS", "AGE")
WIDE_COLUMNS = (*TABLE_COLUMNS, "IMAGE", "NETWORK", "CONTAINER", "MEMORY", "CPU", "ERROR")


def agent_row(agent: dict[str, Any], *, wide: bool = False, deleted: bool = False) -> tuple[str, ...]:
    metadata, spec, status = agent.get("metadata", {}), agent.get("spec", {}), agent.get("status") or {}
    phase = "Deleted" if deleted else str(status.get("phase", "Pending"))
    row: tuple[str, ...] = (
        str(metadata.get("name", "")),
        str(spec.get("type", "")),
        phase,
        str(status.get("restartCount", 0)),
        age(metadata.get("creationTimestamp")),
    )
    if wide:
        resources = spec.get("resources") or {}
        row += (
            str(spec.get("image") or f"<{spec.get('type', '?')} default>"),
            str(spec.get("network", "")),
            str(status.get("containerId") or "-")[:12],
            str(resources.get("memory", "-")),
            str(resources.get("cpu", "-")),
            str((status.get("error") or {}).get("code") or "-"),
        )
    return row


def make_table(
    columns: Iterable[str], rows: Iterable[Iterable[str]], *, header: bool = True, widths: list[int] | None = None
) -> Table:
    table = Table(box=None, show_header=header, header_style="bold", pad_edge=False, padding=(0, 0, 0, 3))
    for i, column in enumerate(columns):
        table.add_column(column, no_wrap=True, min_width=widths[i] if widths else None)
    for row in rows:
        table.add_row(*row)
    return table


def print_table(table: Table, indent: int = 0) -> None:
    """Rendered by rich, printed without trailing blanks (kubectl's output has none)."""
    console = _console()
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        click.echo(" " * indent + line.rstrip())
    sys.stdout.flush()


def column_widths(columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[int]:
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
    return widths


def _dump(value: Any, output: str) -> str:
    if output == "json":
        return json.dumps(value, indent=2)
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip("\n")


# --- apply ------------------------------------------------------------------------------------------


@click.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, help="A file, a directory (recursive) or -.")
@click.option("--dry-run", is_flag=True, help="Show what would change, with the reason for each step; write nothing.")
@click.option("--prune", is_flag=True, help="Delete agents matching -l that the files no longer contain.")
@click.option("-l", "--selector", default=None, help="Label selector for --prune, e.g. app=review-bot.")
@click.option("--wait", is_flag=True, help="Wait until every applied agent is running (or has failed).")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Seconds --wait waits.")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
@click.option("--continue-on-error", is_flag=True, help="Apply the valid documents even if others are invalid.")
@client_command
def apply(
    client: ApiClient,
    files: tuple[str, ...],
    dry_run: bool,
    prune: bool,
    selector: str | None,
    wait: bool,
    timeout: float,
    output: str,
    continue_on_error: bool,
) -> None:
    """Create or update agents from YAML files, like kubectl apply."""
    if prune and not selector:
        raise UsageProblem("--prune needs a label selector (-l app=x): without one it would delete every other agent")
    if selector and not prune:
        raise UsageProblem("-l is only used with --prune")
    specs = read_specs(files)
    status, result = client.apply(
        [s.doc.body for s in specs], dry_run=dry_run, prune=prune, selector=selector, atomic=not continue_on_error
    )
    if output != "text":
        click.echo(_dump(result, output))
    else:
        _print_apply(result, specs)
    if status != 200:
        sys.exit(1)
    if wait and not dry_run:
        targets = {
            r["name"]: int(r.get("agent", {}).get("metadata", {}).get("generation", 0))
            for r in result["results"]
            if r.get("outcome") in ("created", "configured", "unchanged")
            and r.get("name")
            and r.get("kind", "Agent") == "Agent"
        }
        if not wait_settled(client, targets, timeout):
            sys.exit(1)


def _print_apply(result: dict[str, Any], specs: list[SpecDoc]) -> None:
    suffix = " (dry run)" if result.get("dryRun") else ""
    failed = False
    for item in result.get("results", []):
        outcome, name = item.get("outcome"), item.get("name") or "?"
        kind = str(item.get("kind") or "Agent").lower()
        spec = specs[item["index"]] if 0 <= item.get("index", -1) < len(specs) else None
        if outcome == "error":
            failed = True
            for error in item.get("errors", []):
                where = spec.where(error.get("field")) if spec else "?"
                text = _problem_text(error.get("field"), error.get("message", ""))
                click.echo(f"error: {where}: {kind} {name}: {text}", err=True)
            continue
        if outcome == "skipped":
            continue
        click.echo(f"{kind}/{name} {outcome}{suffix}")
        if result.get("dryRun"):
            _echo_plan(item)
    for item in result.get("pruned", []):
        if item.get("errors"):
            failed = True
            for error in item["errors"]:
                click.echo(f"error: agent {item.get('name')}: {error.get('message')}", err=True)
            continue
        click.echo(f"agent/{item.get('name')} pruned{suffix}")
        if result.get("dryRun"):
            _echo_plan(item)
    applied = any(i.get("outcome") in ("created", "configured", "unchanged") for i in result.get("results", []))
    if failed and not applied:
        what = "a real apply would write nothing" if result.get("dryRun") else "nothing was applied"
        click.echo(f"error: {what}", err=True)


def _echo_plan(item: dict[str, Any]) -> None:
    """A dry run's plan for one agent: each step with its cause, then the reconciler's own operations."""
    for step in item.get("plan", []):
        click.echo(f"  {step['action']}: {step['cause']}")
    for op in item.get("operations", []):
        click.echo(f"    - {op['operation']} {op['target'][:24]}: {op['cause']}")
    if item.get("operationsError"):
        click.echo(f"    (the reconciler's operations are unknown: {item['operationsError']})")


def _settled(agent: dict[str, Any] | None, generation: int) -> tuple[str, str]:
    """('ok'|'failed'|'waiting', what to show) for one agent being waited for."""
    if agent is None:
        return "failed", "was deleted"
    status = agent.get("status") or {}
    phase = str(status.get("phase", "Pending"))
    if int(status.get("observedGeneration", 0)) < generation:
        return "waiting", "Pending (waiting for the controller)" if phase == "Pending" else "Updating"
    error = status.get("error") or {}
    if error:
        return "failed", f"{phase}: {error.get('code')}: {error.get('message', '')}"
    if phase in FAILED_PHASES:
        last = status.get("lastState") or {}
        detail = f" (exit code {last['exitCode']}, {last.get('reason', '')})" if "exitCode" in last else ""
        return "failed", phase + detail
    if phase in OK_PHASES:
        return "ok", phase
    return "waiting", phase


def wait_settled(client: ApiClient, targets: dict[str, int], timeout: float) -> bool:
    """Live progress until each agent runs or fails; False when one failed or the time ran out."""
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    states: dict[str, str] = {}
    while True:
        agents = {a["metadata"]["name"]: a for a in client.list_agents()}
        for name, generation in targets.items():
            state, text = _settled(agents.get(name), generation)
            states[name] = state
            if shown.get(name) != text:
                click.echo(f"agent/{name} {text}")
                shown[name] = text
        if all(state != "waiting" for state in states.values()):
            break
        if time.monotonic() >= deadline:
            waiting = [f"agent/{n} ({shown[n]})" for n, s in states.items() if s == "waiting"]
            _fail(f"timed out after {timeout:g}s waiting for {', '.join(waiting)}")
        time.sleep(POLL_SECONDS)
    failed = [name for name, state in states.items() if state == "failed"]
    if failed:
        click.echo(f"error: {len(failed)} of {len(targets)} agents failed: {', '.join(failed)}", err=True)
        return False
    return True


# --- get --------------------------------------------------------------------------------------------


@click.command()
@click.argument("args", nargs=-1)
@click.option("-l", "--selector", default=None, help="Label selector, e.g. team=research.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "wide", "yaml", "json", "name"]), default="table", show_default=True
)
@click.option("-w", "--watch", is_flag=True, help="After listing, print agents again as they change.")
@client_command
def get(client: ApiClient, args: tuple[str, ...], selector: str | None, output: str, watch: bool) -> None:
    """List agents (parallax get agents [NAME]) or secrets (parallax get secrets [NAME])."""
    secret = secret_names(args)
    if secret is not None:
        if watch or selector:
            raise UsageProblem("get secrets takes neither --watch nor --selector")
        print_secrets(client, secret, output)
        return
    name = _resource_and_name(args)
    if watch:
        _watch(client, selector, name, output)
        return
    if name is not None:
        agent = client.get_agent(name)
        _print_agents([agent], output, single=True)
        return
    agents = client.list_agents(selector)
    if not agents and output in ("table", "wide"):
        click.echo("No agents found.", err=True)
        return
    _print_agents(agents, output, single=False)


def _print_agents(agents: list[dict[str, Any]], output: str, *, single: bool) -> None:
    if output in ("yaml", "json"):
        value: Any = agents[0] if single else {"apiVersion": "parallax.ai/v1", "kind": "AgentList", "items": agents}
        click.echo(_dump(value, output))
    elif output == "name":
        for agent in agents:
            click.echo(f"agent/{agent['metadata']['name']}")
    else:
        wide = output == "wide"
        print_table(make_table(WIDE_COLUMNS if wide else TABLE_COLUMNS, [agent_row(a, wide=wide) for a in agents]))


class _WatchPrinter:
    """Prints the first listing as a table, then one row (same column widths) per visible change."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.wide = output == "wide"
        self.columns = WIDE_COLUMNS if self.wide else TABLE_COLUMNS
        self.widths: list[int] | None = None
        self.rows: dict[str, tuple[str, ...]] = {}

    def first(self, agents: list[dict[str, Any]]) -> None:
        rows = [agent_row(a, wide=self.wide) for a in agents]
        self.rows = {row[0]: row for row in rows}
        if self.output in ("yaml", "json", "name"):
            for agent in agents:
                self._document(agent)
            self.widths = []
            return
        self.widths = column_widths(self.columns, rows)
        print_table(make_table(self.columns, rows, widths=self.widths))

    def change(self, agent: dict[str, Any], deleted: bool = False) -> None:
        row = agent_row(agent, wide=self.wide, deleted=deleted)
        name = row[0]
        if _without_age(self.rows.get(name)) == _without_age(row):
            return  # a write that changes nothing a person sees here
        if deleted:
            self.rows.pop(name, None)
        else:
            self.rows[name] = row
        if self.output in ("yaml", "json", "name"):
            self._document(agent)
            return
        print_table(make_table(self.columns, [row], header=False, widths=self.widths))

    def _document(self, agent: dict[str, Any]) -> None:
        if self.output == "name":
            click.echo(f"agent/{agent['metadata']['name']}")
        elif self.output == "json":
            click.echo(json.dumps(agent))
        else:
            click.echo("---\n" + _dump(agent, "yaml"))
        sys.stdout.flush()


def _without_age(row: tuple[str, ...] | None) -> tuple[str, ...] | None:
    age_column = TABLE_COLUMNS.index("AGE")
    return None if row is None else row[:age_column] + row[age_column + 1 :]


def _watch(client: ApiClient, selector: str | None, name: str | None, output: str) -> None:
    printer = _WatchPrinter(output)
    try:
        initial: list[dict[str, Any]] = []
        for kind, agent in client.watch_agents(selector, name):
            if printer.widths is None:
                if kind == "ADDED":
                    initial.append(agent)
                elif kind == "BOOKMARK":
                    printer.first(initial)
                continue
            if kind != "BOOKMARK":
                printer.change(agent, deleted=kind == "DELETED")
        raise ClientError("the server closed the watch")
    except WatchUnsupported:
        pass
    except KeyboardInterrupt:
        return
    try:
        _poll_watch(client, selector, name, printer)
    except KeyboardInterrupt:
        return


def _poll_watch(client: ApiClient, selector: str | None, name: str | None, printer: _WatchPrinter) -> None:
    """The watch for servers without a stream: list every second and print what changed."""
    known: dict[str, dict[str, Any]] = {}
    while True:
        agents = [a for a in client.list_agents(selector) if name is None or a["metadata"]["name"] == name]
        current = {a["metadata"]["name"]: a for a in agents}
        if printer.widths is None:
            printer.first(agents)
        else:
            for agent in current.values():
                printer.change(agent)
            for agent_name in set(known) - set(current):
                printer.change(known[agent_name], deleted=True)
        known = current
        time.sleep(WATCH_POLL_SECONDS)


# --- describe ---------------------------------------------------------------------------------------


@click.command()
@click.argument("args", nargs=-1, required=True)
@client_command
def describe(client: ApiClient, args: tuple[str, ...]) -> None:
    """Show an agent in detail: spec (no secret values), status, conditions and recent events."""
    for i, name in enumerate(_names(args)):
        if i:
            click.echo("")
        agent = client.get_agent(name)
        _describe(agent, client.list_agent_events(name))


def _egress(egress: Any) -> str:
    if not isinstance(egress, dict):
        return "(server default: PARALLAX_EGRESS_DEFAULT, with the type's list)"
    allow = egress.get("allow")
    if egress.get("policy") == "Allowlist":
        return f"Allowlist: {', '.join(allow)}" if allow else "Allowlist (the type's list)"
    return str(egress.get("policy", ""))


def _describe(agent: dict[str, Any], agent_events: list[dict[str, Any]] | None) -> None:
    metadata, spec, status = agent.get("metadata", {}), agent.get("spec", {}), agent.get("status") or {}
    resources = spec.get("resources") or {}
    pairs: list[tuple[str, str]] = [
        ("Name", metadata.get("name", "")),
        ("Labels", _mapping(metadata.get("labels"))),
        ("Annotations", _mapping(metadata.get("annotations"))),
        ("Created", f"{metadata.get('creationTimestamp')} ({age(metadata.get('creationTimestamp'))} ago)"),
        ("Generation", f"{metadata.get('generation')} (observed {status.get('observedGeneration', 0)})"),
        ("Type", spec.get("type", "")),
        ("Image", spec.get("image") or f"(default for {spec.get('type')})"),
        ("Command", " ".join(spec["command"]) if spec.get("command") else "(image default)"),
        ("Args", " ".join(spec["args"]) if spec.get("args") else "(image default)"),
        ("Env", ", ".join(_env_entry(k, v) for k, v in sorted((spec.get("env") or {}).items())) or "<none>"),
        (
            "Resources",
            ", ".join(f"{key} {resources.get(key, '-')}" for key in ("memory", "cpu", "pids")),
        ),
        ("Volumes", ", ".join(spec.get("volumes") or []) or "<none>"),
        ("Network", str(spec.get("network", ""))),
        ("Egress", _egress(spec.get("egress"))),
        ("Restart Policy", str(spec.get("restartPolicy", ""))),
        ("Suspend", str(spec.get("suspend", False)).lower()),
        ("Paused", str(spec.get("paused", False)).lower()),
        (
            "Lifecycle",
            ", ".join(f"{k} {v}" for k, v in (spec.get("lifecycle") or {}).items() if v not in (None, False))
            or "<none>",
        ),
        ("Stop Grace", f"{spec.get('stopGracePeriodSeconds', 10)}s"),
        ("Deletion", str(metadata.get("deletionTimestamp") or "")),
        ("Phase", str(status.get("phase", "Pending"))),
        ("Container", str(status.get("containerId") or "<none>")),
        ("Restarts", str(status.get("restartCount", 0))),
        ("Started", str(status.get("startedAt") or "-")),
        ("Reason", str(status.get("reason") or "")),
        ("Last Activity", str(status.get("lastActivityTime") or "")),
    ]
    last = status.get("lastState") or {}
    if last:
        pairs.append(
            ("Last State", f"{last.get('reason', '')}, exit code {last.get('exitCode')} at {last.get('finishedAt')}")
        )
    error = status.get("error") or {}
    if error:
        pairs.append(("Error", f"{error.get('code')}: {error.get('message', '')}"))
    backoff = status.get("backoff") or {}
    if backoff:
        pairs.append(("Back-off", f"{backoff.get('delaySeconds')}s, restart at {backoff.get('restartAt')}"))
    pairs = [(k, v) for k, v in pairs if v != "" or k in ("Name",)]
    width = max(len(k) for k, _ in pairs) + 2
    for key, value in pairs:
        click.echo(f"{key + ':':<{width}}{value}")
    conditions = status.get("conditions") or []
    click.echo("Conditions:")
    if conditions:
        rows = [
            (
                str(c.get("type", "")),
                str(c.get("status", "")),
                str(c.get("reason", "")),
                age(c.get("lastTransitionTime")),
                str(c.get("message", "")),
            )
            for c in conditions
        ]
        print_table(make_table(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), rows), indent=2)
    else:
        click.echo("  <none>")
    click.echo("Events:")
    if agent_events is None:
        click.echo("  (this server does not record events)")
    elif not agent_events:
        click.echo("  <none>")
    else:
        rows = [
            (
                str(e.get("type", "")),
                str(e.get("reason", "")),
                age(e.get("lastTimestamp")),
                str(e.get("count", 1)),
                str(e.get("message", "")),
            )
            for e in agent_events[-20:]
        ]
        print_table(make_table(("TYPE", "REASON", "AGE", "COUNT", "MESSAGE"), rows), indent=2)


def _env_entry(key: str, value: Any) -> str:
    ref = value.get("secretKeyRef") if isinstance(value, dict) else None
    if isinstance(ref, dict):
        return f"{key} (from secret {ref.get('name')}, key {ref.get('key')})"
    return f"{key} (set, value hidden)"


def _mapping(value: Any) -> str:
    if not value:
        return "<none>"
    return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))


# --- delete -----------------------------------------------------------------------------------------


@click.command()
@click.argument("args", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, help="Delete the agents these files define.")
@click.option("--wait", is_flag=True, help="Wait until the containers are gone and the records purged.")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Seconds --wait waits.")
@click.option("--ignore-not-found", is_flag=True, help="An agent that does not exist is not an error.")
@client_command
def delete(
    client: ApiClient, args: tuple[str, ...], files: tuple[str, ...], wait: bool, timeout: float, ignore_not_found: bool
) -> None:
    """Delete agents (parallax delete agent NAME... | -f FILE) or secrets (parallax delete secret NAME...)."""
    secrets = secret_names(args)
    if secrets is not None:
        if files or wait:
            raise UsageProblem("delete secret takes names only")
        if not secrets:
            raise UsageProblem("name at least one secret (parallax delete secret NAME)")
        delete_secrets(client, secrets, ignore_not_found)
        return
    if files and args and not (len(args) == 1 and args[0].lower() in RESOURCE_WORDS):
        raise UsageProblem("give agent names or -f FILE, not both")
    if files:
        names = []
        for spec in read_specs(files):
            name = _doc_name(spec.doc.body)
            if name is None:
                raise UsageProblem(f"{spec.where()}: the document has no metadata.name")
            names.append(name)
    else:
        names = _names(args)
    missing = 0
    deleting: list[str] = []
    for name in dict.fromkeys(names):
        try:
            client.delete_agent(name)
        except ErrorAnswer as exc:
            if exc.status == 404:
                if not ignore_not_found:
                    click.echo(f"error: agent {name!r} not found", err=True)
                    missing += 1
                continue
            raise
        deleting.append(name)
        click.echo(f"agent/{name} deleting" if wait else f"agent/{name} deleted")
    if wait and deleting:
        _wait_gone(client, deleting, timeout)
    if missing:
        sys.exit(1)


def _doc_name(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    metadata = body["metadata"] if isinstance(body.get("metadata"), dict) else body
    name = metadata.get("name")
    return name if isinstance(name, str) else None


def _wait_gone(client: ApiClient, names: list[str], timeout: float) -> None:
    started = time.monotonic()
    remaining = set(names)
    while remaining:
        present = {a["metadata"]["name"] for a in client.list_agents()}
        for name in sorted(remaining - present):
            click.echo(f"agent/{name} deleted ({time.monotonic() - started:.1f}s)")
        remaining &= present
        if not remaining:
            return
        if time.monotonic() - started >= timeout:
            _fail(f"timed out after {timeout:g}s waiting for {', '.join(f'agent/{n}' for n in sorted(remaining))}")
        time.sleep(POLL_SECONDS)


# --- live operations --------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the container stops.")
@click.option("--tail", default=None, help="Lines from the end to show (a number, or all).")
@click.option("--since", default=None, help="Only lines newer than this (5m, 1h, or an RFC 3339 time).")
@click.option("--timestamps", is_flag=True, help="Prefix each line with its time.")
@client_command
def logs(client: ApiClient, name: str, follow: bool, tail: str | None, since: str | None, timestamps: bool) -> None:
    """Print an agent's output (stdout and stderr)."""
    name = _names((name,))[0]
    try:
        for line in client.logs(name, tail=tail, follow=follow, since=since, timestamps=timestamps):
            click.echo(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


@click.command()
@click.argument("args", nargs=-1, required=True)
@client_command
def restart(client: ApiClient, args: tuple[str, ...]) -> None:
    """Restart agents: the controller recreates their containers (like kubectl rollout restart)."""
    for name in _names(args):
        client.restart(name)
        click.echo(f"agent/{name} restarted")


@click.command()
@click.argument("args", nargs=-1, required=True)
@client_command
def pause(client: ApiClient, args: tuple[str, ...]) -> None:
    """Freeze agents' processes (spec.paused: true; Docker pause, memory intact)."""
    for name in _names(args):
        client.set_paused(name, True)
        click.echo(f"agent/{name} paused")


@click.command()
@click.argument("args", nargs=-1, required=True)
@client_command
def unpause(client: ApiClient, args: tuple[str, ...]) -> None:
    """Thaw paused agents (spec.paused: false)."""
    for name in _names(args):
        client.set_paused(name, False)
        click.echo(f"agent/{name} unpaused")


@click.command()
@click.argument("args", nargs=-1, required=True)
@client_command
def keepalive(client: ApiClient, args: tuple[str, ...]) -> None:
    """Count as activity for agents, so spec.lifecycle.idleTimeoutSeconds does not end them."""
    for name in _names(args):
        answer = client.keepalive(name)
        idle = f"; idle at {answer['idleAt']} without more activity" if answer.get("idleAt") else ""
        click.echo(f"agent/{name} active at {answer.get('lastActivityTime')}{idle}")


@click.command()
@click.argument("name")
@click.argument("message")
@client_command
def send(client: ApiClient, name: str, message: str) -> None:
    """Send MESSAGE (or - to read it from stdin) to an agent's standard input."""
    name = _names((name,))[0]
    if message == "-":
        message = sys.stdin.read()
    if not message:
        raise UsageProblem("the message is empty")
    answer = client.send(name, message)
    sent = answer.get("bytes")
    click.echo(f"message sent to agent/{name}" + (f" ({sent} bytes)" if sent is not None else ""))


@click.command()
@click.argument("args", nargs=-1)
@click.option("-l", "--selector", default=None, help="Label selector, e.g. team=research.")
@client_command
def top(client: ApiClient, args: tuple[str, ...], selector: str | None) -> None:
    """CPU and memory of running agents (parallax top [agent NAME...])."""
    wanted = set(_names(args, required=False))
    agents = [
        a
        for a in client.list_agents(selector)
        if (not wanted or a["metadata"]["name"] in wanted) and (a.get("status") or {}).get("phase") == "Running"
    ]
    if not agents:
        click.echo("No running agents.", err=True)
        return

    def sample(agent: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return client.metrics(agent["metadata"]["name"])
        except ErrorAnswer as exc:
            if exc.status in (404, 409):
                return None  # stopped or deleted since the listing
            raise

    with ThreadPoolExecutor(max_workers=min(8, len(agents))) as pool:
        samples = list(pool.map(sample, agents))
    rows = []
    for agent, metrics in zip(agents, samples, strict=True):
        if metrics is None:
            continue
        memory, limit = metrics.get("memoryBytes"), metrics.get("memoryLimitBytes")
        percent = f"{100.0 * memory / limit:.1f}%" if memory is not None and limit else "-"
        rows.append(
            (
                agent["metadata"]["name"],
                f"{float(metrics.get('cpuPercent', 0.0)):.1f}%",
                size(memory),
                size(limit) if limit else "-",
                percent,
                str(metrics.get("pids", "-")),
                f"{size(metrics.get('networkRxBytes'))}/{size(metrics.get('networkTxBytes'))}",
                str(metrics.get("restartCount", (agent.get("status") or {}).get("restartCount", 0))),
            )
        )
    columns = ("NAME", "CPU", "MEMORY", "LIMIT", "MEM%", "PIDS", "NET RX/TX", "RESTARTS")
    print_table(make_table(columns, rows))


@click.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@client_command
def leader(client: ApiClient, output: str) -> None:
    """Who runs the controller: the leader among the servers sharing the store, and what this server is."""
    answer = client.readiness()
    lead = answer.get("leader") or {}
    if output == "json":
        click.echo(json.dumps(lead, indent=2, sort_keys=True))
        return
    holder = lead.get("holder") or {}
    if holder.get("identity"):
        where = f" at {holder['address']}" if holder.get("address") else ""
        click.echo(f"leader: {holder['identity']}{where} (lease transitions: {holder.get('transitions', 0)})")
    else:
        click.echo("leader: none (the lease is free or expired; a server takes it within its retry period)")
    role = "leader" if lead.get("leading") else "standby"
    click.echo(f"this server ({client.server}): {lead.get('identity', '?')}, {role}; ready: {answer.get('status')}")


# --- secrets ----------------------------------------------------------------------------------------

SECRET_WORDS = ("secrets", "secret")


def secret_names(args: tuple[str, ...]) -> list[str] | None:
    """``secret NAME...``, ``secrets``, ``secret/NAME``: the secret names; None when the words name agents."""
    if not args:
        return None
    first = args[0]
    kind, slash, name = first.partition("/")
    if kind.lower() not in SECRET_WORDS:
        return None
    names = ([name] if slash else []) + list(args[1:])
    for word in names:
        part_kind, part_slash, _ = word.partition("/")
        if part_slash and part_kind.lower() not in SECRET_WORDS:
            raise UsageProblem(f"{word!r}: give secrets alone")
    return [word.partition("/")[2] if "/" in word else word for word in names]


def print_secrets(client: ApiClient, names: list[str], output: str) -> None:
    if len(names) > 1:
        raise UsageProblem("get takes at most one secret name")
    secrets = [client.get_secret(names[0])] if names else client.list_secrets()
    if output in ("yaml", "json"):
        value: Any = secrets[0] if names else {"apiVersion": "parallax.ai/v1", "kind": "SecretList", "items": secrets}
        click.echo(_dump(value, output))
        return
    if output == "name":
        for secret in secrets:
            click.echo(f"secret/{secret['metadata']['name']}")
        return
    if not secrets:
        click.echo("No secrets found.", err=True)
        return
    rows = [
        (
            s["metadata"]["name"],
            ",".join(s["keys"]) or "<none>",
            str(s["version"]),
            ",".join(s["usedBy"]) or "<none>",
            age(s["metadata"].get("creationTimestamp")),
        )
        for s in secrets
    ]
    print_table(make_table(("NAME", "KEYS", "VERSION", "USED BY", "AGE"), rows))


def delete_secrets(client: ApiClient, names: list[str], ignore_not_found: bool) -> None:
    missing = 0
    for name in dict.fromkeys(names):
        try:
            client.delete_secret(name)
        except ErrorAnswer as exc:
            if exc.status == 404:
                if not ignore_not_found:
                    click.echo(f"error: secret {name!r} not found", err=True)
                    missing += 1
                continue
            raise
        click.echo(f"secret/{name} deleted")
    if missing:
        sys.exit(1)


@click.group()
def create() -> None:
    """Create a resource from the command line (parallax create secret NAME ...)."""


@create.command("secret")
@click.argument("name")
@click.option("--from-literal", "literals", multiple=True, metavar="KEY=VALUE", help="A key and its value.")
@click.option("--from-file", "files", multiple=True, metavar="KEY=PATH", help="A key and a file holding its value.")
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label of the secret.")
@client_command
def create_secret(
    client: ApiClient, name: str, literals: tuple[str, ...], files: tuple[str, ...], labels: tuple[str, ...]
) -> None:
    """Create a Secret; its values are sealed in the store and never shown again (parallax get secrets
    shows its keys, versions and the agents using it)."""
    data: dict[str, str] = {}

    def put(key: str, value: str, option: str) -> None:
        if not key:
            raise UsageProblem(f"{option}: give KEY=..., the key cannot be empty")
        if key in data:
            raise UsageProblem(f"{option}: key {key!r} is given twice")
        data[key] = value

    for item in literals:
        key, equals, value = item.partition("=")
        if not equals:
            raise UsageProblem("--from-literal: give KEY=VALUE")
        put(key, value, "--from-literal")
    for item in files:
        key, equals, path = item.partition("=")
        if not equals or not path:
            raise UsageProblem("--from-file: give KEY=PATH")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageProblem(f"--from-file {key}: cannot read {path}: {exc}") from None
        put(key, text, "--from-file")
    if not data:
        raise UsageProblem("give at least one --from-literal KEY=VALUE or --from-file KEY=PATH")
    label_map = {}
    for item in labels:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise UsageProblem("--label: give KEY=VALUE")
        label_map[key] = value
    metadata: dict[str, Any] = {"name": name}
    if label_map:
        metadata["labels"] = label_map
    created = client.create_secret(
        {"apiVersion": "parallax.ai/v1", "kind": "Secret", "metadata": metadata, "stringData": data}
    )
    click.echo(f"secret/{created['metadata']['name']} created ({', '.join(created['keys'])})")


COMMANDS = (apply, get, describe, delete, logs, restart, pause, unpause, keepalive, send, top, leader, create)


def register(group: click.Group) -> None:
    """Adds the client commands to the ``parallax`` group."""
    for command in COMMANDS:
        group.add_command(command)
