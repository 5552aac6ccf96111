"""Build on a miss, end to end: real channel, real engine, real registries, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from builder.envlayers import ENV_PREFIX
from builder.pipeline import _sweep
from cli.local import LocalEnvironments
from cli.main import app
from hashing import EnvKey
from registry.oci import OciRegistry
from service.settings import Settings
from specio.request import request_from_file
from tests.conftest import FIXTURES, Services, docker

ENVCTL = str(Path(sys.executable).parent / "envctl")


def _spec(folder: Path, *, steps: str, deps: str = "[envctl-greet, envctl-hello >=2]") -> Path:
    """A spec with a context folder of two files; `steps` are its docker steps."""
    (folder / "ctx" / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "ctx" / "greeting.txt").write_text("hello from the context\n")
    (folder / "ctx" / "sub" / "data.txt").write_text("data\n")
    spec = folder / f"spec-{uuid.uuid4().hex[:8]}.yml"
    body = "".join(f"  {line}\n" for line in steps.strip().splitlines())
    spec.write_text(
        f"base_image: {os.environ['ENVCTL_TEST_BASE_IMAGE']}\n"
        f"conda: {{dependencies: {deps}}}\n"
        'variables: {GREETING: "a \\"quoted\\" $value"}\n'
        f"context: ctx\ndocker_steps: |\n{body}"
    )
    return spec


def _resolve(cli: CliRunner, spec: Path, *args: str) -> tuple[int, dict[str, str], str]:
    result = cli.invoke(app, ["resolve", "--json", *args, str(spec)])
    body = json.loads(result.stdout) if result.exit_code == 0 else {}
    return result.exit_code, body, result.stderr


def test_the_built_image_runs_with_its_environment(
    cli: CliRunner, workspace: OciRegistry, services: Services, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, steps="RUN envctl-hello > /etc/hello.txt\nCOPY . /app")
    code, built, stderr = _resolve(cli, spec)
    assert code == 0, stderr
    assert (built["source"], built["image"]) == ("built", workspace.reference(built["key"]))
    assert built["build_id"]
    for stage in ("solve", "install", "build", "push"):
        assert stage in stderr, f"progress names the {stage} stage"
    prefix = ENV_PREFIX  # every environment lives there
    out = docker(
        services, "run", "--rm", "--network", "none", built["image"], "sh", "-c",
        'envctl-hello; cat /etc/hello.txt; printenv GREETING; cd /app && find . | sort',
    )  # fmt: skip
    assert out.splitlines() == [
        "hello from envctl-hello 2.0",
        prefix,  # the prefix placeholder was replaced by the in-image prefix
        "hello from envctl-hello 2.0",  # the docker steps ran after the environment
        prefix,
        'a "quoted" $value',
        ".",  # exactly the user's context: nothing of envctl's build leaked into COPY .
        "./greeting.txt",
        "./sub",
        "./sub/data.txt",
    ]
    code, again, _ = _resolve(cli, spec)
    assert (code, again["source"], again["digest"]) == (0, "workspace", built["digest"])
    metadata = workspace.get_metadata(EnvKey(built["key"]))
    assert metadata is not None
    assert "envctl-hello" in (metadata.lock or "")
    assert "Step 1/" in (metadata.build_log or "")
    assert metadata.facts["build_id"] == built["build_id"]
    docker(services, "rmi", built["image"])


def test_an_unsolvable_spec_fails_fast_with_the_reason_and_is_remembered(
    cli: CliRunner, workspace: OciRegistry, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, steps="RUN true", deps="[envctl-conflict-a, envctl-conflict-b]")
    code, _, stderr = _resolve(cli, spec)
    assert code == 1
    assert "envctl-conflict-a" in stderr
    assert "envctl-hello" in stderr
    assert "Step 1/" not in stderr, "no image work before the solve succeeds"
    code, _, again = _resolve(cli, spec)
    assert (code, "remembered" in again) == (1, True)
    code, _, forced = _resolve(cli, spec, "--force-rebuild")
    assert (code, "remembered" in forced, "envctl-conflict-a" in forced) == (1, False, True)


def test_a_failing_step_is_remembered_with_its_log_and_leaves_no_tag(
    cli: CliRunner, workspace: OciRegistry, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, steps="RUN echo boom-from-the-step && false")
    code, _, stderr = _resolve(cli, spec)
    assert code == 1
    assert "boom-from-the-step" in stderr
    assert workspace.keys() == []
    code, _, again = _resolve(cli, spec)
    assert code == 1
    assert "remembered" in again
    assert "boom-from-the-step" in again, "the remembered failure keeps its log"


def test_an_unreachable_engine_exits_3_and_is_not_remembered(
    cli: CliRunner, workspace: OciRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path, steps="RUN true")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    code, _, stderr = _resolve(cli, spec)
    assert code == 3, stderr
    monkeypatch.undo()  # the fixture's environment again, with the real engine
    monkeypatch.setenv("ENVCTL_WORKSPACE_REGISTRY", workspace.address)
    monkeypatch.setenv("ENVCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ENVCTL_CHANNELS", os.environ["ENVCTL_CHANNELS"])
    monkeypatch.setenv("ENVCTL_BUILD_NETWORK", "none")
    code, built, stderr = _resolve(cli, spec)
    assert (code, built.get("source")) == (0, "built"), stderr


def _env() -> dict[str, str]:
    return dict(os.environ)  # the fixture's settings, for envctl run as a separate process


def test_ten_concurrent_resolves_of_a_new_spec_give_one_build(
    workspace: OciRegistry, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, steps=f"RUN echo {uuid.uuid4().hex} > /nonce")
    processes = [
        subprocess.Popen(
            [ENVCTL, "resolve", "--json", str(spec)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    # callers that waited on the build (its own, or one it joined) name it; later ones hit
    assert len({r["build_id"] for r in results if "build_id" in r}) == 1
    assert {r["source"] for r in results} <= {"built", "workspace"}
    assert len({r["digest"] for r in results}) == 1


def test_a_resolve_killed_mid_build_leaves_no_tag_and_the_next_builds_cleanly(
    workspace: OciRegistry, tmp_path: Path
) -> None:
    # the marker is printed by the running step only, not by the engine's `Step 2/2 : RUN …` echo
    spec = _spec(tmp_path, steps="RUN printf 'step %s\\n' running && sleep 4")
    process = subprocess.Popen(
        [ENVCTL, "resolve", str(spec)], env=_env(), stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait until the build is really running the step
        if "step running" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert workspace.keys() == []
    again = subprocess.run(
        [ENVCTL, "resolve", str(spec)], env=_env(), capture_output=True, check=False, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert len(workspace.keys()) == 1


def test_pip_requirements_install_from_a_pinned_resolution(
    cli: CliRunner,
    workspace: OciRegistry,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sources = tmp_path / "pip-sources"
    shutil.copytree(FIXTURES / "pip", sources)  # building writes into the source folders
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(sources / "envctl-pydep"), str(sources / "envctl-pyhello")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    monkeypatch.setenv("ENVCTL_PIP_FIND_LINKS", str(wheels))
    spec = tmp_path / "pip.yml"
    spec.write_text(
        f"base_image: {services.python_image}\n"
        "conda: {dependencies: [envctl-hello, {pip: [Envctl_PyHello>=2]}]}\n"
        "docker_steps: |\n"
        '  RUN python3 -c "import envctl_pyhello as m; print(m.hello())" > /etc/pyhello.txt\n'
    )
    code, built, stderr = _resolve(cli, spec)
    assert code == 0, stderr
    out = docker(services, "run", "--rm", "--network", "none", built["image"], "sh", "-c",
                 "cat /etc/pyhello.txt; envctl-hello | head -1")  # fmt: skip
    assert out.splitlines() == [
        "hello from envctl-pyhello 2.0 (pinned)",  # its dependency came from the resolution
        "hello from envctl-hello 2.0",
    ]
    metadata = workspace.get_metadata(EnvKey(built["key"]))
    assert metadata is not None
    pins = (metadata.pip_lock or "").splitlines()
    assert [pin.split(" ")[0] for pin in pins] == ["envctl-pydep==1.0", "envctl-pyhello==2.0"]
    assert all("--hash=sha256:" in pin for pin in pins)
    # installed on the host into layers: no pip ran in the image, and no wheel file is in it
    assert "pip" not in (metadata.dockerfile or "")
    wheels_inside = docker(services, "run", "--rm", "--network", "none", built["image"], "sh",
                           "-c", "find / -xdev -name '*.whl' | wc -l")  # fmt: skip
    assert wheels_inside.strip() == "0"
    docker(services, "rmi", built["image"])


def test_build_folders_left_by_killed_builds_are_swept(tmp_path: Path) -> None:
    builds = tmp_path / "builds"
    (builds / "stale" / "environment").mkdir(parents=True)
    (builds / "running").mkdir()
    os.utime(builds / "stale", (0, 0))
    _sweep(builds, older_than=3600)
    assert [p.name for p in builds.iterdir()] == ["running"]


def test_without_a_registry_builds_go_into_the_embedded_layout(
    cli: CliRunner, workspace: OciRegistry, services: Services, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("ENVCTL_WORKSPACE_REGISTRY")  # nothing configured: the embedded default
    spec = _spec(tmp_path, steps="RUN envctl-hello > /etc/hello.txt")
    code, built, stderr = _resolve(cli, spec)
    assert code == 0, stderr
    layout = tmp_path / "home" / "registry"
    assert built["image"] == f"oci:{layout}:{built['key']}"
    code, again, _ = _resolve(cli, spec)
    assert (code, again["source"], again["digest"]) == (0, "workspace", built["digest"])
    local = f"envctl-test/from-layout:{built['key']}"
    daemon = services.docker_host.removeprefix("unix://")
    subprocess.run(
        ["skopeo", "copy", "--dest-daemon-host", f"unix://{daemon}",
         f"oci:{layout}:{built['key']}", f"docker-daemon:{local}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    out = docker(services, "run", "--rm", "--network", "none", local, "cat", "/etc/hello.txt")
    assert out.splitlines()[0] == "hello from envctl-hello 2.0"
    docker(services, "rmi", local)


def test_force_rebuild_in_a_long_lived_process_replaces_what_it_saw(
    workspace: OciRegistry, tmp_path: Path
) -> None:
    """One service for many calls, as a server holds it: a rebuild is seen at once."""
    spec_path = _spec(tmp_path, steps="RUN date +%s%N > /built-at")
    request = request_from_file(spec_path)
    with LocalEnvironments(Settings.from_env(os.environ)) as envs:
        first = envs.resolve_image(request)
        rebuilt = envs.resolve_image(request, force_rebuild=True)
        assert rebuilt.source == "built"
        assert rebuilt.digest != first.digest  # the classic builder's images carry timestamps
        found = workspace.resolve(EnvKey(rebuilt.key))
        assert found is not None
        assert found.digest == rebuilt.digest
        again = envs.resolve_image(request)
        assert again.digest == rebuilt.digest
