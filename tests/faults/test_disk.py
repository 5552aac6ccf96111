"""A full ENVCTL_HOME (a small tmpfs, issue 9 item 13): the embedded CLI says the disk is full
and exits 3 (unavailable: it may work once space is freed), with no traceback, no failure
remembered for the key and nothing left running or queued."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import Services

ENVCTL = str(Path(sys.executable).parent / "envctl")


@pytest.fixture
def full_home(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, filled to the last byte."""
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(home)],
                   check=True, timeout=30)  # fmt: skip
    try:
        filler = os.open(home / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass  # full to the last block
        finally:
            os.close(filler)
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True, timeout=30)


def test_a_full_disk_is_said_and_exits_3(
    services: Services, tmp_path: Path, full_home: Path
) -> None:
    spec = tmp_path / "env.yml"
    spec.write_text(
        f"base_image: {services.busybox_image}\n"
        f"conda:\n  dependencies:\n  - envctl-data\nvariables: {{N: '{uuid.uuid4().hex}'}}\n"
    )
    database = tmp_path / "envctl.db"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ENVCTL_")},
        "ENVCTL_HOME": str(full_home),
        "ENVCTL_DATABASE_URL": f"sqlite:///{database}",  # the build records are elsewhere
        "ENVCTL_WORKSPACE_REGISTRY": f"{services.workspace_registry}/full-{uuid.uuid4().hex[:8]}",
        "ENVCTL_CHANNELS": services.channels,
        "ENVCTL_BUILD_NETWORK": "none",
        "DOCKER_HOST": services.docker_host,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    for _ in range(2):  # the second time too: a full disk is never remembered as the key's
        run = subprocess.run(
            [ENVCTL, "resolve", str(spec)], env=env, capture_output=True, text=True,
            timeout=300, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert "Traceback" not in run.stderr, run.stderr
        assert run.returncode == 3, run.stderr
        assert "disk is full" in run.stderr, run.stderr
        assert "remembered" not in run.stderr, run.stderr
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        statuses = {row[0] for row in conn.execute(sa.text("SELECT status FROM builds"))}
    engine.dispose()
    assert statuses == {"failed"}, statuses
