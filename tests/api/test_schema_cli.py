"""The API against its OpenAPI schema through the schemathesis CLI (`st run --checks all`, in
its examples, coverage and fuzzing phases) on a live `envctl serve`: no server error, no
answer the schema does not document, no schema-valid request rejected. Bounded and
deterministic (tests/api/schemathesis.toml). No generated spec can start a build: the source
policy refuses any base image outside the allowed registries before anything is fetched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.api.server import Deployment
from tests.conftest import Services

ST = str(Path(sys.executable).parent / "st")
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_nothing_in_any_phase(services: Services, tmp_path: Path) -> None:
    with Deployment(services, tmp_path / "deployment") as deployment:
        server = deployment.serve(wait=False)
        tenant = deployment.workspace("fuzz")
        server.wait_healthy()
        result = subprocess.run(
            [ST, "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
             "--checks", "all", "--phases", "examples,coverage,fuzzing",
             "-H", f"Authorization: Bearer {tenant.token}",
             "--report-dir", str(tmp_path / "report")],
            env={**deployment.env, "NO_COLOR": "1"},
            capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path,
        )  # fmt: skip
        log = server.log.read_text(errors="replace")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Exception in ASGI application" not in log, log[-4000:]
