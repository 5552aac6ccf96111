"""Run the docker steps of a build on a Docker engine, through the docker SDK (the classic
builder), and what else envctl asks of an engine (a base image's python, loading an image).

    DockerBuilder.build(dir, tag=…)    -> image id; the log goes to on_log line by line
    DockerBuilder.push(tag)            -> manifest digest
    DockerBuilder.remove(tag)          best effort

Failures raise the builder's errors (builder.errors): a failing step is StepFailed with the tail
of the log and leaves no tag (containers are always removed: rm + forcerm); running past the time
limit is BuildTimeout, after the build is cancelled and its container is confirmed gone; an
engine that cannot be reached is EngineUnavailable. Nothing runs privileged: the classic builder
has no such option.

The engine is spoken to at API 1.41 (Docker 20.10, the oldest supported; newer engines accept
it), so creating a DockerBuilder does no I/O. `/build` is posted on the SDK's own session rather
than through `APIClient.build`, which cannot pass cpuquota/cpuperiod and hides the HTTP response
whose connection must be shut down to cancel a build.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import docker
import docker.auth
import docker.errors
import requests

from builder.deadline import Canceller, DeadlineReader, Expired, context_tar
from builder.errors import BuildError, BuildTimeout, EngineUnavailable, StepFailed
from builder.stream import JsonLog, OnLog
from registry.auth import Credentials
from registry.errors import RegistryAuthError, RegistryUnavailable

API_VERSION = "1.41"
Network = Literal["none", "host", "default"]

_API_TIMEOUT = 60  # seconds, for calls other than the build stream (inspect, push reads, remove)
_CPU_PERIOD = 100_000  # µs; `cpus=N` is a quota of N periods per period, as `docker run --cpus`
_CANCEL_GRACE = 15.0  # seconds for the engine to kill and remove a cancelled build's container


# How the engine words a registry it cannot reach, or one that refuses it, in its streams.
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "connection reset")
_REFUSED = ("unauthorized", "denied", "authentication required")


class DockerBuilder:
    """Builds, pushes and removes images on one Docker engine. Safe to share between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        memory: int | None,
        cpus: float | None,
        network: Network,
        pull: bool = False,
        cgroup_parent: str | None = None,
    ) -> None:
        """`timeout`: seconds a build may run; `memory` (bytes, no swap on top) and `cpus` limit
        each RUN; `network` is the RUNs' network; `pull` pulls the base even when present;
        `cgroup_parent` is the cgroup the RUNs' containers are made in (the classic builder
        has no pids limit of its own: a pids.max on that cgroup bounds them all)."""
        self.base_url = base_url
        self.timeout = timeout
        self._params: dict[str, Any] = {"rm": 1, "forcerm": 1, "pull": int(pull)}
        self._params["networkmode"] = network
        if memory is not None:
            self._params |= {"memory": memory, "memswap": memory}
        if cpus is not None:
            self._params |= {"cpuperiod": _CPU_PERIOD, "cpuquota": round(cpus * _CPU_PERIOD)}
        if cgroup_parent:
            self._params["cgroupparent"] = cgroup_parent
        self._api = docker.APIClient(base_url=base_url, version=API_VERSION, timeout=_API_TIMEOUT)

    def close(self) -> None:
        """Close the connections to the engine."""
        self._api.close()

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers."""
        try:
            self._api.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineUnavailable(f"the Docker engine at {self.base_url}: {exc}") from exc

    def build(
        self,
        context_dir: Path,
        *,
        tag: str,
        labels: Mapping[str, str],
        on_log: OnLog,
        build_id: str | None = None,
        dockerfile: str = "Dockerfile",
        registries: Collection[str] | None = None,
        modes: Mapping[str, int] | None = None,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> str:
        """Build `context_dir` (holding `dockerfile`) into an image tagged `tag`; its image id.

        Each log line goes to `on_log` as the engine sends it. `labels` are added to the image
        on top of the Dockerfile's. The engine pulls with the Docker config's credentials for
        `registries` (hosts) only; None: all of them (a user's own CLI); `credentials` (by
        host) replace the Docker config's for their hosts. `modes` gives the
        permission bits (setuid and the like included) of context paths, whatever the files on
        the host have. Raises StepFailed,
        BuildTimeout, EngineUnavailable or BuildError; a failed build leaves no tag.
        """
        log = JsonLog(on_log)
        cancel = Canceller(time.monotonic() + self.timeout)
        try:
            with tempfile.TemporaryFile(prefix="envctl-context-") as archive:
                context_tar(context_dir, archive, cancel, modes or {})
                body = DeadlineReader(archive, cancel)
                response = self._post_build(
                    body,
                    tag=tag,
                    labels=labels,
                    dockerfile=dockerfile,
                    registries=registries,
                    credentials=credentials or {},
                )
                try:
                    cancel.attach(response)
                    _check_status(response, build_id, log)
                    for chunk in response.iter_content(chunk_size=None):
                        log.feed(chunk)
                finally:
                    cancel.stop()  # before the connection can go back to the pool
                    response.close()
        except Expired:
            pass  # the deadline passed while the context was archived or sent
        except (requests.RequestException, docker.errors.DockerException, OSError) as exc:
            if not cancel.fired:  # else it is the shutdown at the deadline ending the stream
                raise EngineUnavailable(
                    f"the Docker engine at {self.base_url} failed: {exc}",
                    build_id=build_id,
                    log_tail=log.tail(),
                ) from exc
        finally:
            cancel.stop()
        log.close()
        # what the engine said before the deadline stands: a failure, or a finished image
        if cancel.fired and log.error is None and log.image_id is None:
            self._reap(log.containers, log)
            raise BuildTimeout(
                f"the build ran longer than {self.timeout:g} s and was cancelled",
                build_id=build_id,
                log_tail=log.tail(),
            )
        return _result(log, build_id)

    def push(self, tag: str, *, auth: dict[str, str] | None, on_log: OnLog) -> str:
        """Push `tag` to its registry; the manifest digest (`sha256:…`).

        The registry writes the tag with the manifest, which the engine sends only after every
        blob, so a failed push leaves no tag. `auth` is Docker's auth config (username and
        password, or identitytoken); None uses the credentials stored for the docker client.
        """
        repository, _, name = tag.rpartition(":")
        if not repository or "/" in name:
            raise ValueError(f"push needs repository:tag, not {tag!r}")
        log = JsonLog(on_log)
        try:
            for chunk in self._api.push(repository, tag=name, stream=True, auth_config=auth):
                log.feed(chunk)
        except requests.ConnectionError as exc:
            raise EngineUnavailable(f"the Docker engine at {self.base_url}: {exc}") from exc
        except (requests.RequestException, docker.errors.DockerException) as exc:
            raise BuildError(f"pushing {tag} failed: {exc}", log_tail=log.tail()) from exc
        log.close()
        if log.error is not None:
            message = f"pushing {tag} failed: {log.error}"
            if any(sign in log.error.lower() for sign in _REFUSED):
                raise RegistryAuthError(message, endpoint=repository.split("/", 1)[0])
            if any(sign in log.error for sign in _UNREACHABLE):
                # the engine reports the registry's absence inside its stream, not as an error
                # of ours: it is the registry that is unavailable (transient, exit code 3)
                registry = repository.split("/", 1)[0]
                raise RegistryUnavailable(message, endpoint=registry)
            raise BuildError(message, log_tail=log.tail())
        if log.digest is None:
            raise BuildError(f"pushing {tag} reported no digest", log_tail=log.tail())
        return log.digest

    def save(self, tag: str, target: Path) -> None:
        """Write the image `tag` to `target` in the engine's `docker save` format."""
        try:
            with open(target, "wb") as archive:
                for chunk in self._api.get_image(tag):
                    archive.write(chunk)
        except requests.ConnectionError as exc:
            raise EngineUnavailable(f"the Docker engine at {self.base_url}: {exc}") from exc
        except docker.errors.DockerException as exc:
            raise BuildError(f"cannot save {tag} from the engine: {exc}") from exc

    def python_version(self, image: str) -> str:
        """`MAJOR.MINOR` of the `python3` that `image` runs (pulled first if missing)."""
        output = self.run_python(image, "import sys; print('%d.%d' % sys.version_info[:2])")
        if not re.fullmatch(r"\d+\.\d+", output):
            raise StepFailed(f"pip requirements need python3, and {image} has none that runs")
        return output

    def run_python(self, image: str, script: str) -> str:
        """What `python3 -c script` prints in a container of `image` (pulled first if missing),
        with no network, no capabilities and the steps' memory and CPU limits; StepFailed when
        it fails or runs past 120 s. At most 64 kB of its output is read."""
        limits: dict[str, Any] = {"network_mode": "none", "cap_drop": ["ALL"], "pids_limit": 256,
                                  "security_opt": ["no-new-privileges"]}  # fmt: skip
        if "memory" in self._params:
            limits |= {"mem_limit": self._params["memory"], "memswap_limit": self._params["memory"]}
        if "cpuquota" in self._params:
            limits |= {"cpu_period": _CPU_PERIOD, "cpu_quota": self._params["cpuquota"]}
        container = None
        try:
            try:
                self._api.inspect_image(image)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                self._api.pull(image)
            config = self._api.create_host_config(**limits)
            container = self._api.create_container(
                image, ["python3", "-c", script], host_config=config
            )
            self._api.start(container)
            try:
                status = self._api.wait(container, timeout=120)["StatusCode"]
            except requests.exceptions.ReadTimeout:
                raise StepFailed(f"python3 in {image} ran past 120 s") from None
            output = b""
            for chunk in self._api.logs(container, stdout=True, stderr=True, stream=True):
                output += chunk
                if len(output) > 64 << 10:
                    break
        except requests.RequestException as exc:  # refused, reset or timed out: the engine's
            raise EngineUnavailable(f"the Docker engine at {self.base_url}: {exc}") from exc
        except docker.errors.DockerException as exc:
            raise BuildError(f"cannot run python3 on {image}: {exc}") from exc
        finally:
            if container is not None:
                with contextlib.suppress(requests.RequestException, docker.errors.DockerException):
                    self._api.remove_container(container, force=True)
        text = output[: 64 << 10].decode(errors="replace").strip()
        if status != 0:
            raise StepFailed(
                f"pip requirements need python3, and {image} has none that runs ({text[-300:]})"
            )
        return text

    def load(self, archive: Path) -> None:
        """Load an image archive (`docker save` format) into the engine."""
        try:
            with open(archive, "rb") as data:
                for chunk in self._api.load_image(data):  # type: ignore[no-untyped-call]
                    if isinstance(chunk, dict) and chunk.get("error"):
                        raise BuildError(f"the engine cannot load the image: {chunk['error']}")
        except requests.RequestException as exc:
            raise EngineUnavailable(f"the Docker engine at {self.base_url}: {exc}") from exc
        except docker.errors.DockerException as exc:
            raise BuildError(f"the engine cannot load the image: {exc}") from exc

    def remove(self, tag: str) -> None:
        """Untag `tag`, deleting the image when nothing else uses it. Never raises."""
        # best effort: a leftover image costs disk space, not correctness
        with contextlib.suppress(requests.RequestException, docker.errors.DockerException):
            self._api.remove_image(tag)

    def _post_build(
        self,
        body: DeadlineReader,
        *,
        tag: str,
        labels: Mapping[str, str],
        dockerfile: str,
        registries: Collection[str] | None,
        credentials: Mapping[str, Credentials],
    ) -> requests.Response:
        params = {**self._params, "t": tag, "dockerfile": dockerfile}
        if labels:
            params["labels"] = json.dumps(dict(labels), sort_keys=True)
        headers = {"Content-Type": "application/x-tar"}
        # credentials for pulling the base image, sent the way the docker CLI sends them
        auths = _auths(registries, credentials)
        if auths:
            headers["X-Registry-Config"] = docker.auth.encode_header(auths).decode()
        # No read timeout: a RUN may be silent for long; the Canceller enforces the deadline.
        return self._api.post(
            f"{self._api.base_url}/v{API_VERSION}/build",
            params=params,
            data=body,
            headers=headers,
            stream=True,
            timeout=(_API_TIMEOUT, None),
        )

    def _reap(self, containers: Iterable[str], log: JsonLog) -> None:
        """Make sure a cancelled build's containers are gone.

        The engine cancels a build whose client went away (it kills and removes the RUN
        container); one still there after a grace period is removed here.
        """
        try:
            for container in containers:
                limit = time.monotonic() + _CANCEL_GRACE
                while self._exists(container) and time.monotonic() < limit:
                    time.sleep(0.1)
                if self._exists(container):
                    log.note(f"envctl: removing container {container} left by the cancelled build")
                    with contextlib.suppress(docker.errors.NotFound):
                        self._api.remove_container(container, force=True)
        except (requests.RequestException, docker.errors.DockerException) as exc:
            log.note(f"envctl: could not check that the cancelled build stopped: {exc}")

    def _exists(self, container: str) -> bool:
        try:
            self._api.inspect_container(container)
        except docker.errors.NotFound:
            return False
        return True


def _auths(
    registries: Collection[str] | None, credentials: Mapping[str, Credentials]
) -> dict[str, dict[str, str]]:
    """Docker auth configs by registry: the Docker config's for `registries` only (None: all of
    them, as for a user's own CLI), with `credentials` (by host) in place of theirs."""
    config = docker.auth.load_config()
    auths: dict[str, dict[str, str]] = config.get_all_credentials()  # type: ignore[no-untyped-call]
    if registries is not None:  # a workspace's build: never another registry's credentials
        hosts = {_registry_host(r) for r in registries}
        auths = {k: v for k, v in auths.items() if _registry_host(k) in hosts}
    given = {_registry_host(h) for h in credentials}
    auths = {k: v for k, v in auths.items() if _registry_host(k) not in given}
    for host, c in credentials.items():
        auths[host] = {"username": c.username, "password": c.password, "serveraddress": host}
    return auths


def _registry_host(name: str) -> str:
    """A registry's host as the Docker config and image references name it (Docker Hub's
    `https://index.docker.io/v1/` is `docker.io`)."""
    host = docker.auth.convert_to_hostname(name).lower()
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _check_status(response: requests.Response, build_id: str | None, log: JsonLog) -> None:
    """Errors found before the build starts (bad parameters) come as an HTTP status."""
    if response.status_code == 200:
        return
    try:
        message = str(response.json().get("message", response.text))
    except ValueError:
        message = response.text
    log.note(message)
    # the engine parses the Dockerfile before answering: an invalid one fails here, every time
    error = StepFailed if message.startswith("dockerfile parse error") else BuildError
    raise error(f"the engine refused the build: {message}", build_id=build_id)


def _result(log: JsonLog, build_id: str | None) -> str:
    if log.error is not None:
        # A step's own failure or an invalid instruction fails again with the same inputs;
        # failing to reach a registry (the base at FROM, an image of COPY --from) may not.
        unreachable = any(sign in log.error for sign in _UNREACHABLE)
        deterministic = not unreachable and (
            (log.step or 0) > 1
            or log.error_code is not None
            or log.error.startswith("dockerfile parse error")
        )
        error = StepFailed if deterministic else BuildError
        raise error(log.error, build_id=build_id, log_tail=log.tail())
    if log.image_id is None:
        raise EngineUnavailable(
            "the engine ended the build without a result", build_id=build_id, log_tail=log.tail()
        )
    return log.image_id
