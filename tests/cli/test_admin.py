"""`envctl workspace …` and `envctl token …`: the operator's commands, on a real database."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from registry.auth import Credentials
from service.store import BuildStore
from tests.conftest import Services

ENVCTL = str(Path(__file__).parents[2] / ".venv" / "bin" / "envctl")


@pytest.fixture
def env(tmp_path: Path, services: Services) -> dict[str, str]:
    return {
        "ENVCTL_HOME": str(tmp_path / "home"),  # not there yet: the database makes its folder
        "ENVCTL_WORKSPACE_REGISTRY": f"{services.workspace_registry}/admin",
    }


def test_a_workspace_gets_a_namespace_and_a_first_token_that_reaches_it(
    env: dict[str, str], services: Services, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["workspace", "add", "team-a"], env=env)
    assert result.exit_code == 0, result.output
    secret = result.stdout.splitlines()[-1]
    assert secret.startswith("envctl_")
    assert f"{services.workspace_registry}/admin/team-a" in result.stdout
    store = BuildStore(f"sqlite:///{tmp_path / 'home' / 'envctl.db'}")
    try:
        token = store.authenticate(secret)
        assert token is not None
        assert token.reaches("team-a")
        assert not token.reaches("team-b")
    finally:
        store.close()
    listed = CliRunner().invoke(app, ["workspace", "list"], env=env)
    assert "team-a" in listed.stdout


def test_tokens_are_added_listed_and_revoked_by_id(env: dict[str, str]) -> None:
    cli = CliRunner()
    assert cli.invoke(app, ["workspace", "add", "team-a"], env=env).exit_code == 0
    added = cli.invoke(app, ["token", "add", "team-a"], env=env)
    assert added.exit_code == 0, added.output
    token_id = added.stdout.split()[1]
    admin = cli.invoke(app, ["token", "add", "--admin"], env=env)
    assert admin.exit_code == 0, admin.output
    listed = cli.invoke(app, ["token", "list"], env=env, terminal_width=200)
    assert token_id in listed.stdout
    assert "admin" in listed.stdout
    assert added.stdout.splitlines()[-1] not in listed.stdout  # never the secret
    assert cli.invoke(app, ["token", "revoke", token_id], env=env).exit_code == 0
    again = cli.invoke(app, ["token", "revoke", token_id], env=env)
    assert again.exit_code == 2  # said by the CLI's one error boundary, never a traceback
    assert "no live token" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["workspace", "add", "Team_A"], "lowercase letters, digits and dashes"),
        (["workspace", "add", "x", "--registry", "not a registry"], "not a registry"),
        (["token", "add"], "give a WORKSPACE, or --admin"),
        (["token", "add", "nobody"], "no workspace 'nobody'"),
        (
            ["workspace", "login", "nobody", "--username", "u", "--password-stdin"],
            "no workspace 'nobody'",
        ),
        (["workspace", "login", "nobody", "--username", "u"], "no workspace 'nobody'"),
    ],
)
def test_bad_operator_input_is_refused_with_what_was_wrong(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_a_taken_workspace_name_exits_2_and_says_so(env: dict[str, str]) -> None:
    assert CliRunner().invoke(app, ["workspace", "add", "team-a"], env=env).exit_code == 0
    again = subprocess.run(
        [ENVCTL, "workspace", "add", "team-a"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert again.returncode == 2, again.stderr
    assert "workspace 'team-a' already exists" in again.stderr


def test_a_workspaces_credentials_come_from_stdin_and_never_show(
    env: dict[str, str], tmp_path: Path
) -> None:
    cli = CliRunner()
    assert cli.invoke(app, ["workspace", "add", "team-a"], env=env).exit_code == 0
    bare = cli.invoke(app, ["workspace", "login", "team-a", "--username", "alice"], env=env)
    assert bare.exit_code == 2  # never a password on the command line
    assert "--password-stdin" in bare.stderr
    args = ["workspace", "login", "team-a", "--username", "alice", "--password-stdin"]
    result = cli.invoke(app, args, env=env, input="s3cret pass\n")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    store = BuildStore(f"sqlite:///{tmp_path / 'home' / 'envctl.db'}")
    try:
        assert store.get_credentials("team-a") == Credentials("alice", "s3cret pass")
        assert cli.invoke(app, ["workspace", "logout", "team-a"], env=env).exit_code == 0
        assert store.get_credentials("team-a") is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (  # nothing listens there: the database is down
            {"ENVCTL_DATABASE_URL": "postgresql+psycopg://envctl@127.0.0.1:1/envctl"},
            3,
            "the build database is unavailable",
        ),
        ({"ENVCTL_WORKERS": "0"}, 2, "a worker runs at least one build at a time"),
    ],
)
def test_a_worker_without_its_database_or_its_threads_exits_with_the_reason(
    env: dict[str, str], extra: dict[str, str], code: int, message: str
) -> None:
    worker = subprocess.run(
        [ENVCTL, "worker"],
        env={"PATH": "/usr/bin:/bin", **env, **extra},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert worker.returncode == code, worker.stderr
    assert message in worker.stderr
    assert "Traceback" not in worker.stderr
