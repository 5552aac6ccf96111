"""What the builder's end-to-end tests share: a fresh workspace and home, the pip fixtures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIXTURES


def fixture_wheels(tmp_path: Path) -> Path:
    """The pip fixtures built into wheels (offline), in a folder to hand envctl as its
    find-links; its path."""
    sources = tmp_path / "pip-sources"
    shutil.copytree(FIXTURES / "pip", sources)  # building writes into the source folders
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(sources / "envctl-pydep"), str(sources / "envctl-pyhello")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return wheels
