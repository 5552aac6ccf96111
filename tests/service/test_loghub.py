"""The in-memory fan-out of live build logs: what watchers read, and when they wake."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

from service.loghub import LogHub
from service.records import LogLine


def _line(seq: int) -> LogLine:
    return LogLine(seq, "log", f"line {seq}", datetime.now(UTC))


def test_lines_after_reads_from_memory_while_the_build_runs_here() -> None:
    hub = LogHub()
    assert hub.lines_after("b", 0) is None  # not held: the database has it
    hub.start("b")
    for seq in (1, 2, 3):
        hub.publish("b", _line(seq))
    assert [line.seq for line in hub.lines_after("b", 0) or []] == [1, 2, 3]
    assert [line.seq for line in hub.lines_after("b", 2) or []] == [3]
    assert hub.lines_after("b", 3) == []
    hub.finish("b")
    assert hub.lines_after("b", 0) is None  # over: read it once from the database


def test_a_re_run_build_held_from_a_later_line_sends_earlier_readers_to_the_database() -> None:
    hub = LogHub()
    hub.start("b")  # the first run's 40 lines died with its process; they are in the database
    hub.publish("b", _line(41))
    hub.publish("b", _line(42))
    assert hub.lines_after("b", 0) is None
    assert [line.seq for line in hub.lines_after("b", 40) or []] == [41, 42]
    assert [line.seq for line in hub.lines_after("b", 41) or []] == [42]


def test_watchers_on_the_loop_wake_on_a_line_published_by_another_thread() -> None:
    async def scenario() -> list[int]:
        hub = LogHub(asyncio.get_running_loop())
        hub.start("b")
        events = [hub.event("b") for _ in range(100)]  # one event, shared by every watcher
        assert all(e is events[0] for e in events)
        thread = threading.Thread(target=hub.publish, args=("b", _line(1)))
        thread.start()
        await asyncio.wait_for(events[0].wait(), timeout=10)
        thread.join()
        assert hub.event("b") is not events[0]  # the next sleepers get a fresh one
        return [line.seq for line in hub.lines_after("b", 0) or []]

    assert asyncio.run(scenario()) == [1]


def test_done_waiters_sleep_through_lines_and_wake_at_the_end() -> None:
    async def scenario() -> None:
        hub = LogHub(asyncio.get_running_loop())
        hub.start("b")
        done = hub.event("b", done=True)
        line = hub.event("b")
        hub.publish("b", _line(1))
        await asyncio.wait_for(line.wait(), timeout=10)  # the line's wake-up has run...
        assert not done.is_set()  # ...and did not wake those waiting for the end
        threading.Thread(target=hub.finish, args=("b",)).start()
        await asyncio.wait_for(done.wait(), timeout=10)

    asyncio.run(scenario())


def test_threads_wait_for_the_next_line_or_the_end() -> None:
    hub = LogHub()
    hub.start("b")
    seen: list[int] = []
    read = threading.Event()

    def follow() -> None:
        hub.wait_change("b", 0, timeout=60)  # returns at once if the line is already there
        seen.extend(line.seq for line in hub.lines_after("b", 0) or [])
        read.set()
        hub.wait_change("b", 1, timeout=60)

    follower = threading.Thread(target=follow)
    follower.start()
    hub.publish("b", _line(1))
    assert read.wait(timeout=30)
    hub.finish("b")
    follower.join(timeout=30)
    assert not follower.is_alive()  # woken by the end, long before its timeout
    assert seen == [1]
