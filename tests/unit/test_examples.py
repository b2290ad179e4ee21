"""Every example spec in specs/examples/ is a valid Agent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.admission import admit
from controller.config import Settings

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "specs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_spec_is_admitted(path: Path) -> None:
    agent, _ = admit(
        yaml.safe_load(path.read_text()), Settings(store_path="/nonexistent/agents.db", allowed_volume_roots=("/host",))
    )
    assert agent.name == path.stem


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 4
