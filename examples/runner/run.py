#!/usr/bin/env python3
"""A training platform's runner: get an environment's image from envctl, run a command in it.

    ENVCTL_URL=http://envctl:8080 ENVCTL_TOKEN=... ENVCTL_WORKSPACE=team-a \\
        python examples/runner/run.py env.yml python train.py --epochs 3

1. Read the spec file and the files it names (`request_from_file`) and resolve it through the
   envctl server (`EnvctlClient.resolve_image`). A hit answers at once; on a miss the server
   builds it, and the build's log is streamed to stderr while the runner waits.
2. Pull the image by digest from the registry (`docker.from_env()`: DOCKER_HOST is honoured),
   so the command runs on exactly the image envctl answered, whatever its tag says later.
3. Run the command in a new container with no network, print what it writes (stdout to stdout,
   stderr to stderr), remove the container, and exit with the command's exit code.

Exit codes: the command's own; 130 on Ctrl-C; 125 when the runner could not get as far as
running it (the spec is invalid, the build failed, the server or the engine is unreachable), as
`docker run` does for its own errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import docker
import docker.errors
from docker.models.containers import Container

from client.http import EnvctlClient
from client.models import ImageView, LogEventView
from hashing import EnvctlError
from specio.request import request_from_file

RUNNER_FAILED = 125  # as `docker run` exits for its own errors


@dataclass(frozen=True)
class Connection:
    """Where the envctl server is, and who we are to it."""

    url: str
    token: str | None
    workspace: str

    @classmethod
    def from_env(cls) -> Connection:
        """From ENVCTL_URL, ENVCTL_TOKEN and ENVCTL_WORKSPACE."""
        url = os.environ.get("ENVCTL_URL")
        if not url:
            raise RunnerError("set ENVCTL_URL to the envctl server (and ENVCTL_TOKEN)")
        workspace = os.environ.get("ENVCTL_WORKSPACE") or "default"
        return cls(url, os.environ.get("ENVCTL_TOKEN") or None, workspace)


class RunnerError(Exception):
    """Something before the command ran went wrong; the message says what."""


def print_log(event: LogEventView) -> None:
    """One line of the build's log, to stderr (stdout is the command's)."""
    print(f"[build {event.stage}] {event.text}", file=sys.stderr, flush=True)


def resolve(spec: str, connection: Connection, *, timeout: float) -> ImageView:
    """The environment's image: a hit, or built now (its log streamed to stderr). Gives up
    after `timeout` seconds, an unreachable server included."""
    request = request_from_file(spec)
    with EnvctlClient(connection.url, connection.token, workspace=connection.workspace) as envctl:
        return envctl.resolve_image(request, on_log=print_log, timeout=timeout)


def by_digest(image: ImageView) -> tuple[str, str]:
    """The image's repository and digest: `host[:port]/path` and `sha256:...`."""
    repository = image.image.split("@", 1)[0]
    name_start = repository.rfind("/") + 1
    if ":" in repository[name_start:]:  # drop the tag; a colon before the last '/' is a port
        repository = repository[: repository.rfind(":")]
    return repository, image.digest


def run(engine: docker.DockerClient, image: ImageView, command: list[str]) -> int:
    """Pull the image by digest, run `command` in it with no network, copy its output to ours;
    its exit code."""
    repository, digest = by_digest(image)
    engine.images.pull(repository, tag=digest)
    container: Container = engine.containers.create(
        f"{repository}@{digest}", command, network_mode="none"
    )
    try:
        # attached before the start, so not a byte of output is missed
        output = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
        container.start()
        for out, err in output:
            if out:
                sys.stdout.buffer.write(out)
                sys.stdout.flush()
            if err:
                sys.stderr.buffer.write(err)
                sys.stderr.flush()
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    """Resolve the spec's environment, run the command in it, exit with its exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("spec", help="the environment's spec file (envctl, conda or Azure ML)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for the environment, its build included (default 3600)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("give a command to run in the environment")
    try:
        image = resolve(args.spec, Connection.from_env(), timeout=args.timeout)
        print(f"environment {image.key}: {image.image} ({image.source})", file=sys.stderr)
        engine = docker.from_env()
        try:
            return run(engine, image, list(args.command))
        finally:
            engine.close()
    except (RunnerError, EnvctlError, docker.errors.DockerException) as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return RUNNER_FAILED
    except KeyboardInterrupt:  # the container is removed on the way out
        return 130


if __name__ == "__main__":
    sys.exit(main())
