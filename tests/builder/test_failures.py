"""Builds that break half way, end to end on real parts: a registry that goes away at push, an
engine killed while a step runs. The contract either way: no tag is written, and the next resolve
of the same spec builds again, cleanly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.config import BuildConfig
from builder.docker import DockerBuilder
from builder.pipeline import ImageBuilder
from builder.resolve import InMemoryFailures, Resolver, RetryPolicy
from hashing import EnvctlError, EnvironmentSpec, compute_key
from registry import DigestResolver
from registry.errors import RegistryUnavailable
from registry.oci import OciRegistry
from specio.files import load_spec
from tests.builder.engines import ThrowawayEngine, throwaway_engine
from tests.conftest import Services, docker
from tests.registry.servers import RegistryProcess
from tests.streams import Lines

ENVCTL = str(Path(sys.executable).parent / "envctl")
EXIT_UNAVAILABLE = 3  # cli.main: a required service unreachable
STEP_RUNNING = "step running"  # what the step prints; its Dockerfile line does not contain it


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A running registry of this test's own; stopped afterwards, whatever state it is in."""
    registry = RegistryProcess(tmp_path / "registry")
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def engine() -> Iterator[ThrowawayEngine]:
    """A Docker engine of this test's own (tests/builder/engines.py); removed afterwards."""
    with throwaway_engine() as started:
        yield started


def _spec_file(folder: Path, base_image: str, steps: str) -> Path:
    """A spec of `base_image` and docker `steps` only (no conda: the failures are the point)."""
    body = "".join(f"  {line}\n" for line in steps.strip().splitlines())
    path = folder / "spec.yml"
    path.write_text(f"base_image: {base_image}\ndocker_steps: |\n{body}")
    return path


def _pinned(path: Path) -> EnvironmentSpec:
    """The spec in `path` with its base image pinned, as `envctl resolve` pins it."""
    spec = load_spec(path)
    with DigestResolver() as digests:
        return spec.with_base_image(digests.resolve(spec.base_image))


def test_a_registry_gone_at_push_leaves_no_tag_and_the_next_resolve_builds(
    services: Services, own_registry: RegistryProcess, tmp_path: Path
) -> None:
    nonce = uuid.uuid4().hex
    spec = _pinned(_spec_file(tmp_path, services.busybox_image, f"RUN echo {nonce} > /marker"))
    key = compute_key(spec)
    home = tmp_path / "home"
    workspace = OciRegistry(f"{own_registry.host}/failures")
    engine = DockerBuilder(
        base_url=services.docker_host, timeout=120, memory=None, cpus=None, network="none"
    )
    # wired as cli.main's _Context.images(), with one attempt: the failure itself is the subject
    builder = ImageBuilder(workspace, engine, BuildConfig(home))
    resolver = Resolver(
        workspace, builder, failures=InMemoryFailures(), retry=RetryPolicy(attempts=1)
    )
    stages: list[str] = []

    def stop_registry_at_push(stage: str, message: str) -> None:
        stages.append(stage)
        if stage == "push" and own_registry.running:
            own_registry.stop()  # and waits for it to exit: the push then meets no registry

    try:
        with pytest.raises(EnvctlError) as failure:
            resolver.resolve(spec, on_event=stop_registry_at_push)
        error = failure.value
        assert "push" in stages, f"the registry was never stopped; stages: {stages}"
        raised = f"envctl raised {type(error).__name__}: {error}"
        # the engine reports it inside its push stream; envctl names it what it is: the
        # registry is unavailable (transient, exit code 3, never remembered)
        assert isinstance(error, RegistryUnavailable), raised
        assert own_registry.host in str(error), f"the error does not name the registry; {raised}"
        kept = docker(services, "images", "-q", workspace.reference(key)).strip()
        assert not kept, "the engine kept the image of a build that did not register"

        own_registry.start()  # the same port and storage: the same registry, back
        with OciRegistry(workspace.address) as fresh:
            assert fresh.lookup(key) is None, "a failed push wrote a tag"
            assert fresh.keys() == []

        built = resolver.resolve(spec)
        assert built is not None
        assert (built.source, built.image) == ("built", workspace.reference(key))
        with OciRegistry(workspace.address) as fresh:
            hit = fresh.lookup(key)
        assert hit is not None
        assert hit.digest == built.digest
        out = docker(services, "run", "--rm", "--network", "none", built.pinned, "cat", "/marker")
        assert out.strip() == nonce
        docker(services, "rmi", built.pinned)
    finally:
        engine.close()
        workspace.close()


def test_an_engine_killed_mid_build_exits_3_leaves_no_tag_and_the_next_resolve_builds(
    services: Services, engine: ThrowawayEngine, tmp_path: Path
) -> None:
    nonce = uuid.uuid4().hex
    # the same spec both times: the sleep only keeps the step running while the engine dies
    steps = f"RUN printf 'step %s\\n' running && sleep 3 && echo {nonce} > /marker"
    path = _spec_file(tmp_path, services.busybox_image, steps)
    key = compute_key(_pinned(path))
    workspace = OciRegistry(f"{services.workspace_registry}/failures-{uuid.uuid4().hex[:12]}")
    env = {
        **os.environ,
        "DOCKER_HOST": engine.docker_host,
        "ENVCTL_WORKSPACE_REGISTRY": workspace.address,
        "ENVCTL_HOME": str(tmp_path / "home"),
        "ENVCTL_BUILD_NETWORK": "none",
    }
    env.pop("ENVCTL_GLOBAL_REGISTRY", None)
    process = subprocess.Popen(
        [ENVCTL, "resolve", str(path)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        stderr = Lines(process.stderr)
        running = stderr.wait_for(STEP_RUNNING, timeout=40)
        if running:
            engine.kill()  # dockerd, its containerd, the shim and the step's container
        code = process.wait(timeout=60)
        text = stderr.text()
        assert running, f"the step never ran; envctl exited {code}:\n{text}"
        assert code == EXIT_UNAVAILABLE, f"envctl exited {code}, not 3:\n{text}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    try:
        with OciRegistry(workspace.address) as fresh:
            assert fresh.lookup(key) is None, "a build killed mid-step wrote a tag"
            assert fresh.keys() == []

        engine.start()  # again, on the same folders
        again = subprocess.run(
            [ENVCTL, "resolve", "--json", str(path)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr
        built = json.loads(again.stdout)
        assert (built["source"], built["key"]) == ("built", key), again.stderr
        assert built["image"] == workspace.reference(key)
        pinned = f"{workspace.reference(key).rsplit(':', 1)[0]}@{built['digest']}"
        out = docker(services, "run", "--rm", "--network", "none", pinned, "cat", "/marker")
        assert out.strip() == nonce
        docker(services, "rmi", pinned)
    finally:
        workspace.close()
