"""Resolve an environment to an image: lookup, and on a miss exactly one build per key.

    resolve(spec) = key → registry lookup (workspace, then global) → hit
                                                        └ miss → one build per key → ImageRef(built)

One build per key however many callers ask at once: callers in this process share the
builder's future; callers in other processes on this host wait on the key's file lock and then
find the image. A deterministic failure (unsolvable, a failing step) is remembered per key, with
its log, and returned at once to the next caller until `force_rebuild`; a transient one (engine,
registry or channel unreachable) is retried with backoff, then raised, and never remembered.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from builder.errors import BuildError, SolveError, StepFailed
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


class FailureMemory:
    """Deterministic build failures by key, on disk so that every process sees them."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def get(self, key: EnvKey) -> BuildError | None:
        """The remembered failure of `key`, rebuilt as the error it was."""
        try:
            record = json.loads((self._folder / f"{key}.json").read_text())
        except FileNotFoundError:
            return None
        kind = _DETERMINISTIC.get(record.get("kind", ""), StepFailed)
        return kind(
            f"{record['message']} (remembered from an earlier build; --force-rebuild retries)",
            build_id=record.get("build_id"),
            log_tail=record.get("log_tail", ""),
        )

    def remember(self, key: EnvKey, error: BuildError) -> None:
        """Record a deterministic failure (atomically: readers never see half a record)."""
        self._folder.mkdir(parents=True, exist_ok=True)
        record = {
            "kind": type(error).__name__,
            "message": error.message,
            "build_id": error.build_id,
            "log_tail": error.log_tail,
        }
        temp = self._folder / f".{key}.{uuid.uuid4().hex}"
        temp.write_text(json.dumps(record))
        os.replace(temp, self._folder / f"{key}.json")

    def forget(self, key: EnvKey) -> None:
        """Drop `key`'s remembered failure."""
        (self._folder / f"{key}.json").unlink(missing_ok=True)


_DETERMINISTIC: dict[str, type[BuildError]] = {c.__name__: c for c in (SolveError, StepFailed)}


class Resolver:
    """Finds or builds the image of an environment; one build per key."""

    def __init__(
        self,
        registry: Registry,
        builder: ImageBuilder,
        *,
        state: Path,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._registry = registry
        self._builder = builder
        self._locks = state / "locks"
        self._failures = FailureMemory(state / "failures")
        self._retry = retry or RetryPolicy()
        self._inflight: dict[EnvKey, Future[ImageRef]] = {}
        self._guard = threading.Lock()

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
        are `ID.2`, `ID.3`...); by default a new id is drawn."""
        key = compute_key(spec)
        emit = on_event or _ignore
        if not force_rebuild:
            hit = self._registry.lookup(key)
            if hit is not None or not build:
                return hit
            remembered = self._failures.get(key)
            if remembered is not None:
                raise remembered
        elif not build:
            return self._registry.lookup(key)
        return self._single_flight(spec, key, force_rebuild, emit, build_id or _new_id())

    def _single_flight(
        self, spec: EnvironmentSpec, key: EnvKey, force_rebuild: bool, emit: OnEvent, build_id: str
    ) -> ImageRef:
        with self._guard:
            future = self._inflight.get(key)
            leader = future is None
            if future is None:
                future = self._inflight[key] = Future()
        if not leader:
            emit("wait", f"joining the build of {key} already running in this process")
            return future.result()
        try:
            result = self._build_once(spec, key, force_rebuild, emit, build_id)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._guard:
                del self._inflight[key]

    def _build_once(
        self, spec: EnvironmentSpec, key: EnvKey, force_rebuild: bool, emit: OnEvent, build_id: str
    ) -> ImageRef:
        with self._host_lock(key, emit):
            if force_rebuild:
                self._failures.forget(key)
            else:  # another process may have built it, or failed, while we waited
                hit = self._registry.lookup(key)
                if hit is not None:
                    return hit
                remembered = self._failures.get(key)
                if remembered is not None:
                    raise remembered
            return self._build_with_retries(spec, key, emit, build_id)

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
                    self._failures.remember(key, exc)
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

    @contextmanager
    def _host_lock(self, key: EnvKey, emit: OnEvent) -> Iterator[None]:
        """One build per key on this host, across processes: an exclusive lock on a file."""
        self._locks.mkdir(parents=True, exist_ok=True)
        with open(self._locks / f"{key}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                emit("wait", f"another process is building {key}; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if that process dies
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


def _ignore(stage: str, message: str) -> None:
    """The default progress callback: nobody is listening."""
