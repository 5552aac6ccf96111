"""`envctl resolve --no-build` and `envctl inspect` against the real registries."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from hashing import EnvKey
from registry.metadata import EnvMetadata
from registry.oci import OciRegistry
from tests.conftest import EXAMPLES, Services
from tests.registry.images import push_image
from tests.registry.servers import ALICE, Served

SPEC = str(EXAMPLES / "hello.envctl.yml")


def _key(cli: CliRunner, spec: str = SPEC) -> EnvKey:
    result = cli.invoke(app, ["hash", "--json", spec])
    assert result.exit_code == 0, result.stderr
    return EnvKey(json.loads(result.stdout)[0]["key"])


def test_a_miss_in_both_tiers_exits_1(cli: CliRunner, tiers: object) -> None:
    result = cli.invoke(app, ["resolve", "--no-build", SPEC])
    assert result.exit_code == 1
    assert "not found" in result.stderr
    assert result.stdout == ""


def test_a_workspace_hit_prints_the_image(
    cli: CliRunner, tiers: tuple[OciRegistry, OciRegistry]
) -> None:
    workspace, _ = tiers
    key = _key(cli)
    manifest = push_image(workspace, key)
    result = cli.invoke(app, ["resolve", "--no-build", SPEC])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == workspace.reference(key)
    as_json = json.loads(cli.invoke(app, ["resolve", "--no-build", "--json", SPEC]).stdout)
    assert as_json == {
        "key": key,
        "image": workspace.reference(key),
        "digest": manifest.digest,
        "source": "workspace",
    }


def test_a_global_hit_is_promoted_then_hits_the_workspace(
    cli: CliRunner, tiers: tuple[OciRegistry, OciRegistry]
) -> None:
    workspace, global_ = tiers
    key = _key(cli, str(EXAMPLES / "hello.reordered.yml"))  # same environment, same key
    push_image(global_, key)
    first = json.loads(cli.invoke(app, ["resolve", "--no-build", "--json", SPEC]).stdout)
    second = json.loads(cli.invoke(app, ["resolve", "--no-build", "--json", SPEC]).stdout)
    assert (first["source"], second["source"]) == ("global", "workspace")
    assert first["image"] == second["image"] == workspace.reference(key)
    assert first["digest"] == second["digest"]


def test_an_unreachable_registry_exits_3_and_is_never_a_miss(
    cli: CliRunner, tiers: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ENVCTL_GLOBAL_REGISTRY", f"127.0.0.1:{port}/global")
    result = cli.invoke(app, ["resolve", "--no-build", SPEC])
    assert result.exit_code == 3
    assert "not found" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


def test_inspect_shows_metadata_by_key_or_spec(
    cli: CliRunner, tiers: tuple[OciRegistry, OciRegistry]
) -> None:
    workspace, _ = tiers
    key = _key(cli)
    push_image(workspace, key)
    workspace.put_metadata(
        key,
        EnvMetadata(
            key=key, spec_json='["envctl.key/1",{}]', dockerfile="FROM x\n", facts={"n": 1}
        ),
    )
    by_key = cli.invoke(app, ["inspect", "--json", key])
    assert by_key.exit_code == 0, by_key.stderr
    body = json.loads(by_key.stdout)
    assert (body["key"], body["dockerfile"], body["facts"]) == (key, "FROM x\n", {"n": 1})
    by_spec = cli.invoke(app, ["inspect", SPEC])
    assert by_spec.exit_code == 0, by_spec.stderr
    assert "FROM x" in by_spec.stdout
    missing = cli.invoke(app, ["inspect", uuid.uuid4().hex])
    assert missing.exit_code == 1
    assert "no metadata" in missing.stderr


def test_without_registries_the_embedded_layout_is_used(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, services: Services
) -> None:
    for name in ("ENVCTL_WORKSPACE_REGISTRY", "ENVCTL_GLOBAL_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENVCTL_HOME", str(tmp_path / "home"))
    from registry.layout import LayoutRegistry

    key = _key(cli)
    push_image(LayoutRegistry(tmp_path / "home" / "registry"), key)
    result = cli.invoke(app, ["resolve", "--no-build", "--json", SPEC])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["image"] == f"oci:{tmp_path / 'home' / 'registry'}:{key}"


# -- a workspace registry that wants credentials (htpasswd, from tests/registry/servers.py) ------


@pytest.fixture
def guarded(basic_registry: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh namespace in the htpasswd registry as the only tier, with no credentials set
    and an empty Docker config (so none come from the developer's `docker login`)."""
    address = f"{basic_registry.host}/cli-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("ENVCTL_WORKSPACE_REGISTRY", address)
    monkeypatch.delenv("ENVCTL_GLOBAL_REGISTRY", raising=False)
    for suffix in ("USERNAME", "PASSWORD"):
        monkeypatch.delenv(f"ENVCTL_WORKSPACE_REGISTRY_{suffix}", raising=False)
    monkeypatch.setenv("ENVCTL_HOME", str(tmp_path / "home"))
    (tmp_path / "docker").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return basic_registry.host


def _login(monkeypatch: pytest.MonkeyPatch, username: str, password: str) -> None:
    monkeypatch.setenv("ENVCTL_WORKSPACE_REGISTRY_USERNAME", username)
    monkeypatch.setenv("ENVCTL_WORKSPACE_REGISTRY_PASSWORD", password)


def test_refused_credentials_exit_1_naming_the_registry_and_are_never_a_miss(
    cli: CliRunner, guarded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _login(monkeypatch, ALICE.username, "tr0ub4dor")
    result = cli.invoke(app, ["resolve", "--no-build", SPEC])
    assert result.exit_code == 1
    assert f"registry {guarded} refused the credentials sent for user 'alice'" in result.stderr
    assert "not found" not in result.stderr
    assert "tr0ub4dor" not in result.stderr
    assert result.stdout == ""


def test_the_right_credentials_reach_the_registry_and_a_miss_is_not_found(
    cli: CliRunner, guarded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _login(monkeypatch, ALICE.username, ALICE.password)
    result = cli.invoke(app, ["resolve", "--no-build", SPEC])
    assert result.exit_code == 1
    assert "not found" in result.stderr
    assert "refused" not in result.stderr
    assert result.stdout == ""


def test_no_credentials_for_a_registry_that_wants_them_exit_1_saying_so(
    cli: CliRunner, guarded: str
) -> None:
    result = cli.invoke(app, ["resolve", "--no-build", SPEC])
    assert result.exit_code == 1
    assert f"registry {guarded} requires credentials and none were configured" in result.stderr
    assert "not found" not in result.stderr
    assert result.stdout == ""
