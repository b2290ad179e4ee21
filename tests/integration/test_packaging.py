"""The project as a built wheel, installed away from the source tree: everything it reads at run time
(the Agent schema above all) is inside it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.harness import REPO

CHECK = """
import controller.admission.schema, api.server.openapi
from controller.admission.admit import admit
from controller.config import Settings
assert controller.admission.schema.__file__.startswith(TARGET), controller.admission.schema.__file__
agent, _ = admit({"name": "wheel-check", "type": "claude", "resources": {"memory": "1g"}}, Settings())
assert agent.spec.resources.memory == "1g"
assert "Agent" in api.server.openapi.agent_schemas()
import api.server.routes_ui as ui
assert {"index.html", "app.js", "style.css", "vendor/uplot/uPlot.iife.min.js", "vendor/uplot/LICENSE"} <= set(ui.ASSETS)
print("ok")
"""


def test_a_wheel_installed_elsewhere_validates_agents_and_serves_its_openapi_and_dashboard(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("parallax_docker_runtime-*.whl"))
    target = tmp_path / "installed"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    # -S: no site processing, so the editable install of the source tree is out of reach; the venv's
    # site-packages still provide the dependencies.
    path = f"{target}:{sysconfig.get_paths()['purelib']}"
    run = subprocess.run(
        [sys.executable, "-S", "-c", CHECK.replace("TARGET", repr(str(target)))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
