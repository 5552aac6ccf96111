"""Render an environment spec into the Dockerfile that builds its image. Pure.

    render(spec, key, lock_text, version=…) -> BuildContext

      FROM --platform=P base@sha256:…          the base, by digest only
      LABEL org.envctl.key=… …                 what the image is (sorted)
      COPY .envctl/env /opt/envctl/envs/KEY    the conda environment, installed at its final
      ENV PATH=…/KEY/bin:$PATH CONDA_PREFIX=…    prefix outside the build (when it has packages)
      ENV NAME="value" …                       the spec's variables, quoted to arrive exactly
      COPY .envctl/pip …                       the pip lock and its wheels (when there are any)
      RUN python3 -m pip install --no-deps --no-index …   offline, exactly the lock
      <docker steps>                           each step's canonical text

Nothing here reads a file, the clock or the environment: the same inputs give byte-identical
text on every machine, which the snapshot tests in tests/builder/test_render.py pin. Writing the
context and running the build are `builder.docker`'s job (as in repo2docker, `render()` is
separate from the engine that executes it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hashing import EnvironmentSpec, EnvKey

DEFAULT_PREFIX_ROOT = "/opt/envctl/envs"

ENV_DIR = ".envctl/env"
"""Where the caller puts the installed conda environment in the build context."""

PIP_DIR = ".envctl/pip"
"""Where the pip lock (`requirements.txt`) and its wheels (`wheels/`) go in the build context."""

REQUIREMENTS_FILE = f"{PIP_DIR}/requirements.txt"
"""Where `write_context` puts the pip lock in the build context."""

WHEELS_DIR = f"{PIP_DIR}/wheels"
"""Where the caller puts the pinned wheels in the build context."""

# When the base image sets no PATH (`docker import` images, FROM scratch), `$PATH` would expand
# to nothing and leave a trailing `:` (the current directory) on the PATH; this is Docker's default.
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# ENV/LABEL values go through Docker's shell-word processing: inside double quotes only `\`,
# `"` and `$` are special, and each is taken literally after a backslash. A newline cannot be
# written at all (it ends the instruction: Dockerfile has no `\n` escape), nor can NUL.
_QUOTED = str.maketrans({"\\": "\\\\", '"': '\\"', "$": "\\$"})
_UNWRITABLE = ("\n", "\x00")
# The prefix is written unquoted in COPY and ENV, and conda packages want a plain path.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class BuildContext:
    """What a build needs besides the environment files and the user's context.

    `dockerfile` is the Dockerfile text; `env_dir` the folder of the build context that must hold
    the installed conda environment (None without conda packages); `pip_requirements` the text
    of the pip lock, `.envctl/pip/requirements.txt` (None without pip); `labels` the image's labels,
    sorted (also written in the Dockerfile).
    """

    dockerfile: str
    env_dir: str | None
    pip_requirements: str | None
    labels: tuple[tuple[str, str], ...]


def env_prefix(key: EnvKey, prefix_root: str = DEFAULT_PREFIX_ROOT) -> str:
    """The path of a key's conda environment inside its image (install it there)."""
    return f"{prefix_root.rstrip('/')}/{key}"


def render(
    spec: EnvironmentSpec,
    key: EnvKey,
    lock_text: str | None,
    *,
    pip_lock: str | None = None,
    prefix_root: str = DEFAULT_PREFIX_ROOT,
    version: str,
) -> BuildContext:
    """The Dockerfile and files that build `spec`'s image, keyed `key`, by envctl `version`.

    `lock_text` is the conda-lock file the environment was installed from: required when the
    spec has conda packages, and None otherwise (its sha256 becomes a label). Raises ValueError
    when the base image is not pinned by digest or the lock does not fit the spec, and SpecError
    for a docker step that only reads the same under its `# escape=` directive (see
    DockerStep.dockerfile_line).
    """
    base = spec.base_image
    if base.digest is None:
        raise ValueError(f"the base image {base} is not pinned: resolve it to a digest first")
    has_packages = spec.conda is not None and bool(spec.conda.dependencies)
    if has_packages and lock_text is None:
        raise ValueError("a spec with conda packages needs the lock they were installed from")
    if not has_packages and lock_text is not None:
        raise ValueError("a lock was given for a spec without conda packages")
    if not _PLAIN_PATH.match(prefix_root):
        raise ValueError(f"the prefix root must be a plain absolute path: {prefix_root!r}")
    labels = _labels(spec, key, lock_text, pip_lock, version)
    lines = [f"FROM --platform={spec.platform} {base.name}@{base.digest}", _pairs("LABEL", labels)]
    prefix = env_prefix(key, prefix_root)
    if has_packages:
        lines.append(f"COPY {ENV_DIR} {prefix}")
        # What `conda activate` sets that matters to programs; activate.d scripts do not run.
        lines.append(
            f"ENV PATH={prefix}/bin:${{PATH:-{_DEFAULT_PATH}}} \\\n    CONDA_PREFIX={prefix}"
        )
    if spec.variables:  # values that no Dockerfile can write were refused when parsed
        lines.append(_pairs("ENV", spec.variables))
    has_pip = spec.conda is not None and bool(spec.conda.pip)
    if has_pip != (pip_lock is not None):
        raise ValueError("a pip lock is needed exactly when the spec has pip requirements")
    if pip_lock is not None:
        target = f"{prefix}.pip"
        lines.append(f"COPY {PIP_DIR} {target}")
        # Installs exactly the lock, offline: the resolution happened when the lock was made.
        # `python3`: the environment's own when it has python (its bin/ is first on PATH), the
        # base's otherwise; `python` alone is missing on Debian-like bases, whose python also
        # refuses pip installs (PEP 668) unless told that this image is the environment.
        lines.append(
            "RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-deps --no-index "
            "--require-hashes --no-cache-dir --disable-pip-version-check "
            f"--find-links {target}/wheels -r {target}/requirements.txt"
        )
    lines.extend(step.dockerfile_line() for step in spec.docker_steps)
    return BuildContext(
        dockerfile="\n".join(lines) + "\n",
        env_dir=ENV_DIR if has_packages else None,
        pip_requirements=pip_lock,
        labels=labels,
    )


def _labels(
    spec: EnvironmentSpec, key: EnvKey, lock_text: str | None, pip_lock: str | None, version: str
) -> tuple[tuple[str, str], ...]:
    base = spec.base_image
    labels = {
        "org.envctl.key": key,
        "org.envctl.platform": spec.platform,
        "org.envctl.version": version,
        # OCI's pre-defined annotations for the image this one is built on
        "org.opencontainers.image.base.digest": base.digest or "",
        # by digest: the tag is not part of the key, so it must not be part of the image
        "org.opencontainers.image.base.name": f"{base.name}@{base.digest}",
    }
    if lock_text is not None:
        labels["org.envctl.conda-lock.sha256"] = hashlib.sha256(lock_text.encode()).hexdigest()
    if pip_lock is not None:
        labels["org.envctl.pip-lock.sha256"] = hashlib.sha256(pip_lock.encode()).hexdigest()
    return tuple(sorted(labels.items()))


def _pairs(instruction: str, pairs: Iterable[tuple[str, str]]) -> str:
    """`ENV A="1" \\` + `    B="2"`: one instruction, one quoted pair a line."""
    return f"{instruction} " + " \\\n    ".join(f"{k}={_quote(v)}" for k, v in pairs)


def _quote(value: str) -> str:
    if any(c in value for c in _UNWRITABLE):
        raise ValueError(f"a Dockerfile value cannot hold a newline or NUL: {value!r}")
    return '"' + value.translate(_QUOTED) + '"'
