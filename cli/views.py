"""How envctl's results read in a terminal: explain, inspect and progress (rich markup)."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from client.models import BuildView, LogEventView
from hashing import EnvironmentSpec, EnvKey, canonical_inputs
from hashing.explain import describe, diff
from registry.metadata import EnvMetadata


def explain_one(out: Console, path: str, spec: EnvironmentSpec, key: EnvKey, as_json: bool) -> None:
    """The canonical inputs behind one key."""
    if as_json:
        body = {"spec": path, "key": key, "pinned": spec.pinned}
        print(json.dumps({**body, "inputs": canonical_inputs(spec)}, indent=2))
        return
    out.print(f"[bold]{key}[/bold]  {escape(path)}")
    for name, lines in describe(spec):
        label = f"[cyan]{name}[/cyan]"
        if not lines:
            out.print(f"  {label}: [dim](none)[/dim]")
        elif len(lines) == 1 and name in ("base_image", "platform"):
            out.print(f"  {label}: {escape(lines[0])}")
        else:
            out.print(f"  {label}:")
            for line in lines:
                out.print(f"    {escape(line)}")


def explain_two(
    out: Console,
    left: tuple[str, EnvironmentSpec, EnvKey],
    right: tuple[str, EnvironmentSpec, EnvKey],
    as_json: bool,
) -> None:
    """Which inputs differ between two specs, or "same key"."""
    (lpath, lspec, lkey), (rpath, rspec, rkey) = left, right
    differences = diff(lspec, rspec)
    if as_json:
        print(
            json.dumps(
                {
                    "same_key": lkey == rkey,
                    "left": {"spec": lpath, "key": lkey},
                    "right": {"spec": rpath, "key": rkey},
                    "differences": [
                        {"input": d.input, "left": list(d.left), "right": list(d.right)}
                        for d in differences
                    ],
                },
                indent=2,
            )
        )
        return
    if lkey == rkey:
        out.print(f"same key {lkey}")
        return
    out.print(f"[red]-[/red] {lkey}  {escape(lpath)}")
    out.print(f"[green]+[/green] {rkey}  {escape(rpath)}")
    for d in differences:
        out.print(f"  [cyan]{d.input}[/cyan]:")
        for line in d.left:
            out.print(f"    [red]- {escape(line)}[/red]")
        for line in d.right:
            out.print(f"    [green]+ {escape(line)}[/green]")


def metadata(out: Console, metadata: EnvMetadata) -> None:
    """What is stored with an image: facts, then each recorded file."""
    out.print(f"[bold]{metadata.key}[/bold]")
    for name, value in sorted(metadata.facts.items()):
        out.print(f"  [cyan]{name}[/cyan]: {escape(str(value))}")
    for title, text in (
        ("spec", metadata.spec_json),
        ("Dockerfile", metadata.dockerfile),
        ("conda lock", metadata.lock),
        ("pip lock", metadata.pip_lock),
        ("build log", metadata.build_log),
    ):
        if text:
            out.print(f"[cyan]{title}[/cyan]:")
            out.print(escape(text.rstrip("\n")))


def prewarm_progress(err: Console, spec: str, stage: str, message: str) -> None:
    """Prewarm's progress: stages only (interleaved build logs would help nobody)."""
    if stage != "log":
        err.print(f"[bold]{escape(spec)}[/bold] {stage} {escape(message)}")


def progress(err: Console, stage: str, message: str) -> None:
    """Resolve's progress on stderr: stages bold, the build log as it streams."""
    if stage == "log":
        err.print(f"  {escape(message)}", style="dim")
    else:
        err.print(f"[bold]{stage}[/bold] {escape(message)}")


def build_status(err: Console, build: BuildView) -> None:
    """A build's outcome, after its log."""
    took = f" in {build.running_seconds:.1f} s" if build.running_seconds is not None else ""
    if build.status == "succeeded":
        err.print(f"[green]succeeded[/green]{took}: {escape(build.image or '')}")
    elif build.status == "failed":
        err.print(f"[red]failed[/red]{took} ({build.failure_class}): {escape(build.message or '')}")
    else:
        where = f", position {build.position} in the queue" if build.position else ""
        err.print(f"{build.status}{where}")


class LiveProgress:
    """Resolve's progress on stderr: the build log as it streams and, on a terminal, a status
    line below it with the current stage and how long the build has run."""

    def __init__(self, err: Console, spec: str) -> None:
        self._err = err
        self._spec = spec
        self._status: Status | None = None
        self._stage = "resolving"
        self._started = time.monotonic()

    def __enter__(self) -> LiveProgress:
        if self._err.is_terminal:
            self._status = self._err.status(self._text())
            self._status.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._status is not None:
            self._status.stop()

    def __call__(self, event: LogEventView) -> None:
        progress(self._err, event.stage, event.text)
        if event.stage != "log":
            self._stage = event.stage
        if self._status is not None:
            self._status.update(self._text())

    def _text(self) -> str:
        seconds = time.monotonic() - self._started
        return f"[bold]{escape(self._spec)}[/bold]: {self._stage} ({seconds:.0f} s)"
