"""Faults under running builds and waiting clients (issue 9, items 10 to 12): the real
PostgreSQL taken away (fast shutdown) under one server and under two, and an embedded builder
killed with a second embedded waiter. Every client ends with its answer or a classified error,
never a traceback, and the database ends with nothing running or queued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.api.server import Deployment, postgres_database, until
from tests.conftest import ROOT, Services
from tests.streams import Lines

ENVCTL = str(Path(sys.executable).parent / "envctl")
STEP_RUNNING = "step running"  # what each build's step prints (its Dockerfile line does not)
OUTAGE_SECONDS = 15.0
CLIENT_SECONDS = 240.0


def _spec(folder: Path, services: Services, name: str, seconds: int = 4) -> Path:
    """A spec whose one step runs for `seconds` (so a fault can come while it runs)."""
    path = folder / f"{name}.yml"
    path.write_text(
        f"base_image: {services.busybox_image}\ndocker_steps: |\n"
        f"  RUN printf 'step %s\\n' running && sleep {seconds}"
        f" && echo {uuid.uuid4().hex} > /marker\n"
    )
    return path


class Client:
    """One `envctl resolve --json SPEC`, as a user runs it, with its stdout and stderr each
    read on a thread of their own as they come: `communicate()` would read stderr too, and
    every chunk it took would be missing from what the test reads."""

    def __init__(self, env: dict[str, str], spec: Path) -> None:
        self.process = subprocess.Popen(
            [ENVCTL, "resolve", "--json", str(spec)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.stdout = Lines(self.process.stdout)
        self.stderr = Lines(self.process.stderr)

    def finish(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once it exits by itself."""
        try:
            self.process.wait(timeout=CLIENT_SECONDS)  # both pipes are drained: no deadlock
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"a client still waited after {CLIENT_SECONDS} s:\n{self.stderr.text()}")
        return self.process.returncode, self.stdout.text(), self.stderr.text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def _statuses(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, count(*) FROM builds GROUP BY status"))
            return {status: count for status, count in rows}
    finally:
        engine.dispose()


def _postgres(action: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "postgres", action],
                   check=True, capture_output=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("servers", [1, 2])
def test_a_postgres_outage_under_builds_leaves_nothing_stuck_and_every_client_answered(
    services: Services, tmp_path: Path, servers: int
) -> None:
    with (
        postgres_database(services.database_url) as url,
        Deployment(services, tmp_path / "deployment", database_url=url) as deployment,
    ):
        started = [deployment.serve(name=f"server-{n}") for n in range(servers)]
        tenant = deployment.workspace("outage")
        specs = [_spec(tmp_path, services, name, seconds=8) for name in ("one", "two")]
        clients = [
            Client(
                {
                    **deployment.env,
                    "ENVCTL_URL": started[n % servers].url,
                    "ENVCTL_TOKEN": tenant.token,
                    "ENVCTL_WORKSPACE": tenant.name,
                },
                specs[n % 2],
            )
            for n in range(6)
        ]
        try:
            for client in clients:
                assert client.stderr.wait_for(STEP_RUNNING, timeout=120), client.stderr.text()
            _postgres("stop")
            stopped = time.monotonic()
            try:
                # both builds run into the outage: their log lines can no longer be written
                server_logs = [server.log for server in started]
                until(
                    "both builds to fail under the outage",
                    lambda: (
                        sum(
                            p.read_text(errors="replace").count("the database failed under it")
                            for p in server_logs
                        )
                        >= 2
                        or None
                    ),
                    seconds=60,
                )
                # the rest of the outage's length: the fault itself, not a synchronisation
                time.sleep(max(0.0, stopped + OUTAGE_SECONDS - time.monotonic()))
            finally:
                _postgres("start")
            answers = [client.finish() for client in clients]
        finally:
            for client in clients:
                client.kill()
        for code, out, err in answers:
            assert "Traceback" not in err, err
            assert code == 0, f"exit {code}:\n{err}"
            assert json.loads(out)["image"], out
        assert set(_statuses(url)) <= {"succeeded", "failed"}, _statuses(url)
        assert _statuses(url).get("succeeded", 0) >= 2


def test_an_embedded_waiter_runs_the_build_its_killed_builder_left(
    services: Services, tmp_path: Path
) -> None:
    """Two embedded CLIs on one SQLite file join one build; the one building is killed -9:
    the other puts the build back in the queue, runs it itself and gets the image."""
    database = tmp_path / "envctl.db"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ENVCTL_")},
        "ENVCTL_WORKSPACE_REGISTRY": f"{services.workspace_registry}/kill-{uuid.uuid4().hex[:12]}",
        "ENVCTL_HOME": str(tmp_path / "home"),
        "ENVCTL_DATABASE_URL": f"sqlite:///{database}",
        "ENVCTL_CHANNELS": services.channels,
        "ENVCTL_BUILD_NETWORK": "none",
        "DOCKER_HOST": services.docker_host,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    # long enough for the waiter to start and join while the step still runs
    spec = _spec(tmp_path, services, "killed", seconds=12)
    builder = Client(env, spec)
    waiter = None
    try:
        assert builder.stderr.wait_for(STEP_RUNNING, timeout=120), builder.stderr.text()
        waiter = Client(env, spec)  # joins the running build and follows its log
        assert waiter.stderr.wait_for(STEP_RUNNING, timeout=60), waiter.stderr.text()
        builder.kill()
        code, out, err = waiter.finish()
    finally:
        builder.kill()
        if waiter is not None:
            waiter.kill()
    assert "Traceback" not in err, err
    assert code == 0, f"exit {code}:\n{err}"
    assert json.loads(out)["source"] == "built", out
    assert "queued again" in err, err
    assert set(_statuses(f"sqlite:///{database}")) == {"succeeded"}


def test_a_client_finishes_with_every_line_of_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests' own reader: `communicate()` beside a line reader on stderr once lost about
    half of what a child wrote (and the embedded waiter's "queued again" with it)."""
    lines = 2000  # each written and flushed on its own, as envctl writes its log lines
    fake = tmp_path / "envctl"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"for n in range({lines}):\n    print(f'line {{n}}', file=sys.stderr, flush=True)\n"
        "print('{}')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sys.modules[__name__], "ENVCTL", str(fake))
    code, out, err = Client(dict(os.environ), tmp_path / "spec.yml").finish()
    assert (code, out) == (0, "{}\n"), err
    assert err.splitlines() == [f"line {n}" for n in range(lines)]
