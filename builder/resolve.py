"""Resolve an environment to an image: lookup, and on a miss a build.

    resolve(spec) = key → registry lookup (workspace, then global) → hit
                        └ miss → remembered failure? → build (transient failures retried)

A deterministic failure (unsolvable, a failing step) is remembered per key, with its log, in a
`FailureMemory`, and returned at once to the next caller until `force_rebuild`; a transient one
(engine, registry or channel unreachable) is retried with backoff, then raised, and never
remembered. The service keeps the memory in its database (`service.store`), so that every
worker and server gives the same answer for a key, whichever host asks.

One build per key is the caller's to ensure, where it can be ensured across hosts: the
service's build store holds one active build per workspace and key, claimed by one worker.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from builder.errors import BuildError, LayerError, SolveError, StepFailed
from hashing import EnvironmentSpec, EnvKey, compute_key
from registry.base import ImageRef, Registry
from registry.errors import RegistryAuthError, RegistryError, RegistryUnavailable

OnEvent = Callable[[str, str], None]
"""Progress: `on_event(stage, message)`; stage is solve, install, build, push, log or wait."""


class ImageBuilder(Protocol):
    """Builds a key's image and registers it in the workspace (image tag first, then metadata)."""

    def build(
        self, spec: EnvironmentSpec, key: EnvKey, build_id: str, on_event: OnEvent
    ) -> ImageRef:
        """Build, push and register; raise BuildError (or RegistryError) on failure."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient build failures are retried."""

    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0

    def delays(self) -> Iterator[float]:
        """Seconds to wait before each retry (jittered exponential backoff)."""
        for attempt in range(self.attempts - 1):
            base = min(self.max_backoff, self.backoff * 2**attempt)
            yield base * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret


@dataclass(frozen=True)
class RememberedFailure:
    """A deterministic failure as it is remembered: its class name, message, build and log."""

    kind: str
    message: str
    build_id: str | None = None
    log_tail: str = ""

    @classmethod
    def of(cls, error: BuildError) -> RememberedFailure:
        """The failure `error` is, to remember."""
        return cls(type(error).__name__, error.message, error.build_id, error.log_tail)

    def error(self) -> BuildError:
        """The remembered failure raised again, as the error it was."""
        kind = _DETERMINISTIC.get(self.kind, StepFailed)
        return kind(
            f"{self.message} (remembered from an earlier build; --force-rebuild retries)",
            build_id=self.build_id,
            log_tail=self.log_tail,
        )


class FailureMemory(Protocol):
    """Deterministic failures by key (the service's: in its database, `service.store`)."""

    def get(self, key: EnvKey) -> RememberedFailure | None:
        """The remembered failure of `key`, if any."""
        ...

    def remember(self, key: EnvKey, failure: RememberedFailure) -> None:
        """Remember `key`'s failure (replacing an older one)."""
        ...

    def forget(self, key: EnvKey) -> None:
        """Drop `key`'s remembered failure."""
        ...


class InMemoryFailures:
    """A FailureMemory of this process alone (a Resolver used on its own, and tests)."""

    def __init__(self) -> None:
        self._failures: dict[EnvKey, RememberedFailure] = {}
        self._guard = threading.Lock()

    def get(self, key: EnvKey) -> RememberedFailure | None:
        with self._guard:
            return self._failures.get(key)

    def remember(self, key: EnvKey, failure: RememberedFailure) -> None:
        with self._guard:
            self._failures[key] = failure

    def forget(self, key: EnvKey) -> None:
        with self._guard:
            self._failures.pop(key, None)


_DETERMINISTIC: dict[str, type[BuildError]] = {
    c.__name__: c for c in (SolveError, StepFailed, LayerError)
}


class Resolver:
    """Finds or builds the image of an environment."""

    def __init__(
        self,
        registry: Registry,
        builder: ImageBuilder,
        *,
        failures: FailureMemory,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._registry = registry
        self._builder = builder
        self._failures = failures
        self._retry = retry or RetryPolicy()

    def resolve(
        self,
        spec: EnvironmentSpec,
        *,
        build: bool = True,
        force_rebuild: bool = False,
        on_event: OnEvent | None = None,
        build_id: str | None = None,
    ) -> ImageRef | None:
        """The image of `spec` (its base image already pinned); None only when `build` is
        False and no registry has it. `build_id` names the build, if one runs (its retries
        are `ID.2`, `ID.3`...); by default a new id is drawn. `force_rebuild` forgets a
        remembered failure and builds, even on a hit."""
        key = compute_key(spec)
        if not build:
            return self._registry.lookup(key)
        if force_rebuild:
            self._failures.forget(key)
        else:
            hit = self._registry.lookup(key)
            if hit is not None:
                return hit
            remembered = self._failures.get(key)
            if remembered is not None:
                raise remembered.error()
        return self._build_with_retries(spec, key, on_event or _ignore, build_id or _new_id())

    def _build_with_retries(
        self, spec: EnvironmentSpec, key: EnvKey, emit: OnEvent, first_id: str
    ) -> ImageRef:
        delays = self._retry.delays()
        attempt = 0
        while True:
            attempt += 1
            build_id = first_id if attempt == 1 else f"{first_id}.{attempt}"
            try:
                return replace(self._builder.build(spec, key, build_id, emit), source="built")
            except BuildError as exc:
                if exc.deterministic:
                    self._failures.remember(key, RememberedFailure.of(exc))
                    raise
                error: Exception = exc
            except RegistryAuthError:
                raise  # retrying refused credentials only locks the account
            except RegistryError as exc:
                error = exc
            try:
                hit = self._registry.lookup(key)
            except RegistryUnavailable:
                hit = None  # still down: the retry below finds out again
            if hit is not None:  # it failed after its tag was written: that image stands
                return replace(hit, source="built", build_id=build_id)
            delay = next(delays, None)
            if delay is None:
                raise error
            reason = error.message if isinstance(error, BuildError | RegistryError) else error
            emit("retry", f"{reason}; retrying in {delay:.1f} s")
            time.sleep(delay)  # backoff between attempts, not synchronisation


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


def _ignore(stage: str, message: str) -> None:
    """The default progress callback: nobody is listening."""
