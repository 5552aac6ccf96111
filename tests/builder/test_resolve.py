"""Resolve's rules: failures remembered or retried, over a real layout registry.

The builder here is a stand-in that writes a small image through the registry's primitives, so
these tests run in milliseconds; the real builder (conda, Docker engine, push) is exercised end
to end in tests/builder/test_pipeline.py and tests/cli/test_cli.py. One build per key across
threads, processes and hosts is the build store's (tests/service/test_store.py), and failures
remembered in the database are seen by every worker (tests/service/test_workers.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.errors import EngineUnavailable, SolveError, StepFailed
from builder.resolve import FailureMemory, InMemoryFailures, OnEvent, Resolver, RetryPolicy
from hashing import EnvironmentSpec, EnvKey, complete_spec, compute_key, parse_spec_text
from registry.base import ImageRef
from registry.errors import RegistryUnavailable
from registry.layout import LayoutRegistry
from tests.registry.images import push_image

NO_WAIT = RetryPolicy(attempts=3, backoff=0.0)


def _spec(text: str = "RUN true") -> EnvironmentSpec:
    digest = "sha256:" + "a" * 64
    return complete_spec(
        parse_spec_text(f"base_image: x@{digest}\ndocker_steps: {text}\n", "spec.yml")
    )


@dataclass
class StandInBuilder:
    """Writes a tiny image for the key; counts calls; fails as told."""

    registry: LayoutRegistry
    failures: list[Exception] = field(default_factory=list)
    calls: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    gate: bool = False

    def build(
        self, spec: EnvironmentSpec, key: EnvKey, build_id: str, on_event: OnEvent
    ) -> ImageRef:
        self.calls += 1
        self.started.set()
        if self.gate:
            self.release.wait(timeout=30)
        if self.failures:
            raise self.failures.pop(0)
        manifest = push_image(self.registry, key)  # random content: every build its own digest
        self.registry.forget(key)  # as the real pipeline does after writing the tag
        return ImageRef(key, self.registry.reference(key), manifest.digest, build_id=build_id)


def _resolver(
    tmp_path: Path, memory: FailureMemory | None = None, **builder: object
) -> tuple[Resolver, StandInBuilder]:
    registry = LayoutRegistry(tmp_path / "registry")
    stand_in = StandInBuilder(registry, **builder)  # type: ignore[arg-type]
    memory = memory or InMemoryFailures()
    return Resolver(registry, stand_in, failures=memory, retry=NO_WAIT), stand_in


def test_a_miss_builds_once_then_hits(tmp_path: Path) -> None:
    resolver, builder = _resolver(tmp_path)
    built = resolver.resolve(_spec())
    assert built is not None
    assert (built.source, builder.calls) == ("built", 1)
    assert built.build_id
    again = resolver.resolve(_spec())
    assert again is not None
    assert (again.source, again.digest, builder.calls) == ("workspace", built.digest, 1)


def test_no_build_on_a_miss_answers_none(tmp_path: Path) -> None:
    resolver, builder = _resolver(tmp_path)
    assert resolver.resolve(_spec(), build=False) is None
    assert builder.calls == 0


@pytest.mark.parametrize("failure", [StepFailed("RUN false: exit 1"), SolveError("no numpy")])
def test_a_deterministic_failure_is_remembered_until_force_rebuild(
    tmp_path: Path, failure: Exception
) -> None:
    memory = InMemoryFailures()
    resolver, builder = _resolver(tmp_path, memory, failures=[failure])
    with pytest.raises(type(failure)):
        resolver.resolve(_spec())
    other_view, _ = _resolver(tmp_path, memory)  # another resolver on the same memory
    with pytest.raises(type(failure), match="remembered"):
        other_view.resolve(_spec())
    assert builder.calls == 1
    rebuilt = resolver.resolve(_spec(), force_rebuild=True)
    assert rebuilt is not None
    assert (rebuilt.source, builder.calls) == ("built", 2)


def test_a_transient_failure_is_retried_and_never_remembered(tmp_path: Path) -> None:
    flaky = [EngineUnavailable("engine gone"), EngineUnavailable("engine gone")]
    resolver, builder = _resolver(tmp_path, failures=flaky)
    assert resolver.resolve(_spec()) is not None
    assert builder.calls == 3

    down, stuck = _resolver(tmp_path / "b", failures=[EngineUnavailable("down")] * 3)
    with pytest.raises(EngineUnavailable):
        down.resolve(_spec("RUN other"))
    assert stuck.calls == 3
    assert down.resolve(_spec("RUN other")) is not None, "a transient failure is not remembered"


def test_a_registry_still_down_after_a_failed_push_is_retried(tmp_path: Path) -> None:
    """The check after a failure (did its tag get written?) finds the registry still down:
    that is no answer, so the build is tried again, not given up (issue 9, item 14)."""

    class DownOnce(LayoutRegistry):
        lookups = 0

        def lookup(self, key: EnvKey) -> ImageRef | None:
            self.lookups += 1
            if self.lookups == 2:  # one before the build, then the check after its failure
                raise RegistryUnavailable("registry down", endpoint="registry")
            return super().lookup(key)

    registry = DownOnce(tmp_path / "registry")
    gone = RegistryUnavailable("push failed", endpoint="registry")
    stand_in = StandInBuilder(registry, failures=[gone])
    resolver = Resolver(registry, stand_in, failures=InMemoryFailures(), retry=NO_WAIT)
    built = resolver.resolve(_spec())
    assert built is not None
    assert built.source == "built"
    assert (stand_in.calls, registry.lookups) == (2, 2)


def test_force_rebuild_builds_even_on_a_hit(tmp_path: Path) -> None:
    resolver, builder = _resolver(tmp_path)
    first = resolver.resolve(_spec())
    rebuilt = resolver.resolve(_spec(), force_rebuild=True)
    assert builder.calls == 2
    assert first is not None
    assert rebuilt is not None
    assert rebuilt.digest != first.digest
    again = resolver.resolve(_spec())
    assert again is not None
    assert again.digest == rebuilt.digest, "the same process sees the rebuilt image"
    held = LayoutRegistry(tmp_path / "registry").keys()
    assert compute_key(_spec()) in held


def test_a_failure_after_the_tag_was_written_does_not_build_again(tmp_path: Path) -> None:
    resolver, builder = _resolver(tmp_path)

    class FailsAfterPushing(StandInBuilder):
        def build(
            self, spec: EnvironmentSpec, key: EnvKey, build_id: str, on_event: OnEvent
        ) -> ImageRef:
            super().build(spec, key, build_id, on_event)
            raise EngineUnavailable("the metadata write blipped")

    flaky = FailsAfterPushing(builder.registry)
    resolver = Resolver(builder.registry, flaky, failures=InMemoryFailures(), retry=NO_WAIT)
    built = resolver.resolve(_spec())
    assert built is not None
    assert (built.source, flaky.calls) == ("built", 1)
