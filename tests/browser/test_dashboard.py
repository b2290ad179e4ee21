"""The dashboard (``GET /ui/``) in a real Chromium, against a real controller and Docker daemon: what a
person sees, without reloading the page."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiodocker
import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import TOKEN, call, login, screenshot_path
from tests.conftest import StartController
from tests.harness import Controller, running

pytestmark = [pytest.mark.docker, pytest.mark.browser]

SECRET = "sk-ui-planted-4b7d0c2e9f"


async def test_an_agent_created_through_the_api_shows_in_the_table_within_a_second(
    page: Page, ui_controller: Controller
) -> None:
    await login(page, ui_controller)
    await expect(page.locator("#conn")).to_have_text("live")
    await expect(page.locator("#empty")).to_be_visible()
    status, _ = await call(ui_controller, "POST", "/agents", {"name": "ui-new", "type": "claude"})
    posted = time.monotonic()
    assert status == 201
    await page.locator('#agents tr[data-agent="ui-new"]').wait_for(timeout=1000)
    assert time.monotonic() - posted < 1.0
    row = page.locator('#agents tr[data-agent="ui-new"]')
    await expect(row.locator("td").nth(2)).to_have_text("claude")
    await expect(row).to_contain_text("Running", timeout=15000)
    await expect(page.locator("#counts")).to_contain_text("Running 1")
    # CPU and memory arrive from the usage stream once the sampler has seen the container
    await expect(row.locator("td.mem")).to_contain_text("iB", timeout=10000)
    if (path := screenshot_path("agents")) is not None:
        await call(ui_controller, "POST", "/agents", {"name": "ui-other", "type": "codex", "labels": {"team": "b"}})
        await call(ui_controller, "POST", "/agents", {"name": "ui-broken", "type": "aider", "image": "ui/none:1"})
        await expect(page.locator('#agents tr[data-agent="ui-broken"]')).to_contain_text("IMAGE_NOT_FOUND")
        await page.screenshot(path=str(path))


async def test_filters_by_type_phase_and_label(page: Page, ui_controller: Controller) -> None:
    await call(ui_controller, "POST", "/agents", {"name": "ui-f-a", "type": "claude", "labels": {"team": "a"}})
    await call(
        ui_controller, "POST", "/agents", {"name": "ui-f-b", "type": "codex", "labels": {"team": "b"}, "suspend": True}
    )
    await login(page, ui_controller)
    rows = page.locator("#agents tbody tr")
    await expect(rows).to_have_count(2)
    await page.select_option("#f-type", "codex")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-agent", "ui-f-b")
    await page.select_option("#f-type", "")
    await page.select_option("#f-phase", "Suspended")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-agent", "ui-f-b")
    await page.select_option("#f-phase", "")
    await page.fill("#f-label", "team=a")
    await page.press("#f-label", "Enter")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-agent", "ui-f-a")


async def test_a_killed_containers_restart_shows_without_a_reload(
    page: Page, ui_controller: Controller, docker: aiodocker.Docker
) -> None:
    await call(ui_controller, "POST", "/agents", {"name": "ui-kill", "type": "claude"})
    agent = await ui_controller_wait(ui_controller, "ui-kill")
    await login(page, ui_controller)
    row = page.locator('#agents tr[data-agent="ui-kill"]')
    await expect(row.locator("td.restarts")).to_have_text("0")
    await page.evaluate("window.__sameDocument = true")
    await docker.containers.container(agent["status"]["containerId"]).kill()
    await expect(row.locator("td.restarts")).to_have_text("1", timeout=15000)
    await expect(row).to_contain_text("Running", timeout=15000)
    assert await page.evaluate("window.__sameDocument") is True


async def test_logs_follow_new_lines_with_pause_and_search(page: Page, ui_controller: Controller) -> None:
    await call(ui_controller, "POST", "/agents", {"name": "ui-logs", "type": "claude", "env": {"TICK_SECONDS": "1"}})
    await ui_controller_wait(ui_controller, "ui-logs")
    await login(page, ui_controller, where="#/agent/ui-logs")
    logs = page.locator("#logs")
    await expect(logs).to_contain_text("tick 2", timeout=10000)
    await expect(logs).to_contain_text("tick 4", timeout=10000)  # new lines keep coming, no reload
    # sending a message from the page: the agent echoes it, and the echo follows into the pane
    await page.fill("#send-text", "hello from the browser")
    await page.click("#send-form button")
    await expect(logs).to_contain_text("received: hello from the browser", timeout=5000)
    await page.click("#log-pause")
    frozen = await logs.inner_text()
    await asyncio.sleep(2.5)
    assert await logs.inner_text() == frozen
    await expect(page.locator("#log-state")).to_contain_text("held")
    await page.click("#log-pause")
    await expect(logs).not_to_have_text(frozen)
    await page.fill("#log-search", "received:")
    assert (await logs.inner_text()).strip() == "received: hello from the browser"
    await page.fill("#log-search", "")
    await expect(page.locator("#chart-note")).to_contain_text("samples", timeout=10000)
    if (path := screenshot_path("agent")) is not None:
        await expect(page.locator("#chart-note")).to_contain_text("4 samples", timeout=10000)
        await page.screenshot(path=str(path), full_page=True)


async def test_applying_yaml_from_the_page_shows_the_plan_then_creates_the_agent(
    page: Page, ui_controller: Controller
) -> None:
    await login(page, ui_controller, where="#/apply")
    yaml = (
        "apiVersion: parallax.ai/v1\nkind: Agent\n"
        "metadata: {name: ui-applied, labels: {team: ui}}\nspec: {type: claude}\n"
    )
    await page.fill("#yaml", yaml)
    await expect(page.locator("#apply")).to_be_disabled()
    await page.click("#plan")
    plan = page.locator('.plan-doc[data-name="ui-applied"]')
    await expect(plan.locator(".outcome")).to_have_text("created")
    await expect(plan.locator("table.plan")).to_contain_text("create")
    await expect(page.locator("#plan-out")).to_contain_text("Dry run")
    status, _ = await call(ui_controller, "GET", "/agents/ui-applied")
    assert status == 404, "the dry run wrote the agent"
    if (path := screenshot_path("apply")) is not None:
        await page.screenshot(path=str(path), full_page=True)
    await page.click("#apply")
    await expect(page.locator("#plan-out")).to_contain_text("Applied.")
    status, body = await call(ui_controller, "GET", "/agents/ui-applied")
    assert status == 200 and body["metadata"]["labels"] == {"team": "ui"}
    await page.click("header nav a[href='#/']")
    await expect(page.locator('#agents tr[data-agent="ui-applied"]')).to_be_visible()


async def test_delete_asks_for_confirmation_then_removes_the_agent(page: Page, ui_controller: Controller) -> None:
    await call(ui_controller, "POST", "/agents", {"name": "ui-del", "type": "claude"})
    await login(page, ui_controller, where="#/agent/ui-del")
    await expect(page.locator("#a-status")).to_contain_text("claude")
    await page.click("#act-delete")
    await expect(page.locator("#confirm-delete")).to_be_visible()
    await page.click("#confirm-delete button[value=cancel]")
    status, _ = await call(ui_controller, "GET", "/agents/ui-del")
    assert status == 200, "cancel deleted the agent"
    await page.click("#act-delete")
    await page.click("#confirm-yes")
    await expect(page.locator("#act-result")).to_contain_text("Delete: done")
    for _ in range(100):
        status, _ = await call(ui_controller, "GET", "/agents/ui-del")
        if status == 404:
            break
        await asyncio.sleep(0.1)
    assert status == 404
    await page.click("header nav a[href='#/']")
    await expect(page.locator("#agents tbody tr")).to_have_count(0)


async def test_actions_restart_and_suspend_resume(page: Page, ui_controller: Controller) -> None:
    await call(ui_controller, "POST", "/agents", {"name": "ui-act", "type": "claude"})
    before = await ui_controller_wait(ui_controller, "ui-act")
    await login(page, ui_controller, where="#/agent/ui-act")
    await expect(page.locator("#a-phase")).to_have_text("Running", timeout=10000)
    await page.click("#act-restart")
    await expect(page.locator("#act-result")).to_have_text("Restart: done")
    await expect(page.locator('#a-status dd[data-field="container"]')).not_to_have_text(
        before["status"]["containerId"][:12], timeout=15000
    )
    await page.click("#act-suspend")
    await expect(page.locator("#a-phase")).to_have_text("Suspended", timeout=15000)
    await expect(page.locator("#act-suspend")).to_have_text("Resume")
    await page.click("#act-suspend")
    await expect(page.locator("#a-phase")).to_have_text("Running", timeout=15000)
    await expect(page.locator("#a-events")).to_contain_text("Started")
    await page.click("#act-pause")
    await expect(page.locator("#a-phase")).to_have_text("Paused", timeout=15000)
    await expect(page.locator("#act-pause")).to_have_text("Unpause")
    await page.click("#act-pause")
    await expect(page.locator("#a-phase")).to_have_text("Running", timeout=15000)
    await expect(page.locator("#a-events")).to_contain_text("Unpaused")


async def ui_controller_wait(controller: Controller, name: str) -> dict[str, Any]:
    for _ in range(300):
        status, body = await call(controller, "GET", f"/agents/{name}")
        if status == 200 and running(body):
            return dict(body)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} is not running")


class Recorder:
    """Every response body the page received, streams included (read as they arrive, through the
    DevTools protocol: a stream never ends, so Playwright's own ``response.body()`` would wait forever)."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytearray] = {}
        self.urls: dict[str, str] = {}
        self.tasks: set[asyncio.Future[None]] = set()

    async def attach(self, page: Page) -> None:
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("Network.enable")

        def received(event: dict[str, Any]) -> None:
            rid = event["requestId"]
            self.urls[rid] = event["response"]["url"]
            self.bodies.setdefault(rid, bytearray())
            if "event-stream" in event["response"]["mimeType"] or "/logs" in event["response"]["url"]:
                self.tasks.add(asyncio.ensure_future(self._stream(cdp, rid)))

        def data(event: dict[str, Any]) -> None:
            if event.get("data"):
                self.bodies.setdefault(event["requestId"], bytearray()).extend(base64.b64decode(event["data"]))

        async def finished(event: dict[str, Any]) -> None:
            rid = event["requestId"]
            try:
                got = await cdp.send("Network.getResponseBody", {"requestId": rid})
            except Exception:
                return
            body = base64.b64decode(got["body"]) if got.get("base64Encoded") else got["body"].encode()
            self.bodies[rid] = bytearray(body)

        cdp.on("Network.responseReceived", received)
        cdp.on("Network.dataReceived", data)
        cdp.on("Network.loadingFinished", lambda e: self.tasks.add(asyncio.ensure_future(finished(e))))

    async def _stream(self, cdp: Any, rid: str) -> None:
        try:
            got = await cdp.send("Network.streamResourceContent", {"requestId": rid})
        except Exception:
            return
        self.bodies.setdefault(rid, bytearray()).extend(base64.b64decode(got.get("bufferedData", "")))

    def all_text(self) -> str:
        return "\n".join(bytes(b).decode("utf-8", "replace") for b in self.bodies.values())


async def test_a_planted_secret_never_reaches_the_page(page: Page, ui_controller: Controller) -> None:
    recorder = Recorder()
    await recorder.attach(page)
    await call(
        ui_controller,
        "POST",
        "/agents",
        {"name": "ui-secret", "type": "claude", "env": {"API_KEY": SECRET, "TICK_SECONDS": "1"}},
    )
    await login(page, ui_controller)
    await expect(page.locator('#agents tr[data-agent="ui-secret"]')).to_contain_text("Running", timeout=15000)
    await page.click('a[href="#/agent/ui-secret"]')
    await expect(page.locator("#a-spec")).to_contain_text("API_KEY")
    await expect(page.locator("#a-spec")).to_contain_text("<redacted>")
    await expect(page.locator("#logs")).to_contain_text("tick", timeout=10000)
    # a change of the secret seen live (MODIFIED on both watches) and planned from the apply page
    await call(ui_controller, "PATCH", "/agents/ui-secret", {"env": {"API_KEY": SECRET + "-2", "TICK_SECONDS": "1"}})
    await page.click("#act-restart")
    await expect(page.locator("#act-result")).to_have_text("Restart: done")
    await page.click("header nav a[href='#/apply']")
    manifest = {"name": "ui-secret", "type": "claude", "env": {"API_KEY": SECRET + "-3", "TICK_SECONDS": "1"}}
    await page.fill("#yaml", json.dumps(manifest))
    await page.click("#plan")
    await expect(page.locator('.plan-doc[data-name="ui-secret"] .outcome')).to_have_text("configured")
    await page.click("header nav a[href='#/']")
    await asyncio.sleep(1.5)  # one more sampling round on the usage stream, a few more stream items
    dom = await page.content()
    # the recorder saw the streams as well as the plain answers: the secret had every chance to show
    got = [(recorder.urls.get(rid, ""), bytes(body)) for rid, body in recorder.bodies.items()]
    urls = [(url, len(body)) for url, body in got]
    watched = [body for url, body in got if "/agents?watch=true" in url]
    assert any(b"ui-secret" in body and b"<redacted>" in body for body in watched), urls
    assert any(b"tick" in body for url, body in got if "/logs?" in url), urls
    assert any(b"USAGE" in body for url, body in got if "/metrics/agents?watch" in url), urls
    assert any(b"env.API_KEY changed" in body for url, body in got if url.endswith("/apply?dryRun=true")), urls
    assert SECRET not in dom
    seen = {recorder.urls.get(rid, rid) for rid, body in recorder.bodies.items() if SECRET.encode() in body}
    assert not seen, f"the secret was in the responses of {seen}"
    storage = await page.evaluate("JSON.stringify(sessionStorage) + JSON.stringify(localStorage) + document.cookie")
    assert SECRET not in storage


async def test_a_missing_or_wrong_token_shows_the_login_and_no_data(page: Page, ui_controller: Controller) -> None:
    await call(ui_controller, "POST", "/agents", {"name": "ui-hidden", "type": "claude", "labels": {"team": "hidden"}})
    answered: list[tuple[str, int]] = []
    page.on("response", lambda r: answered.append((r.url, r.status)))
    await page.goto(f"{ui_controller.base_url}/ui/")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#agents")).to_have_count(0)
    await page.fill("#token", "not-the-token-at-all")
    await page.click("#login-form button")
    await expect(page.locator("#login-error")).to_have_text("The token was refused.")
    await page.goto(f"{ui_controller.base_url}/ui/#/agent/ui-hidden")
    await expect(page.locator("#login")).to_be_visible()
    assert "ui-hidden" not in await page.content()
    data = [(url, status) for url, status in answered if "/ui/" not in url]
    assert data and all(status == 401 for _, status in data), data
    if (path := screenshot_path("login")) is not None:
        await page.screenshot(path=str(path))
    # the right token opens it, and the token never went into a URL
    await page.fill("#token", TOKEN)
    await page.click("#login-form button")
    await expect(page.locator("#a-status")).to_contain_text("hidden")
    assert all(TOKEN not in url for url, _ in answered)


async def test_no_login_where_the_api_needs_no_token(page: Page, start_controller: StartController) -> None:
    controller = await start_controller()
    await page.goto(f"{controller.base_url}/ui/")
    await expect(page.locator("#agents")).to_be_visible()
    await expect(page.locator("#login")).to_be_hidden()
