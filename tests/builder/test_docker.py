"""builder.docker on the real engine and the real workspace registry (scripts/services).

Every build carries a fresh nonce so the classic builder's cache (which ignores network and
limits) never answers for it, and removes what it tagged. The Debian minbase base is pinned by
the digest the global registry serves, as the resolver pins it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from docker import APIClient
from docker.errors import ImageNotFound, NotFound

from builder.deadline import Canceller, context_tar
from builder.docker import DockerBuilder, Network
from builder.errors import BuildTimeout, EngineUnavailable, StepFailed
from builder.stream import JsonLog
from hashing import (
    EnvironmentSpec,
    ImageName,
    parse_image,
    parse_steps,
)
from registry import DigestResolver
from registry.errors import RegistryUnavailable
from tests.conftest import Services, docker


@dataclass
class Recorder:
    """on_log: every line, with when it arrived."""

    lines: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.times.append(time.monotonic())

    def at(self, text: str) -> float:
        return self.times[self.lines.index(text)]


@pytest.fixture(scope="module")
def base(services: Services) -> ImageName:
    with DigestResolver() as resolver:
        return resolver.resolve(parse_image(services.base_image))


@pytest.fixture(scope="module")
def api(services: Services) -> Iterator[APIClient]:
    client = APIClient(base_url=services.docker_host, version="1.41")
    yield client
    client.close()


@pytest.fixture
def tags(api: APIClient) -> Iterator[list[str]]:
    """Tags a test creates; removed (with their images) after it."""
    created: list[str] = []
    yield created
    for tag in created:
        with contextlib.suppress(NotFound):
            api.remove_image(tag, force=True)


def _builder(
    services: Services,
    *,
    timeout: float = 60.0,
    memory: int | None = None,
    cpus: float | None = None,
    network: Network = "none",
    cgroup_parent: str | None = None,
) -> DockerBuilder:
    return DockerBuilder(
        base_url=services.docker_host,
        timeout=timeout,
        memory=memory,
        cpus=cpus,
        network=network,
        cgroup_parent=cgroup_parent,
    )


def _spec(base: ImageName, steps: str, **variables: str) -> EnvironmentSpec:
    nonce = f"RUN echo nonce {uuid.uuid4().hex}\n"
    return EnvironmentSpec(
        base_image=base,
        docker_steps=parse_steps(nonce + steps, "test"),
        variables=tuple(sorted(variables.items())),
    )


def _context(tmp_path: Path, spec: EnvironmentSpec, **files: str) -> Path:
    """A context of `files` (paths relative to its root) whose Dockerfile runs `spec`'s steps
    on its base, by digest, as the pipeline writes it."""
    base = spec.base_image
    lines = [f"FROM {base.name}@{base.digest}", *(s.dockerfile_line() for s in spec.docker_steps)]
    (tmp_path / "ctx").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ctx" / "Dockerfile").write_text("\n".join(lines) + "\n")
    for name, text in files.items():
        path = tmp_path / "ctx" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return tmp_path / "ctx"


def _inspect(api: APIClient, tag: str) -> dict[str, Any]:
    info: dict[str, Any] = api.inspect_image(tag)  # type: ignore[no-untyped-call]
    return info


def _tagged(api: APIClient, tag: str) -> bool:
    try:
        _inspect(api, tag)
    except ImageNotFound:
        return False
    return True


def _tag(services: Services, name: str) -> str:
    return f"{services.workspace_registry}/test-{uuid.uuid4().hex[:12]}/{name}:1"


def test_build_push_and_run_by_digest(
    services: Services, base: ImageName, api: APIClient, tags: list[str], tmp_path: Path
) -> None:
    steps = (
        "COPY greeting.txt /etc/greeting.txt\n"
        "RUN for i in 1 2 3 4 5; do echo line-$i; sleep 0.2; done\n"
    )
    spec = _spec(base, steps)
    ctx = _context(tmp_path, spec, **{"greeting.txt": "hello from the context\n"})
    tag = _tag(services, "env")
    tags.append(tag)
    log = Recorder()
    builder = _builder(services)

    image_id = builder.build(ctx, tag=tag, labels={"org.envctl.build": "b1"}, on_log=log)
    returned = time.monotonic()

    assert image_id.startswith("sha256:")
    assert _inspect(api, tag)["Id"] == image_id
    # streamed as it came: the loop's lines arrived ~0.2 s apart, well before build() returned
    numbered = [line for line in log.lines if line.startswith("line-")]
    assert numbered == [f"line-{i}" for i in range(1, 6)]
    assert log.at("line-5") - log.at("line-1") > 0.5
    assert returned - log.at("line-1") > 0.5
    assert len(log.lines) > 15
    labels = _inspect(api, tag)["Config"]["Labels"]
    assert labels["org.envctl.build"] == "b1"

    digest = builder.push(tag, auth=None, on_log=log)
    assert digest.startswith("sha256:")
    builder.remove(tag)
    tags.remove(tag)
    assert not _tagged(api, tag)

    pinned = f"{tag.rsplit(':', 1)[0]}@{digest}"
    assert not _tagged(api, pinned)  # so `docker run` pulls it back from the registry
    tags.append(pinned)
    greeting = docker(
        services, "run", "--rm", "--network", "none", pinned, "cat", "/etc/greeting.txt"
    )
    assert greeting == "hello from the context\n"


def test_a_failing_step_is_step_failed_and_tags_nothing(
    services: Services, base: ImageName, api: APIClient, tags: list[str], tmp_path: Path
) -> None:
    spec = _spec(base, "RUN echo out-before-failing && echo err-before-failing >&2 && exit 3\n")
    ctx = _context(tmp_path, spec)
    tag = _tag(services, "fails")
    tags.append(tag)
    with pytest.raises(StepFailed) as info:
        _builder(services).build(ctx, tag=tag, labels={}, on_log=Recorder())
    assert "returned a non-zero code: 3" in info.value.message
    assert "out-before-failing" in info.value.log_tail
    assert "err-before-failing" in info.value.log_tail  # stderr, without its colour codes
    assert "\x1b" not in info.value.log_tail
    assert info.value.deterministic
    assert not _tagged(api, tag)
    assert "before-failing" not in docker(services, "ps", "-a", "--no-trunc")


def test_a_build_past_its_time_limit_is_cancelled(
    services: Services, base: ImageName, api: APIClient, tags: list[str], tmp_path: Path
) -> None:
    marker = f"envctl-timeout-{uuid.uuid4().hex[:8]}"
    spec = _spec(base, f"RUN echo started && sleep 600 # {marker}\n")
    ctx = _context(tmp_path, spec)
    tag = _tag(services, "slow")
    tags.append(tag)
    log = Recorder()
    start = time.monotonic()
    with pytest.raises(BuildTimeout) as info:
        _builder(services, timeout=3.0).build(ctx, tag=tag, labels={}, on_log=log)
    assert time.monotonic() - start < 10
    assert "started" in info.value.log_tail
    assert not info.value.deterministic
    # the engine killed and removed the RUN container; build() waited for that
    assert marker not in docker(services, "ps", "-a", "--no-trunc")
    assert not any(line.startswith("envctl: removing container") for line in log.lines)
    assert not _tagged(api, tag)


def test_limits_apply_to_each_run(
    services: Services, base: ImageName, tags: list[str], tmp_path: Path
) -> None:
    # cgroup v2 files first, then v1 (this machine's engine runs on v1)
    probe = (
        "RUN cat /sys/fs/cgroup/memory.max 2>/dev/null "
        "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us\n"
    )
    ctx = _context(tmp_path, _spec(base, probe))
    tag = _tag(services, "limits")
    tags.append(tag)
    log = Recorder()
    _builder(services, memory=64 << 20, cpus=0.5).build(ctx, tag=tag, labels={}, on_log=log)
    assert str(64 << 20) in log.lines
    assert "50000" in log.lines or "50000 100000" in log.lines


@contextlib.contextmanager
def _pids_cgroup(limit: int) -> Iterator[str]:
    """A cgroup of the local engine's host whose processes are at most `limit` (cgroup v1 or
    v2, the cgroupfs driver of scripts/services' engine); its name, relative to the root."""
    name = f"envctl-test-{uuid.uuid4().hex[:8]}"
    root = Path("/sys/fs/cgroup")
    pids = root / "pids" if (root / "pids").is_dir() else root  # v1: a hierarchy per controller
    (pids / name).mkdir()
    try:
        (pids / name / "pids.max").write_text(f"{limit}\n")
        yield name
    finally:  # the engine made the same folder in every other hierarchy
        for folder in [pids / name, *(d / name for d in root.iterdir() if d != pids)]:
            with contextlib.suppress(OSError):
                folder.rmdir()


def test_a_pids_limit_on_the_cgroup_parent_bounds_the_steps(
    services: Services, base: ImageName, tags: list[str], tmp_path: Path
) -> None:
    """The classic builder has no pids limit; ENVCTL_BUILD_CGROUP_PARENT puts the steps in a
    cgroup whose pids.max holds: a step starting 200 processes fails under a limit of 40 (the
    shell cannot fork), and runs without it."""
    fork = (
        "RUN for i in $(seq 200); do sleep 60 & done; echo procs $(ls /proc | grep -c '^[0-9]')\n"
    )
    ctx = _context(tmp_path, _spec(base, fork))
    tag = _tag(services, "pids")
    tags.append(tag)
    with _pids_cgroup(40) as parent, pytest.raises(StepFailed) as info:
        _builder(services, cgroup_parent=f"/{parent}").build(
            ctx, tag=tag, labels={}, on_log=Recorder()
        )
    assert "returned a non-zero code" in info.value.log_tail
    log = Recorder()
    _builder(services).build(ctx, tag=tag, labels={}, on_log=log)
    (procs,) = [int(line.split()[1]) for line in log.lines if line.startswith("procs ")]
    assert procs > 200


@pytest.mark.parametrize(("network", "only_loopback"), [("none", True), ("host", False)])
def test_the_network_of_run_steps(
    services: Services,
    base: ImageName,
    tags: list[str],
    tmp_path: Path,
    network: Network,
    only_loopback: bool,
) -> None:
    ctx = _context(tmp_path, _spec(base, "RUN echo nics: $(ls /sys/class/net)\n"))
    tag = _tag(services, "net")
    tags.append(tag)
    log = Recorder()
    _builder(services, network=network).build(ctx, tag=tag, labels={}, on_log=log)
    (nics,) = [line.split()[1:] for line in log.lines if line.startswith("nics:")]
    assert (nics == ["lo"]) == only_loopback


def test_an_unreachable_engine_is_engine_unavailable(tmp_path: Path) -> None:
    builder = DockerBuilder(
        base_url=f"unix://{tmp_path}/no.sock", timeout=5, memory=None, cpus=None, network="none"
    )
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(EngineUnavailable):
        builder.build(tmp_path, tag="envctl-test/x:1", labels={}, on_log=Recorder())
    with pytest.raises(EngineUnavailable):
        builder.push("127.0.0.1:5002/x/y:1", auth=None, on_log=Recorder())
    builder.remove("envctl-test/x:1")  # best effort: no error


def test_a_push_to_an_unreachable_registry_is_registry_unavailable(
    services: Services, api: APIClient, tags: list[str]
) -> None:
    tag = f"127.0.0.1:9/envctl-test/{uuid.uuid4().hex[:8]}:1"  # discard port: nothing listens
    api.tag(services.busybox_image, tag.rsplit(":", 1)[0], "1")
    tags.append(tag)
    log = Recorder()
    with pytest.raises(RegistryUnavailable) as info:  # transient: exit code 3, never remembered
        _builder(services).push(tag, auth=None, on_log=log)
    assert info.value.endpoint == "127.0.0.1:9"
    assert "connection refused" in str(info.value)
    assert any("connection refused" in line for line in log.lines)


def test_a_dockerfile_the_engine_cannot_read_is_step_failed(
    services: Services, base: ImageName, tmp_path: Path
) -> None:
    # heredocs parse (BuildKit's parser) but the classic builder of 20.10 cannot read them
    spec = _spec(base, "RUN <<EOF\necho from-heredoc\nEOF\n")
    ctx = _context(tmp_path, spec)
    with pytest.raises(StepFailed, match="dockerfile parse error"):
        _builder(services).build(ctx, tag=_tag(services, "heredoc"), labels={}, on_log=Recorder())


# --------------------------------------------------------------------- the JSON log, by itself


def _messages(*messages: Mapping[str, object]) -> bytes:
    return b"".join(json.dumps(dict(m), ensure_ascii=False).encode() + b"\r\n" for m in messages)


def test_the_log_is_split_into_lines_however_the_bytes_arrive() -> None:
    data = _messages(
        {"stream": "Step 1/2 : RUN x\n ---> Running in 0123456789ab\n"},
        {"stream": "part of "},
        {"stream": "a line é\nnext"},
        {"stream": "\x1b[91mon stderr\n\x1b[0m"},
        {"status": "Downloading", "progressDetail": {"current": 1, "total": 2}, "id": "abc"},
        {"status": "Pull complete", "progressDetail": {}, "id": "abc"},
        {"aux": {"ID": "sha256:" + "1" * 64}},
        {"stream": "no newline at the end"},
    )
    for size in (1, 3, 7, len(data)):
        lines: list[str] = []
        log = JsonLog(lines.append)
        for i in range(0, len(data), size):
            log.feed(data[i : i + size])
        log.close()
        assert lines == [
            "Step 1/2 : RUN x",
            " ---> Running in 0123456789ab",
            "part of a line é",
            "nexton stderr",
            "abc: Pull complete",
            "no newline at the end",
        ]
        assert log.image_id == "sha256:" + "1" * 64
        assert (log.step, log.containers) == (1, ["0123456789ab"])


def test_the_log_keeps_the_error_and_a_bounded_tail() -> None:
    log = JsonLog(lambda _: None)
    log.feed(_messages(*({"stream": f"l{i}\n"} for i in range(100))))
    log.feed(_messages({"errorDetail": {"code": 2, "message": "boom"}, "error": "boom"}))
    assert (log.error, log.error_code) == ("boom", 2)
    assert log.tail().splitlines() == [f"l{i}" for i in range(51, 100)] + ["boom"]


def test_the_context_archive_carries_the_listed_modes(tmp_path: Path) -> None:
    """The host's copy of a context has no setuid bits; the archive has the modes that were
    keyed, as the Docker CLI would send the user's own files."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "tool").write_text("x")
    os.symlink("tool", tmp_path / "ctx" / "link")
    archive = io.BytesIO()
    modes = {"ctx": 0o1777, "ctx/tool": 0o4755, "ctx/link": 0o600}
    context_tar(tmp_path, archive, Canceller(time.monotonic() + 60), modes)
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        got = {m.name: (m.mode, m.uid, m.uname) for m in tar.getmembers()}
    assert got == {"ctx": (0o1777, 0, ""), "ctx/tool": (0o4755, 0, ""), "ctx/link": (0o777, 0, "")}
