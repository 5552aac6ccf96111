"""The embedded CLI and the CLI through a server answer every error class alike: the same exit
code and the same message, on real registries, a real engine and a real `envctl serve`."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import main as cli
from tests.api.server import Deployment, EnvctlServer, Tenant
from tests.conftest import Services

_IDS = re.compile(r"\b[0-9a-f]{16,}(?:\.\d+)?\b")


@pytest.fixture(scope="module")
def both(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], dict[str, str], int]]:
    """The environments of an embedded CLI and of a CLI through a server, on the same
    registries and settings, and a port nothing listens on (an allowed registry that is down)."""
    root = tmp_path_factory.mktemp("parity")
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    allowed = f"{services.base_registry},127.0.0.1:{port}"
    with Deployment(
        services, root / "deployment", env={"ENVCTL_ALLOWED_BASE_REGISTRIES": allowed}
    ) as deployment:
        server: EnvctlServer = deployment.serve()
        tenant: Tenant = deployment.workspace("parity")
        embedded = {
            **{k: v for k, v in deployment.env.items() if k != "ENVCTL_DATABASE_URL"},
            "ENVCTL_HOME": str(root / "embedded"),
            "ENVCTL_WORKSPACE_REGISTRY": f"{deployment.workspace_registry}/parity",
        }
        remote = {
            **deployment.env,
            "ENVCTL_URL": server.url,
            "ENVCTL_TOKEN": tenant.token,
            "ENVCTL_WORKSPACE": tenant.name,
        }
        yield embedded, remote, port


def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"a traceback: {result.exception!r}\n{result.stderr}"
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result.exit_code, _IDS.sub("ID", "\n".join(errors))


SPECS = {
    "invalid spec": ("base_image: {busybox}\nbogus: 1\n", 2),  # `env.yml:2: bogus: …`
    "missing base image": ("base_image: {base}/does-not-exist-{nonce}:1\n", 2),
    "registry unreachable": ("base_image: 127.0.0.1:{port}/any/image:1\n", 3),
    "failing step": ("base_image: {busybox}\ndocker_steps: RUN echo {nonce} && exit 3\n", 1),
    "unsolvable": (
        "base_image: {busybox}\nconda:\n  dependencies:\n  - no-such-package-{nonce}\n",
        1,
    ),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_resolve_fails_alike_embedded_and_through_a_server(
    both: tuple[dict[str, str], dict[str, str], int],
    services: Services,
    tmp_path: Path,
    case: str,
) -> None:
    embedded, remote, port = both
    text, code = SPECS[case]
    spec = tmp_path / "env.yml"
    spec.write_text(text.format(
        busybox=services.busybox_image, base=services.base_registry, port=port,
        nonce=uuid.uuid4().hex,
    ))  # fmt: skip
    here = _run(embedded, "resolve", str(spec))
    there = _run(remote, "resolve", str(spec))
    assert here[0] == code, here
    assert here[1].startswith("error: "), here
    assert there == here
    if case == "invalid spec":
        assert "env.yml:2" in here[1], "the file and line are said"


def test_an_unknown_build_is_not_found_alike(
    both: tuple[dict[str, str], dict[str, str], int],
) -> None:
    embedded, remote, _ = both
    here = _run(embedded, "logs", "0123456789abcdef")
    assert here[0] == 1, here
    assert _run(remote, "logs", "0123456789abcdef")[0] == here[0]
