"""Reading a child process's output line by line, with deadlines."""

from __future__ import annotations

import queue
import threading
import time
from typing import IO


class Lines:
    """A stream's lines, read on a thread of their own so the test can wait for one with a
    deadline (iterating the stream itself would block without one)."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.append(line)
            self._queue.put(line)
        self._queue.put(None)  # end of stream

    def wait_for(self, text: str, timeout: float) -> bool:
        """Whether a line equal to `text` (stripped) arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if line is None:
                return False
            if line.strip() == text:
                return True
        return False

    def text(self) -> str:
        """Everything read, once the stream has ended (10 s at most)."""
        self._thread.join(timeout=10)
        return "".join(self._lines)
