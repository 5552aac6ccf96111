"""`envctl prewarm`: many specs at once, one build per key, a summary, exit 1 if any failed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from registry.oci import OciRegistry
from tests.conftest import Services


def _specs(folder: Path, services: Services) -> list[str]:
    nonce = uuid.uuid4().hex
    texts = {
        "a.yml": f"base_image: {services.base_image}\nconda: {{dependencies: [envctl-hello]}}\n"
        f"docker_steps: RUN echo {nonce}\n",
        # the same environment as a.yml, written differently: one key, one build
        "a-again.yml": f"docker_steps: |\n  run   echo {nonce}\nconda:\n  dependencies:\n"
        f"    - envctl-hello\nbase_image: {services.base_image}\n",
        "b.yml": f"base_image: {services.base_image}\nconda: {{dependencies: [envctl-data]}}\n"
        f"docker_steps: RUN echo {nonce}-b\n",
        "broken.yml": f"base_image: {services.base_image}\nbogus: 1\n",
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    return [str(folder / name) for name in texts]


def test_prewarm_builds_each_key_once_and_reports_every_spec(
    cli: CliRunner, tiers: tuple[OciRegistry, OciRegistry], services: Services, tmp_path: Path
) -> None:
    workspace, _ = tiers
    specs = _specs(tmp_path, services)
    result = cli.invoke(app, ["prewarm", "--json", "--concurrency", "4", *specs])
    assert result.exit_code == 1, "one spec is broken"
    outcomes = {Path(o["spec"]).name: o for o in json.loads(result.stdout)}
    assert outcomes["broken.yml"]["error_class"] == "SpecError"
    assert "bogus" in outcomes["broken.yml"]["error"]
    a, again, b = outcomes["a.yml"], outcomes["a-again.yml"], outcomes["b.yml"]
    assert a["key"] == again["key"] != b["key"]
    assert a["digest"] == again["digest"]
    assert {a["source"], again["source"], b["source"]} <= {"built", "workspace"}
    assert sorted(workspace.keys()) == sorted({a["key"], b["key"]})

    table = cli.invoke(app, ["prewarm", *specs[:3]])
    assert table.exit_code == 0, table.stderr
    for name in ("a.yml", "b.yml", "workspace"):
        assert name in table.stdout


def test_prewarm_global_fills_the_global_registry_for_every_workspace(
    cli: CliRunner, tiers: tuple[OciRegistry, OciRegistry], services: Services, tmp_path: Path
) -> None:
    workspace, global_ = tiers
    spec = _specs(tmp_path, services)[0]
    warmed = cli.invoke(app, ["prewarm", "--global", "--json", spec])
    assert warmed.exit_code == 0, warmed.stderr
    (outcome,) = json.loads(warmed.stdout)
    assert outcome["image"] == global_.reference(outcome["key"])
    assert workspace.keys() == []
    resolved = cli.invoke(app, ["resolve", "--no-build", "--json", spec])
    assert json.loads(resolved.stdout)["source"] == "global"


def test_prewarm_global_needs_a_global_registry(
    cli: CliRunner, tiers: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ENVCTL_GLOBAL_REGISTRY")
    result = cli.invoke(app, ["prewarm", "--global", str(tmp_path / "any.yml")])
    assert result.exit_code == 2
    assert "ENVCTL_GLOBAL_REGISTRY" in result.stderr
