"""A request's files and the host (issue 9, items 6 and 9), through a real `envctl serve`:
keying a request writes nothing; a build writes its context without setuid, setgid or sticky
bits and removes it when it ends, while the engine gets the modes that were keyed, as the
Docker CLI sends them (the classic builder itself drops the special bits); the build's row
holds no file's bytes, and the files go once no build needs them."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path

import sqlalchemy as sa

from service.store import BuildStore
from tests.api.server import Deployment, build_outcome, tenant_client
from tests.conftest import Services

_SPECIAL = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_MODES = {"suid": 0o4755, "sgid": 0o2711, "plain": 0o640}


def _files(home: Path) -> dict[str, int]:
    """Every path under `home` with its mode."""
    return {str(p.relative_to(home)): os.lstat(p).st_mode for p in home.rglob("*")}


def _request(payload: bytes) -> dict[str, object]:
    steps = ["COPY ctx /ctx", "RUN stat -c 'mode %a %n' /ctx/* /ctx && test -s /ctx/big"]
    spec = {"base_image": "{base}", "context": ".", "docker_steps": "\n".join(steps)}
    content = base64.b64encode(payload).decode()
    files = [{"path": "ctx", "kind": "dir", "mode": 0o1777}]
    files += [{"path": f"ctx/{n}", "mode": m, "content": content[:8]} for n, m in _MODES.items()]
    files.append({"path": "ctx/big", "mode": 0o644, "content": content})
    return {"spec": spec, "name": "env.yml", "files": files}


def test_request_files_are_written_only_to_build_and_never_setuid(
    services: Services, tmp_path: Path
) -> None:
    with Deployment(services, tmp_path / "deployment") as deployment:
        server = deployment.serve()
        tenant = deployment.workspace("files")
        home = Path(deployment.env["ENVCTL_HOME"])
        body = _request(os.urandom(3 << 20))
        body["spec"]["base_image"] = services.busybox_image  # type: ignore[index]
        with tenant_client(server, tenant, timeout=120.0) as http:
            before = _files(home)
            answer = http.post("/v1/hash", json=body)
            assert answer.status_code == 200, answer.text
            resolve = f"/v1/workspaces/{tenant.name}/resolve"
            answer = http.post(resolve, json=body, params={"build": "false"})
            assert answer.status_code == 404, answer.text
            assert _files(home) == before  # keying wrote nothing

            answer = http.post(resolve, json=body)
            assert answer.status_code == 202, answer.text
            build_id = answer.json()["build_id"]
            assert build_outcome(server, tenant, build_id)["status"] == "succeeded"
            logs = http.get(f"/v1/workspaces/{tenant.name}/builds/{build_id}/logs",
                            params={"follow": "false"})  # fmt: skip
        text = "\n".join(
            json.loads(line[5:])["text"] for line in logs.text.splitlines()
            if line.startswith("data:") and '"seq"' in line
        )  # fmt: skip
        # the image has the permission bits that were sent and keyed (and the special bits too
        # on an engine that keeps them)
        for name, mode in _MODES.items():
            assert re.search(rf"mode ({mode:o}|{mode & 0o777:o}) /ctx/{name}\n", text), text
        # the host never kept a special bit, and the build's context is gone
        after = _files(home)
        assert not [p for p, mode in after.items() if mode & _SPECIAL], after
        assert not [p for p in after if p.endswith(".context")], after

        # the build's row holds the request without the files' bytes, which the store drops
        engine = sa.create_engine(deployment.database_url)
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT request FROM builds WHERE id = :id"),
                               {"id": build_id}).scalar_one()  # fmt: skip
            assert len(row) < 4000, len(row)
            needed = conn.execute(sa.text("SELECT count(*) FROM build_files")).scalar_one()
            assert needed == 0
        engine.dispose()
        store = BuildStore(deployment.database_url)
        try:
            assert store.sweep_files(unused_for=0) == 2  # the big file, and the shared small one
        finally:
            store.close()
