"""The image envctl writes itself, end to end through the CLI on the real channel, registries and
engine: the same on every host, one layer per package shared between environments, runnable,
and never tagged half made."""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path

import pytest
import rattler
from typer.testing import CliRunner

from builder import envlayers, pipeline
from builder.envlayers import ENV_PREFIX
from cli.main import app
from hashing import EnvKey, parse_image
from registry.oci import OciRegistry
from tests.builder.conftest import fixture_wheels
from tests.conftest import Services, docker

# Values that break naive quoting: each must come out of `env` in the container byte for byte.
TRICKY = {
    "V_QUOTES": "say \"hi\" and 'bye'",
    "V_BACKSLASH": "C:\\temp\\new\\",
    "V_DOLLAR": "$HOME ${PATH} $(id -u) `id`",
    "V_SPACES": "  lead and trail  ",
    "V_TAB_CR": "tab\there, cr\rthere",
    "V_UNICODE": "é ✓ 雪",
    "V_SHELLISH": "a=b=c #not-a-comment; && |",
    "V_EMPTY": "",
}


def _spec(
    folder: Path,
    deps: str,
    *,
    steps: str = "",
    base: str | None = None,
    variables: dict[str, str] | None = None,
) -> Path:
    path = folder / f"spec-{uuid.uuid4().hex[:8]}.yml"
    text = f"base_image: {base or os.environ['ENVCTL_TEST_BASE_IMAGE']}\nconda: {deps}\n"
    if variables:
        text += f"variables: {json.dumps(variables)}\n"
    if steps:
        text += "docker_steps: |\n" + "".join(f"  {line}\n" for line in steps.splitlines())
    path.write_text(text)
    return path


def _resolve(cli: CliRunner, spec: Path, *args: str) -> dict[str, str]:
    result = cli.invoke(app, ["resolve", "--json", *args, str(spec)])
    assert result.exit_code == 0, result.stderr
    body: dict[str, str] = json.loads(result.stdout)
    return body


def _layers(registry: OciRegistry, key: str) -> list[str]:
    manifest = registry.get_manifest(key)
    assert manifest is not None
    return [layer["digest"] for layer in json.loads(manifest.data)["layers"]]


def _base_layers(services: Services) -> int:
    image = parse_image(services.base_image)
    base = OciRegistry(image.domain, repository=image.repository)
    try:
        manifest = base.get_manifest(image.tag or "latest")
        assert manifest is not None
        return len(json.loads(manifest.data)["layers"])
    finally:
        base.close()


def _another_host(monkeypatch: pytest.MonkeyPatch, services: Services, home: Path) -> OciRegistry:
    """A second host: an empty envctl home and a workspace namespace of its own."""
    registry = OciRegistry(f"{services.workspace_registry}/host-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("ENVCTL_WORKSPACE_REGISTRY", registry.address)
    monkeypatch.setenv("ENVCTL_HOME", str(home))
    return registry


DEPS = "{dependencies: [envctl-greet, envctl-hello >=2, envctl-data]}"


def test_the_same_spec_is_the_same_image_on_two_hosts_and_after_a_rebuild(
    cli: CliRunner,
    workspace: OciRegistry,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = _spec(tmp_path, DEPS, variables={"GREETING": "hi"})
    first = _resolve(cli, spec)
    assert first["source"] == "built"
    rebuilt = _resolve(cli, spec, "--force-rebuild")
    assert (rebuilt["source"], rebuilt["digest"]) == ("built", first["digest"])

    other = _another_host(monkeypatch, services, tmp_path / "second-home")
    try:
        second = _resolve(cli, spec)
        assert (second["source"], second["digest"]) == ("built", first["digest"])
        assert _layers(other, second["key"]) == _layers(workspace, first["key"])
    finally:
        other.close()


def test_with_docker_steps_every_layer_but_the_steps_is_the_same_on_two_hosts(
    cli: CliRunner,
    workspace: OciRegistry,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = _spec(tmp_path, DEPS, steps="RUN date +%s%N > /built-at")
    first = _resolve(cli, spec)
    other = _another_host(monkeypatch, services, tmp_path / "second-home")
    try:
        second = _resolve(cli, spec)
        assert second["digest"] != first["digest"]  # the step wrote the time
        one, two = _layers(workspace, first["key"]), _layers(other, second["key"])
        assert len(one) == len(two) == _base_layers(services) + 3 + 1 + 1
        assert one[:-1] == two[:-1]
        assert one[-1] != two[-1]
    finally:
        other.close()


def test_two_environments_one_package_apart_share_every_other_layer(
    cli: CliRunner, workspace: OciRegistry, tmp_path: Path
) -> None:
    small = _resolve(cli, _spec(tmp_path, "{dependencies: [envctl-greet, envctl-hello >=2]}"))
    big = cli.invoke(app, ["resolve", "--json", str(_spec(tmp_path, DEPS))])
    assert big.exit_code == 0, big.stderr
    # envctl-data's layer and the conda-meta on top are made; the rest is found and not sent
    assert "envctl: wrote" in big.stderr
    assert "(2 made here), sent 2 of them" in big.stderr
    built = json.loads(big.stdout)
    one, two = _layers(workspace, small["key"]), _layers(workspace, built["key"])
    assert len(set(two) - set(one)) == 2
    assert set(one) - set(two) == {one[-1]}  # only the small one's conda-meta


def test_the_image_runs_its_packages_and_rattler_reads_its_conda_meta(
    cli: CliRunner,
    workspace: OciRegistry,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVCTL_PIP_FIND_LINKS", str(fixture_wheels(tmp_path)))
    deps = "{dependencies: [envctl-greet, envctl-hello >=2, {pip: [envctl-pyhello]}]}"
    spec = _spec(tmp_path, deps, base=services.python_image, variables=TRICKY)
    built = _resolve(cli, spec)
    image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
    run = ("run", "--rm", "--network", "none", image)
    assert "hello from envctl-hello 2.0" in docker(services, *run, "envctl-greet").splitlines()
    module = "import envctl_pyhello as m; print(m.hello())"
    assert docker(services, *run, "python3", "-c", module).strip() == (
        "hello from envctl-pyhello 2.0 (pinned)"
    )
    # base64: the CLI helper reads text, which would turn a \r into \n
    out = docker(services, *run, "sh", "-c", "env -0 | base64 -w0")
    env = dict(item.split("=", 1) for item in base64.b64decode(out).decode().split("\0") if item)
    assert {name: env.get(name) for name in TRICKY} == TRICKY
    assert env["PATH"].startswith(f"{ENV_PREFIX}/bin:/usr/local/sbin:/usr/local/bin:")
    assert env["CONDA_PREFIX"] == ENV_PREFIX
    wheels_inside = docker(services, *run, "sh", "-c", "find / -xdev -name '*.whl' | wc -l")
    assert wheels_inside.strip() == "0"

    container = docker(services, "create", image, "true").strip()
    try:
        docker(services, "cp", f"{container}:{ENV_PREFIX}/conda-meta", str(tmp_path / "meta"))
    finally:
        docker(services, "rm", container)
    records = [rattler.PrefixRecord.from_path(p) for p in (tmp_path / "meta").glob("*.json")]
    assert sorted(r.name.normalized for r in records) == ["envctl-greet", "envctl-hello"]
    hello = next(r for r in records if r.name.normalized == "envctl-hello")
    assert "bin/envctl-hello" in [str(f) for f in hello.files]
    assert (tmp_path / "meta" / "history").read_text() == ""


def test_a_corrupt_cached_layer_is_made_again_and_never_sent(
    cli: CliRunner,
    workspace: OciRegistry,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = _spec(tmp_path, DEPS)
    first = _resolve(cli, spec)
    blobs = sorted((tmp_path / "home" / "layers" / "blobs" / "sha256").iterdir())
    victim = max(blobs, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only reading it whole can tell
    victim.write_bytes(bytes(data))
    # the same home, a registry without the layers: the corrupt one must be read to be sent
    other = OciRegistry(f"{services.workspace_registry}/host-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("ENVCTL_WORKSPACE_REGISTRY", other.address)
    try:
        again = _resolve(cli, spec)
        assert again["digest"] == first["digest"]  # the layer was made again, the same
        assert victim.read_bytes() != bytes(data)
        assert other.resolve(EnvKey(again["key"])) is not None
    finally:
        other.close()


def test_past_the_layer_budget_packages_share_a_bucket_and_the_image_runs(
    cli: CliRunner,
    workspace: OciRegistry,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(envlayers, "BUCKETS", 1)
    monkeypatch.setattr(pipeline, "LAYER_BUDGET", 3)  # two buckets and the top: none of its own
    built = _resolve(cli, _spec(tmp_path, DEPS))
    assert len(_layers(workspace, built["key"])) == _base_layers(services) + 2
    image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
    out = docker(services, "run", "--rm", "--network", "none", image, "sh", "-c",
                 f"envctl-greet; ls {ENV_PREFIX}/share/envctl-data")  # fmt: skip
    assert "hello from envctl-hello 2.0" in out.splitlines()
    assert "table.csv" in out.splitlines()


def test_a_dockerfile_whose_from_is_a_build_argument_builds_as_docker_reads_it(
    cli: CliRunner, workspace: OciRegistry, services: Services, tmp_path: Path
) -> None:
    """An Azure ML build context: FROM through global ARGs with defaults (one made of
    another), a stage ARG inheriting a global default and one overriding it."""
    registry, _, rest = services.busybox_image.partition("/")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"ARG REGISTRY={registry}\nARG BASE=$REGISTRY/{rest}\nARG KEPT=global\n"
        "ARG CHANGED=global\nFROM $BASE\nARG KEPT\nARG CHANGED=stage\n"
        'RUN echo "$KEPT $CHANGED" > /args\n'
    )
    spec = tmp_path / "env.yml"
    spec.write_text("name: from-an-argument\nbuild:\n  path: ctx\n")
    built = _resolve(cli, spec)
    image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
    out = docker(services, "run", "--rm", "--network", "none", image, "cat", "/args")
    assert out == "global stage\n"


def test_a_multi_stage_dockerfile_builds_with_the_environment_under_its_last_stage(
    cli: CliRunner, services: Services, tmp_path: Path
) -> None:
    """An Azure ML build context of three stages: a named one and an unnamed one on busybox,
    copied from by name and by index, and the last on the Debian base, where the conda
    environment goes; the stages' own FROMs are keyed and built by digest."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"ARG TOOLS={services.busybox_image}\n"
        "FROM $TOOLS AS tools\nRUN echo made-by-tools > /made\n"
        f"FROM {services.busybox_image}\nRUN echo made-by-stage-1 > /one\n"
        f"FROM {services.base_image}\nCOPY --from=tools /made /made\nCOPY --from=1 /one /one\n"
        "RUN cat /made /one > /both\n"
    )
    (tmp_path / "conda.yml").write_text("dependencies: [envctl-greet, envctl-hello >=2]\n")
    spec = tmp_path / "env.yml"
    spec.write_text("name: stages\nbuild:\n  path: ctx\nconda_file: conda.yml\n")
    built = _resolve(cli, spec)
    image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
    out = docker(services, "run", "--rm", "--network", "none", image, "sh", "-c",
                 "cat /both; envctl-greet")  # fmt: skip
    lines = out.splitlines()
    assert lines[:2] == ["made-by-tools", "made-by-stage-1"]
    assert "hello from envctl-hello 2.0" in lines  # the environment is under the last stage
    explained = cli.invoke(app, ["explain", str(spec)])
    assert explained.exit_code == 0, explained.stderr
    assert "AS tools" in explained.stdout
    assert "@sha256:" in explained.stdout.split("AS tools")[0].rsplit("FROM", 1)[1]


def test_envctl_steps_with_a_stage_and_a_last_stage_from_the_environments(
    cli: CliRunner, services: Services, tmp_path: Path
) -> None:
    """envctl's own format: an earlier stage, the environment's opened by `FROM base_image`,
    and the last stage built FROM that one (the conda-store shape)."""
    steps = (
        f"FROM {services.busybox_image} AS tools\nRUN echo tool > /tool\n"
        "FROM base_image AS env\nRUN envctl-greet > /greeting\n"
        "FROM env AS final\nCOPY --from=tools /tool /tool\n"
    )
    built = _resolve(cli, _spec(tmp_path, "{dependencies: [envctl-greet, envctl-hello >=2]}",
                                steps=steps))  # fmt: skip
    image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
    out = docker(services, "run", "--rm", "--network", "none", image, "cat", "/greeting", "/tool")
    lines = out.splitlines()
    assert "hello from envctl-hello 2.0" in lines  # envctl-greet ran in the environment's stage
    assert lines[-1] == "tool"


def test_a_base_with_onbuild_triggers_is_refused_and_nothing_is_tagged(
    cli: CliRunner, workspace: OciRegistry, services: Services, tmp_path: Path
) -> None:
    """Docker runs a base's triggers in the build FROM it; envctl writes the image itself and
    runs none, and a docker step FROM it would run them, reading images no one checked."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "Dockerfile").write_text(
        f"FROM {services.busybox_image}\nONBUILD COPY --from=cafe / /loot\n"
    )
    base = f"{workspace.address}/with-triggers:{uuid.uuid4().hex[:8]}"
    docker(services, "build", "-q", "-t", base, str(tmp_path / "base"))
    docker(services, "push", base)
    spec = _spec(tmp_path, "{dependencies: [envctl-greet]}", base=base)
    result = cli.invoke(app, ["resolve", "--json", str(spec)])
    assert result.exit_code == 1, result.stderr
    assert "has ONBUILD triggers" in result.stderr
    key = json.loads(cli.invoke(app, ["hash", "--json", str(spec)]).stdout)[0]["key"]
    assert workspace.resolve(key) is None  # nothing tagged
    # an earlier stage FROM it: the engine would run its triggers there
    staged = _spec(tmp_path, "{dependencies: [envctl-greet]}",
                   steps=f"FROM {base} AS t\nFROM base_image\nRUN true")  # fmt: skip
    result = cli.invoke(app, ["resolve", "--json", str(staged)])
    assert result.exit_code == 1, result.stderr
    assert "has ONBUILD triggers" in result.stderr
