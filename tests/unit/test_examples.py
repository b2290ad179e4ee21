"""Every example spec in specs/examples/ is a valid Agent; the volume example, kept apart, needs its root."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.admission.admit import AdmissionError, admit
from controller.config import Settings

SPECS = Path(__file__).resolve().parents[2] / "specs"
EXAMPLES = sorted((SPECS / "examples").glob("*.yaml"))
VOLUME_EXAMPLES = sorted((SPECS / "volume-examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_spec_is_admitted(path: Path) -> None:
    agent, _ = admit(
        yaml.safe_load(path.read_text()), Settings(store_path="/nonexistent/agents.db", allowed_volume_roots=("/host",))
    )
    assert agent.name == path.stem


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_in_specs_examples_is_admitted_by_a_server_on_its_defaults(path: Path) -> None:
    """`parallax apply -f specs/examples/` is all-or-nothing: one refusal would apply none of them."""
    agent, _ = admit(yaml.safe_load(path.read_text()), Settings(store_path="/nonexistent/agents.db"))
    assert agent.name == path.stem


@pytest.mark.parametrize("path", VOLUME_EXAMPLES, ids=[p.name for p in VOLUME_EXAMPLES])
def test_a_volume_example_names_the_root_it_needs_and_is_admitted_with_it(path: Path) -> None:
    text = path.read_text()
    manifest = yaml.safe_load(text)
    defaults = Settings(store_path="/nonexistent/agents.db")
    with pytest.raises(AdmissionError, match="outside the allowed volume roots"):
        admit(manifest, defaults)
    roots = [volume.split(":")[0] for volume in manifest["spec"]["volumes"]]
    assert f"PARALLAX_ALLOWED_VOLUME_ROOTS={','.join(roots)} " in text, "the header says how to start the server"
    agent, _ = admit(manifest, Settings(store_path="/nonexistent/agents.db", allowed_volume_roots=tuple(roots)))
    assert agent.name == path.stem


def test_volume_examples_exist() -> None:
    assert VOLUME_EXAMPLES
