"""Prewarm: resolve many specs at once, so that images exist before anyone waits for them.

CI runs `envctl prewarm specs/*.yml` after a change to environment files: each spec is resolved
(a hit, a promotion or a build, one build per key however many specs share it), `concurrency` at
a time, and a summary says what happened to each. One spec failing does not stop the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from hashing import EnvctlError
from registry.base import ImageRef


@dataclass(frozen=True)
class Outcome:
    """What happened to one spec: its image, or the error that stopped it."""

    spec: str
    seconds: float
    image: ImageRef | None = None
    error: EnvctlError | None = None

    def as_json(self) -> dict[str, Any]:
        """The shape `envctl prewarm --json` prints per spec."""
        body: dict[str, Any] = {"spec": self.spec, "seconds": round(self.seconds, 3)}
        if self.image is not None:
            body |= self.image.as_json()
        if self.error is not None:
            body |= {"error": str(self.error), "error_class": type(self.error).__name__}
        return body


def prewarm(
    specs: Sequence[str], resolve: Callable[[str], ImageRef], *, concurrency: int
) -> list[Outcome]:
    """Resolve every spec, `concurrency` at a time; outcomes in the order of `specs`."""

    def one(spec: str) -> Outcome:
        started = time.monotonic()
        try:
            image = resolve(spec)
        except EnvctlError as exc:
            return Outcome(spec, time.monotonic() - started, error=exc)
        except Exception as exc:
            error = EnvctlError(f"unexpected {type(exc).__name__}: {exc}")
            return Outcome(spec, time.monotonic() - started, error=error)
        return Outcome(spec, time.monotonic() - started, image=image)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, specs))


def summary(outcomes: Sequence[Outcome]) -> Table:
    """A table a person reads at the end of a CI log."""
    table = Table(title="envctl prewarm", title_justify="left")
    for column in ("spec", "key", "result", "seconds", "image or error"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        if outcome.image is not None:
            ref = outcome.image
            table.add_row(outcome.spec, ref.key, ref.source, f"{outcome.seconds:.1f}", ref.image)
        else:
            message = str(outcome.error).splitlines()[0] if outcome.error else ""
            table.add_row(outcome.spec, "", "[red]failed[/red]", f"{outcome.seconds:.1f}", message)
    return table
