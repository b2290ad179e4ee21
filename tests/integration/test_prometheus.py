"""deploy/'s Prometheus pieces, checked with the real Prometheus (Debian's `prometheus` package, which
scripts/test.sh installs): the alert rules and their unit tests, promtool's lint of a live scrape, and a
Prometheus server scraping a controller with the shipped prometheus.yml (bearer token from a file), which
also answers every query of the Grafana dashboard."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import StartController
from tests.harness import REPO, Controller, running, wait_for

pytestmark = pytest.mark.docker

DEPLOY = REPO / "deploy"
TOKEN = "prom-scrape-token-3f9c"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: scripts/test.sh installs Debian's prometheus package, which has it")
    return path


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    check = subprocess.run([tool("promtool"), "check", "rules", "alerts.yml"], cwd=DEPLOY, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert b"SUCCESS: 7 rules found" in check.stdout
    test = subprocess.run([tool("promtool"), "test", "rules", "alerts.test.yml"], cwd=DEPLOY, capture_output=True)
    assert test.returncode == 0, test.stdout.decode() + test.stderr.decode()


async def test_a_live_scrape_passes_promtools_metric_lint(controller: Controller) -> None:
    status, _ = await controller.request("POST", "/agents", {"name": "prom-lint", "type": "claude"})
    assert status == 201
    await controller.wait_agent("prom-lint", running)
    status, text = await controller.request("GET", "/metrics")
    assert status == 200 and "controller_runtime_reconcile_total" in text
    assert "_created" not in text, "no *_created series (controller-runtime has none)"
    lint = subprocess.run([tool("promtool"), "check", "metrics"], input=text.encode(), capture_output=True)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "parallax.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []) if t.get("expr")]
    assert len(queries) >= 20
    return queries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_prometheus_scrapes_the_controller_with_the_shipped_config(
    start_controller: StartController, tmp_path: Path
) -> None:
    controller = await start_controller(api_token=TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    job = config["scrape_configs"][0]
    assert job["authorization"]["credentials_file"] == "/run/secrets/parallax_api_token"
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"] = [{"targets": [controller.base_url.removeprefix("http://")]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    assert controller.session is not None
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession() as prom:

            async def get(path: str, **params: str) -> Any:
                try:
                    async with prom.get(api + path, params=params) as resp:
                        return (await resp.json())["data"] if resp.status == 200 else None
                except aiohttp.ClientError:
                    return None

            async def target_up() -> Any:
                targets = await get("/targets")
                active = (targets or {}).get("activeTargets") or []
                return active if active and active[0]["health"] == "up" else None

            active = await wait_for(target_up, timeout=30, what="Prometheus to scrape the controller")
            assert active[0]["labels"]["job"] == "parallax"

            async with controller.session.post(
                controller.base_url + "/agents", json={"name": "prom-scraped", "type": "claude"}, headers=auth
            ) as resp:
                assert resp.status == 201

            async def running_seen() -> Any:
                result = await get("/query", query='sum(parallax_agents{phase="Running"})')
                values = (result or {}).get("result") or []
                return values if values and float(values[0]["value"][1]) == 1 else None

            await wait_for(running_seen, timeout=30, what="Prometheus to see one Running agent")
            reconciles = await get("/query", query='sum(controller_runtime_reconcile_total{controller="agent"})')
            assert float(reconciles["result"][0]["value"][1]) >= 1
            async with controller.session.get(controller.base_url + "/metrics", headers=auth) as resp:
                assert resp.status == 200
                exposition = await resp.text()
            for expr in dashboard_queries():
                result = await get("/query", query=expr.replace("$instance", ".*").replace("$__rate_interval", "1m"))
                assert result is not None, f"Prometheus refused the dashboard's query {expr!r}"
                for metric in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr):
                    family = metric.removesuffix("_bucket")
                    assert f"# TYPE {metric} " in exposition or f"# TYPE {family} histogram" in exposition, (
                        f"the dashboard's {expr!r} reads {metric}, which the controller does not export"
                    )
            rules = await get("/rules")
            loaded = [r for group in rules["groups"] for r in group["rules"]]
            assert len(loaded) == 7 and all(r["health"] == "ok" for r in loaded), loaded
            assert not [r["name"] for r in loaded if r["state"] != "inactive"], "nothing fires on a healthy controller"
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 10)
