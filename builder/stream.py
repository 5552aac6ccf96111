"""The Docker engine's stream of JSON messages (build and push), decoded into log lines."""

from __future__ import annotations

import codecs
import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any

OnLog = Callable[[str], None]
"""Receives each log line as the engine sends it."""

_TAIL_LINES = 50
_STEP = re.compile(r"^Step (\d+)/\d+ :")
_RUNNING_IN = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})$")
# The classic builder wraps a RUN's stderr in colour codes (ESC[91m … ESC[0m); logs are plain text.
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_MOUNTED = re.compile(r"^Mounted from \S+")


class JsonLog:
    """The engine's stream of JSON messages, decoded and handed to `on_log` line by line.

    Keeps what the builder needs: the error, the current step, the containers the build ran,
    the image id (build) or manifest digest (push), and the last lines.
    """

    def __init__(self, on_log: OnLog) -> None:
        self._on_log = on_log
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoder = json.JSONDecoder()
        self._pending = ""  # JSON text not decoded yet
        self._line = ""  # the start of a log line not ended yet
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.error: str | None = None
        self.error_code: int | None = None
        self.step: int | None = None
        self.containers: list[str] = []
        self.image_id: str | None = None
        self.digest: str | None = None

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the stream; messages (and UTF-8 characters) may be split anywhere."""
        self._pending += self._utf8.decode(chunk)
        while self._pending:
            text = self._pending.lstrip()
            try:
                message, end = self._decoder.raw_decode(text)
            except ValueError:
                self._pending = text  # incomplete: wait for more
                return
            self._pending = text[end:]
            if isinstance(message, dict):
                self._message(message)

    def close(self) -> None:
        """The stream ended: hand over the last line even if it has no newline."""
        if self._line:
            line, self._line = self._line, ""
            self._emit(line)

    def note(self, text: str) -> None:
        """Add a line of envctl's own."""
        self.close()
        self._emit(text)

    def tail(self) -> str:
        """The last lines of the log."""
        return "\n".join(self._tail)

    def _message(self, message: dict[str, Any]) -> None:
        if "stream" in message:
            lines = (self._line + str(message["stream"])).split("\n")
            self._line = lines.pop()
            for line in lines:
                self._emit(line.rstrip("\r"))
        if "status" in message and not message.get("progressDetail"):  # skip progress ticks
            # `Mounted from <repository>`: the engine reused a blob of another repository of the
            # registry, whose name is not this workspace's to see
            status = _MOUNTED.sub("Mounted from another repository", str(message["status"]))
            self._emit(f"{message['id']}: {status}" if message.get("id") else status)
        if isinstance(aux := message.get("aux"), dict):
            self.image_id = aux.get("ID", self.image_id)
            self.digest = aux.get("Digest", self.digest)
        if "error" in message or "errorDetail" in message:
            detail = message.get("errorDetail") or {}
            self.error = str(message.get("error") or detail.get("message") or message)
            self.error_code = detail.get("code")
            self.note(self.error)

    def _emit(self, line: str) -> None:
        line = _COLOUR.sub("", line)
        if match := _STEP.match(line):
            self.step = int(match.group(1))
        elif match := _RUNNING_IN.match(line):
            self.containers.append(match.group(1))
        self._tail.append(line)
        self._on_log(line)
