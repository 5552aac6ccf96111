"""Real `envctl serve` and `envctl worker` processes for the service tests, and the operator's
CLI beside them.

    with Deployment(services, tmp_path) as deployment:
        alpha = deployment.workspace("alpha")          # `envctl workspace add alpha`
        server = deployment.serve()                    # `envctl serve --port P`, /healthz polled
        worker = deployment.worker(home=…, env=…)      # `envctl worker --port P`, the same way
        with EnvctlClient(server.url, alpha.token, workspace=alpha.name) as envctl: ...
        server.kill()                                  # kill -9, mid-build if you like
        server.start()                                 # the same port, database and home

A deployment is what an operator runs: one database (a SQLite file, or a fresh PostgreSQL
database of its own), fresh namespaces in both real registries (so no test sees another's
images) and any number of server processes on loopback ports. Every process gets the same
environment, with one addition: a proxy on a closed loopback port for every host but loopback,
so that nothing a test sends (a base image named by a generated spec, say) leaves this machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from cli import main as cli
from tests.conftest import Services
from tests.registry.servers import free_port

ENVCTL = str(Path(sys.executable).parent / "envctl")
READY_SECONDS = 30.0  # from exec to a /healthz answer (imports, database, uvicorn)
STOP_SECONDS = 15.0  # SIGTERM to exit: uvicorn's graceful shutdown is 5 s
T = TypeVar("T")


def until(what: str, probe: Callable[[], T | None], *, seconds: float = 60.0) -> T:
    """Ask `probe` until it answers something other than None; fail naming `what` when
    `seconds` pass first. The bounded wait of these tests: never a fixed sleep."""
    deadline = time.monotonic() + seconds
    while True:
        answer = probe()
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)  # the interval of a bounded poll


@dataclass(frozen=True)
class Tenant:
    """A workspace and the first token `envctl workspace add` printed for it."""

    name: str
    token: str


class EnvctlServer:
    """One `envctl serve` (or `envctl worker`: `command`) process; started, killed and started
    again on one port."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log: Path,
        *,
        command: str = "serve",
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.command = command
        self.args = list(args)
        self.env = dict(env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait: bool = True) -> EnvctlServer:
        """Start the process and (unless told not to) wait, bounded, until `/healthz` answers
        200. Starting takes seconds (imports): start several, then `wait_healthy` each."""
        assert self.process is None, f"server {self.name} is already running"
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [ENVCTL, self.command, "--host", "127.0.0.1", "--port", str(self.port), *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest is not its signal
            )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, seconds: float = READY_SECONDS) -> None:
        """Poll `/healthz` until it answers 200; fail with the server's log if the process
        exits or the deadline passes first."""
        deadline = time.monotonic() + seconds
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as http:
            while True:
                if self.process is None or self.process.poll() is not None:
                    pytest.fail(f"envctl {self.command} ({self.name}) exited:\n{self.log_tail()}")
                try:
                    if http.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"envctl {self.command} ({self.name}) not healthy in {seconds} s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.05)  # poll interval of a bounded readiness wait

    @property
    def pid(self) -> int:
        """The running process's id (what the builds it runs are owned by)."""
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def kill(self) -> None:
        """kill -9: no shutdown, no requeue, connections dropped."""
        process = self._take()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=STOP_SECONDS)

    def stop(self) -> None:
        """SIGTERM and wait for the exit (SIGKILL if it does not come)."""
        if self.process is None:
            return
        process = self._take()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=STOP_SECONDS)

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's output, for failure messages."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _take(self) -> subprocess.Popen[bytes]:
        assert self.process is not None, f"server {self.name} is not running"
        process, self.process = self.process, None
        return process


class Deployment:
    """Servers sharing one database, one envctl environment and fresh registry namespaces."""

    def __init__(
        self,
        services: Services,
        root: Path,
        *,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.services = services
        self.root = root
        self.namespace = f"api-{uuid.uuid4().hex[:12]}"
        self.database_url = database_url or f"sqlite:///{root / 'envctl.db'}"
        self.workspace_registry = f"{services.workspace_registry}/{self.namespace}"
        self.global_registry = f"{services.global_registry}/{self.namespace}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "config").mkdir(exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ENVCTL_")},
            "ENVCTL_DATABASE_URL": self.database_url,
            "ENVCTL_HOME": str(root / "home"),
            "ENVCTL_WORKSPACE_REGISTRY": self.workspace_registry,
            "ENVCTL_GLOBAL_REGISTRY": self.global_registry,
            "ENVCTL_CHANNELS": services.channels,
            "ENVCTL_BUILD_NETWORK": "none",
            "ENVCTL_ALLOWED_BASE_REGISTRIES": services.base_registry,
            "DOCKER_HOST": services.docker_host,
            "XDG_CONFIG_HOME": str(root / "config"),  # no user config file
            **_loopback_only(),
            **(env or {}),
        }
        self.servers: list[EnvctlServer] = []

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server (their builds go back to the queue of a database that is thrown
        away with the test)."""
        for server in self.servers:
            server.stop()

    def serve(
        self,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        wait: bool = True,
    ) -> EnvctlServer:
        """Start one more server on this deployment's database; `env` adds to its environment
        and `home` gives it an ENVCTL_HOME of its own (another host, as far as files go).
        `wait=False`: started, not yet waited for (see `EnvctlServer.start`)."""
        name = name or f"server-{len(self.servers) + 1}"
        extra = dict(env or {})
        if home is not None:
            extra["ENVCTL_HOME"] = str(home)
        server = EnvctlServer(name, {**self.env, **extra}, self.root / f"{name}.log")
        self.servers.append(server)
        return server.start(wait=wait)

    def worker(
        self,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        wait: bool = True,
        args: Sequence[str] = (),
    ) -> EnvctlServer:
        """Start an `envctl worker` on this deployment's database, as `serve` starts a server
        (its /healthz is polled the same way); `env` may give it an engine of its own
        (DOCKER_HOST), `home` its own ENVCTL_HOME (layer cache, build folders), `args` more
        options."""
        name = name or f"worker-{len(self.servers) + 1}"
        extra = dict(env or {})
        if home is not None:
            extra["ENVCTL_HOME"] = str(home)
        worker = EnvctlServer(
            name, {**self.env, **extra}, self.root / f"{name}.log", command="worker", args=args
        )
        self.servers.append(worker)
        return worker.start(wait=wait)

    def envctl(self, *args: str, stdin: str | None = None) -> str:
        """Run an envctl command with this deployment's environment (and database), `stdin`
        as its input; its stdout. In process, through the same typer app as the console
        script: a new Python would spend two seconds importing envctl for each command."""
        result = CliRunner().invoke(cli.app, list(args), env=self.env, input=stdin)
        if result.exit_code != 0:
            pytest.fail(
                f"envctl {' '.join(args)} exited {result.exit_code}:\n"
                f"{result.stdout}\n{result.stderr}\n{result.exception!r}",
            )
        return result.stdout

    def workspace(self, name: str, *, registry: str | None = None) -> Tenant:
        """`envctl workspace add NAME [--registry R]`; its token is the last line printed."""
        args = ["workspace", "add", name] + (["--registry", registry] if registry else [])
        out = self.envctl(*args)
        return Tenant(name, _secret(out))

    def token(self, workspace: str | None) -> tuple[str, str]:
        """`envctl token add WS` (or `--admin` for None): (token id, secret)."""
        out = self.envctl("token", "add", *([workspace] if workspace else ["--admin"]))
        found = re.search(r"token (\S+) \(", out)
        assert found is not None, f"no token id in {out!r}"
        return found.group(1), _secret(out)

    def revoke(self, token_id: str) -> None:
        """`envctl token revoke ID`."""
        self.envctl("token", "revoke", token_id)


def tenant_client(server: EnvctlServer, tenant: Tenant, timeout: float = 60.0) -> httpx.Client:
    """An HTTP client of `server` with `tenant`'s token (no proxy from the environment)."""
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tenant.token}"},
        timeout=timeout, trust_env=False,
    )  # fmt: skip


def build_outcome(
    server: EnvctlServer, tenant: Tenant, build_id: str, *, seconds: float = 180.0
) -> dict[str, Any]:
    """The build's view once it is over (succeeded or failed), waited for with `?wait=`."""
    with tenant_client(server, tenant) as http:

        def over() -> dict[str, Any] | None:
            answer = http.get(f"/v1/workspaces/{tenant.name}/builds/{build_id}", params={"wait": 5})
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body if body["status"] in ("succeeded", "failed") else None

        return until(f"build {build_id}", over, seconds=seconds)


def built_log(server: EnvctlServer, tenant: Tenant, spec: str) -> list[str]:
    """Resolve `spec` as `tenant`, wait for its build to succeed, and return its log's lines
    as the workspace is shown them."""
    with tenant_client(server, tenant, timeout=120.0) as http:
        answer = http.post(f"/v1/workspaces/{tenant.name}/resolve",
                           json={"spec": spec, "name": "env.yml"})  # fmt: skip
        assert answer.status_code == 202, answer.text
        build_id = answer.json()["build_id"]
        outcome = build_outcome(server, tenant, build_id)
        assert outcome["status"] == "succeeded", outcome
        logs = http.get(f"/v1/workspaces/{tenant.name}/builds/{build_id}/logs",
                        params={"follow": "false"})  # fmt: skip
    return [
        json.loads(line[5:])["text"] for line in logs.text.splitlines()
        if line.startswith("data:") and '"seq"' in line
    ]  # fmt: skip


def _secret(out: str) -> str:
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert lines, f"no token printed: {out!r}"
    return lines[-1]


def _loopback_only() -> dict[str, str]:
    """Proxy settings that send every host but loopback to a closed loopback port: a request
    that would leave the machine fails at once (RegistryUnavailable) instead."""
    trap = f"http://127.0.0.1:{free_port()}"
    bypass = "127.0.0.1,localhost,::1"
    return {
        "HTTP_PROXY": trap,
        "HTTPS_PROXY": trap,
        "ALL_PROXY": trap,
        "http_proxy": trap,
        "https_proxy": trap,
        "all_proxy": trap,
        "NO_PROXY": bypass,
        "no_proxy": bypass,
    }


@contextmanager
def postgres_database(url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database next to the one `url` names (the test role may create
    databases); its SQLAlchemy URL. Dropped afterwards, whoever is still connected."""
    base = make_url(url)
    name = f"envctl_test_{uuid.uuid4().hex[:12]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
