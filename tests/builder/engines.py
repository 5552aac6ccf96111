"""A throwaway Docker engine, for tests that must break one; no mocks.

    with throwaway_engine() as engine:   # dockerd on /tmp/envctl-e-XXXXXXXX/docker.sock
        engine.docker_host               # for DOCKER_HOST
        engine.kill()                    # SIGKILL it, with its containerd, shims and containers
        engine.start()                   # again, on the same folders
    # stopped, its mounts undone and its folder removed

It is started the way `scripts/services` starts the shared engine: no bridge, no iptables, a
socket, data root and exec root of its own, an empty config file, stdin from /dev/null, output to
a log, a session of its own. The folder is short and under /tmp because a unix socket's path may
not exceed 107 bytes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

START_TIMEOUT = 30.0  # seconds for the socket to answer
STOP_TIMEOUT = 20.0  # seconds between TERM and KILL (dockerd gives containers 15 s)
GONE_TIMEOUT = 10.0  # seconds for killed processes to disappear
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes, with the terminating NUL
_LOG_TAIL = 2000  # characters of the log shown when the engine does not come up


class ThrowawayEngine:
    """A dockerd of the test's own in `folder`: started, killed and restarted on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        if len(str(self.socket).encode()) > _SOCKET_PATH_MAX:
            raise ValueError(f"{self.socket} is longer than a unix socket path may be")
        self.log = folder / "dockerd.log"
        self.driver: str | None = None  # chosen on the first start, kept for the data root
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        """The engine's address, as DOCKER_HOST takes it."""
        return f"unix://{self.socket}"

    @property
    def running(self) -> bool:
        """Whether the dockerd this object started is still alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start dockerd and wait until its socket answers; fail with the log's tail otherwise.

        The first start tries overlay2, then vfs if overlay2 cannot work here (nested overlay);
        later starts keep the driver the data root was made with.
        """
        if self.running:
            raise RuntimeError("the engine is already running")
        problem: str | None = "was not started"
        for driver in [self.driver] if self.driver else ["overlay2", "vfs"]:
            problem = self._start(driver)
            if problem is None:
                self.driver = driver
                return
            self._kill_all()
            if "not supported" not in self._log_tail():
                break  # not the storage driver's problem: vfs would not help
        pytest.fail(f"the throwaway engine in {self.folder} {problem}:\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL dockerd and everything it runs (containerd, shims, containers); wait for them."""
        self._kill_all()

    def stop(self) -> None:
        """SIGTERM dockerd, then SIGKILL whatever is left of it after STOP_TIMEOUT."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            with suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=STOP_TIMEOUT)
        self._kill_all()  # after a clean exit too: shims and containers may outlive dockerd

    def remove(self) -> None:
        """Stop the engine, undo its mounts (dockerd leaves some behind) and delete its folder."""
        self.stop()
        for mount in _mounts_under(self.folder):
            # lazily, like scripts/services: nothing under the folder is in use any more
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        left = _mounts_under(self.folder)
        if left:
            pytest.fail(f"cannot unmount {left}; not deleting {self.folder}")
        shutil.rmtree(self.folder)

    def _start(self, driver: str) -> str | None:
        """Start dockerd with `driver`; None once it answers, else what went wrong."""
        (self.folder / "daemon.json").write_text("{}\n")
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    "dockerd",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    f"--storage-driver={driver}",
                    "-H",
                    self.docker_host,
                    "--data-root",
                    str(self.folder / "data"),
                    "--exec-root",
                    str(self.folder / "exec"),
                    "-p",
                    str(self.folder / "docker.pid"),
                    "--config-file",
                    str(self.folder / "daemon.json"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,  # as setsid in scripts/services: not our process group
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            )
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), timeout=2) as ping:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    return f"exited ({self._process.returncode}) while starting"
                with suppress(httpx.TransportError):
                    if ping.get("http://docker/_ping").text == "OK":
                        return None
                time.sleep(0.05)  # polling interval, not a guess at readiness
        return f"did not answer on {self.socket} within {START_TIMEOUT:g} s"

    def _kill_all(self) -> None:
        """SIGKILL dockerd and every process of this engine, and wait until they are gone.

        containerd runs in a session of its own and the shims re-parent themselves away from
        it, so neither the process group nor dockerd's descendants reach them all: this engine's
        processes are dockerd's descendants and whatever names the folder on its command line
        (containerd's config, a shim's containerd address), with their descendants (containers).
        """
        pids = _engine_pids(self._process.pid if self._process else None, self.folder)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._process is not None:
            with suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=GONE_TIMEOUT)
        # Gone means reaped, not merely dead: dockerd 20.10 takes the pid in containerd.pid for
        # a running containerd while kill(pid, 0) succeeds, which it does for a zombie, and then
        # waits in vain for its socket. The orphans are PID 1's to reap (here: every ~2 s).
        deadline = time.monotonic() + GONE_TIMEOUT
        while (left := [pid for pid in pids if _exists(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling interval, not a guess
        if left:
            pytest.fail(f"processes {left} of the engine in {self.folder} were not reaped")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-_LOG_TAIL:]
        except FileNotFoundError:
            return "(no log)"


@contextmanager
def throwaway_engine() -> Iterator[ThrowawayEngine]:
    """A started throwaway engine in a fresh folder under /tmp; removed afterwards, always."""
    engine = ThrowawayEngine(Path(tempfile.mkdtemp(prefix="envctl-e-", dir="/tmp")))
    try:
        engine.start()
        yield engine
    finally:
        engine.remove()


def _engine_pids(root: int | None, folder: Path) -> list[int]:
    """`root`, the processes naming `folder` on their command line, and all their descendants."""
    marker = f"{folder}/".encode()
    children: dict[int, list[int]] = {}
    found: set[int] = set() if root is None else {root}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # it ended while we looked
        # the parent pid is the second field after "(comm)"; comm may hold spaces and parentheses
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(pid)
        if marker in cmdline and pid != os.getpid():
            found.add(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def _exists(pid: int) -> bool:
    """The process exists, running or a zombie not reaped yet."""
    return Path(f"/proc/{pid}").exists()


def _mounts_under(folder: Path) -> list[Path]:
    """The mount points at or below `folder`, deepest first."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        # /proc/mounts escapes space, tab, newline and backslash as octal
        point = line.split()[1].encode().decode("unicode_escape")
        if point == str(folder) or point.startswith(f"{folder}/"):
            points.append(Path(point))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)
