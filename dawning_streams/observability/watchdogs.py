"""Threads that watch the worker from outside its event loop.

Everything a worker does runs on one event loop, and what runs on it cannot
report the loop itself stuck. These can:

- :class:`LoopWatch` says when the loop has stopped turning, and where. An
  ``async def`` handler that calls something blocking (``time.sleep``,
  ``requests.get``, a driver without ``await``) holds every handler's lane,
  the commits, the timers and the web pages, and nothing on the loop can say
  so: no log line, no page, ``/health`` does not answer. A thread asks the
  loop to run a no-op every second and, when the loop has not run it for
  ``blocked_s``, logs a WARNING with where the loop's thread is (the innermost
  lines of its stack: the blocking call, and the handler that made it), and
  another when it turns again.
- :class:`StopDeadline` ends the process ``Worker:StopTimeoutS`` after a stop
  began, whatever it still waits for, or at once when told to stop again.
- :func:`log_thread_exceptions` logs what ends a thread as one record, not as
  a traceback written to stderr, which a worker logs line by line (a consumer
  thread cancelled by a stop made a hundred WARNING lines of fragments).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

__all__ = ["LoopWatch", "StopDeadline", "flush_logs", "log_thread_exceptions"]

logger = logging.getLogger(__name__)

#: A loop that has not run a callback for this long is blocked, not busy:
#: a busy worker's loop turns many times a second.
BLOCKED_S = 10.0
#: Frames of the blocked thread's stack shown, innermost last.
_SHOWN_FRAMES = 6


class LoopWatch:
    """Watches the running loop from a daemon thread (started by :meth:`start`)."""

    def __init__(
        self, *, blocked_s: float = BLOCKED_S, describe: Callable[[], str] = lambda: ""
    ) -> None:
        self.blocked_s = blocked_s
        #: What the worker is doing, read without the loop (the records its handlers are on).
        self.describe = describe
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch the loop this is called from, until the process ends."""
        if self._thread is None:
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._watch,
                args=(loop, threading.get_ident()),
                name="loop-watch",
                daemon=True,
            )
            self._thread.start()

    def _watch(self, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        while not loop.is_closed():
            turned = threading.Event()
            try:
                loop.call_soon_threadsafe(turned.set)
            except RuntimeError:  # closed meanwhile
                return
            asked = time.monotonic()
            if turned.wait(self.blocked_s):
                time.sleep(max(0.0, 1.0 - (time.monotonic() - asked)))
                continue
            self._say_blocked(loop_thread)
            turned.wait()
            logger.warning(
                "the event loop runs again, after %.1f s blocked", time.monotonic() - asked
            )

    def _say_blocked(self, loop_thread: int) -> None:
        frame = sys._current_frames().get(loop_thread)
        where = "".join(traceback.format_stack(frame)[-_SHOWN_FRAMES:]) if frame else "(unknown)\n"
        try:
            doing = self.describe()
        except Exception as exc:  # a report must not end the watch
            doing = f"(unknown: {exc!r})"
        logger.warning(
            "the event loop has not run for %.0f s: nothing else on it runs meanwhile (every"
            " handler, commits, timers, web pages), and a stop waits"
            " until Worker:StopTimeoutS. A blocking call in an async function does this:"
            " await an async API, use asyncio.to_thread, or declare the handler with a plain"
            " def (it then runs in a thread). %s. The loop's thread is at:\n%s",
            self.blocked_s,
            doing,
            where.rstrip("\n"),
        )


class StopDeadline:
    """Ends the process when a stop has not finished in time, or at once when
    told to stop again.

    A thread, not a task: a stop can wait on a broker forever inside the event
    loop (Faust flushing its producer, aiokafka committing or leaving the
    group), and the loop itself may be what is stuck (a handler that blocks
    it). :meth:`arm` and :meth:`now` only set a field, so a signal handler may
    call them whatever the loop is doing; the thread, started beforehand with
    :meth:`start`, looks ten times a second. What the deadline cuts short is
    safe to lose: an offset is committed only after its record was handled
    and its effects acknowledged, so anything not yet acknowledged is handled
    again by the partition's next owner; messages published through the bus
    and not acknowledged wait in its spool.

    Before it exits it calls ``leave`` (the consumer leaving its group, if it
    can within a moment): otherwise the group would wait for this member for
    ``Kafka:SessionTimeoutMs`` before its partitions went to anyone.
    """

    LOOK_S = 0.1

    def __init__(
        self,
        timeout_s: float,
        describe: Callable[[], str],
        leave: Callable[[], bool] = lambda: False,
    ) -> None:
        self.timeout_s = timeout_s
        self.describe = describe
        self.leave = leave
        self._armed_s = timeout_s
        #: time.monotonic() at which the process ends; None: not stopping.
        self._due: float | None = None
        #: The signal that asked to stop again, once one has.
        self._again: str | None = None
        self._watching: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread that ends the process (once; not from a signal handler)."""
        if self._watching is None:
            self._watching = threading.Thread(target=self._watch, name="stop-deadline", daemon=True)
            self._watching.start()

    def arm(self, timeout_s: float | None = None) -> None:
        """Start counting: ``timeout_s``, or the ``Worker:StopTimeoutS`` given at first.
        A second call changes nothing."""
        if self._due is None:
            self._armed_s = self.timeout_s if timeout_s is None else timeout_s
            self._due = time.monotonic() + self._armed_s
        self.start()

    @property
    def armed(self) -> bool:
        return self._due is not None

    def left_s(self) -> float:
        """Seconds until the process ends (the whole timeout before :meth:`arm`)."""
        return self.timeout_s if self._due is None else max(0.0, self._due - time.monotonic())

    def now(self, signal_name: str) -> None:
        """End the process at once, as the deadline would: told to stop again
        (``signal_name``) while stopping."""
        self._again = signal_name

    def _watch(self) -> None:
        while True:
            time.sleep(self.LOOK_S)
            if self._again is not None:
                self._exit(f"told to stop again ({self._again}) during the stop", logging.WARNING)
            if self._due is not None and time.monotonic() >= self._due:
                self._overdue()

    def _overdue(self) -> None:
        if self._armed_s == self.timeout_s:
            why, level = f"Worker:StopTimeoutS={self.timeout_s:g}", logging.ERROR
        else:
            # The stop said as it began that it would end so: no error of its own.
            why = "Kafka was unreachable when it began, so nothing could be committed"
            level = logging.WARNING
        self._exit(f"the stop did not finish within {self._armed_s:g} s ({why})", level)

    def _exit(self, reason: str, level: int = logging.ERROR) -> None:
        try:
            state = self.describe()
        except Exception as exc:  # the description must not keep the process alive
            state = f"(state unknown: {exc!r})"
        try:
            left = self.leave()
        except Exception as exc:  # exiting regardless
            logger.debug("could not leave the consumer group: %r", exc)
            left = False
        logger.log(
            level,
            "%s; exiting now%s. %s",
            reason,
            ", after leaving the consumer group" if left else "",
            state,
        )
        flush_logs()
        os._exit(0)


def log_thread_exceptions() -> None:
    """Log an exception that ends a thread as one record (once per process):
    a cancellation, which a stop does, in one INFO line; anything else at
    ERROR with its traceback."""
    if getattr(threading.excepthook, "logs", False):
        return

    def excepthook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        if args.exc_type is asyncio.CancelledError:
            logger.info("thread %s was cancelled", name)
        elif args.exc_type is not SystemExit:
            exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
            logger.error("thread %s ended with an exception", name, exc_info=exc_info)  # type: ignore[arg-type]

    excepthook.logs = True  # type: ignore[attr-defined]
    threading.excepthook = excepthook


def flush_logs() -> None:
    """Flush every log handler and stderr, before an exit that skips Python's own."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # exiting regardless
            handler.flush()
    sys.stderr.flush()
