"""A readable terminal next to Ray: Ray's own output goes to a log file, and a lost head ends the run at once.

Ray prints into the driver's terminal from background threads: the output of every worker
process and of the raylets (``log_to_driver``; a crashed raylet's last lines include its
``[state-dump]``), the errors the cluster publishes (a node marked dead, a worker killed),
and its ``ray`` logger's warnings (unhandled task errors with their tracebacks); its C++
core writes errors straight to file descriptor 2 (e.g. ``Attempting to recover 2 lost
objects``). During a run, :class:`RayLog` sends all of that to one file (the run folder's
``ray.log``): it replaces the ``ray`` logger's handlers, points file descriptor 2 at the
file (Python's ``sys.stderr`` gets its own copy of the terminal's descriptor), and stands
in for ``sys.stdout`` and ``sys.stderr`` so that what Ray's threads (named ``ray_*``)
write lands in the file while sfp-ray's own lines, written by the main thread, still reach
the terminal. Nothing Ray logs is dropped: ``ray.log`` keeps it for when something needs
explaining.

When the head of a joined cluster dies, the cluster's control store (GCS) goes with it and
Ray ends the driver process by itself about 60 s later, with a C++ message on stderr.
:class:`HeadWatch` probes the head's address once a second and calls its ``on_lost``
after :data:`HEAD_GRACE_S` seconds without an answer, so that the run can stop with one
line saying how to resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import ray  # imported first: importing ray installs its own handler on the "ray" logger

__all__ = ["HEAD_GRACE_S", "HeadWatch", "RayLog", "connected_address", "ray_running"]

log = logging.getLogger(__name__)

#: Seconds the head may not answer before :class:`HeadWatch` reports it lost (Ray itself gives up after 60 s).
HEAD_GRACE_S = 10.0

#: Ray's threads in the driver that print what the cluster sends (``ray_print_logs``,
#: ``ray_listen_error_messages``) are named with this prefix.
RAY_THREAD_PREFIX = "ray_"


class _Router:
    """Stands in for ``sys.stdout``/``sys.stderr``: what Ray's threads write goes to the log file."""

    def __init__(self, stream: Any, owner: RayLog) -> None:
        self._stream = stream
        self._owner = owner

    def _to_log(self) -> bool:
        return self._owner.everything or threading.current_thread().name.startswith(RAY_THREAD_PREFIX)

    def write(self, text: str) -> int:
        if self._to_log():
            return self._owner.write(text)
        return self._stream.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...: the terminal's
        return getattr(self._stream, name)


class RayLog:
    """Sends what Ray prints in this process to ``path`` (appended) between :meth:`start` and :meth:`stop`.

    Example::

        log = RayLog(out / "ray.log")
        log.start()
        try:
            ...  # ray.init(...), the run
            with log.all_to_file():
                ray.shutdown()  # Ray prints its last buffered worker lines from the main thread
        finally:
            log.stop()
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.everything = False
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        self._saved: tuple[Any, Any, list[logging.Handler], bool] | None = None
        self._fd2: int | None = None  # the terminal's descriptor 2, while descriptor 2 is the file
        self._color: str | None = None
        self._own_terminal: IO[str] | None = None
        #: the terminal's stderr, for a line that must reach the user whichever thread writes it
        self.terminal: Any = sys.stderr

    def start(self) -> None:
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} sfp-ray: Ray's output of this run follows\n")
        logger = logging.getLogger("ray")
        self._saved = (sys.stdout, sys.stderr, list(logger.handlers), logger.propagate)
        self._color = os.environ.get("RAY_COLOR_PREFIX")
        os.environ["RAY_COLOR_PREFIX"] = "0"  # Ray reads it at every line it prints: no colour codes in the file
        self.terminal = sys.stderr
        try:
            self._redirect_fd2()
        except OSError as e:  # no descriptor 2 to speak of: Ray's C++ lines stay where they were
            log.debug("descriptor 2 not redirected: %s", e)
        handler = logging.StreamHandler(self._file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.handlers = [handler]
        logger.propagate = False
        sys.stdout = _Router(sys.stdout, self)  # type: ignore[assignment]
        sys.stderr = _Router(self.terminal, self)  # type: ignore[assignment]

    def _redirect_fd2(self) -> None:
        """Point descriptor 2 at the file; Python's stderr keeps the terminal through a copy of it."""
        assert self._file is not None
        err = sys.stderr
        try:
            on_fd2 = err.fileno() == 2
        except (AttributeError, OSError, ValueError):  # a stand-in without a descriptor (pytest's capsys)
            on_fd2 = False
        err.flush()
        self._fd2 = os.dup(2)
        if on_fd2:
            self._own_terminal = open(os.dup(self._fd2), "w", encoding=getattr(err, "encoding", None) or "utf-8",
                                      errors="backslashreplace", buffering=1)
            self.terminal = self._own_terminal
        os.dup2(self._file.fileno(), 2)

    def write(self, text: str) -> int:
        with self._lock:
            if self._file is None or self._file.closed:
                return len(text)  # after stop(): dropped, never to the terminal
            return self._file.write(text)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None and not self._file.closed:
                self._file.flush()

    @contextlib.contextmanager
    def all_to_file(self) -> Iterator[None]:
        """Everything written to ``sys.stdout``/``sys.stderr`` goes to the file, whichever thread writes it."""
        self.everything = True
        try:
            yield
        finally:
            self.everything = False

    def stop(self) -> None:
        """Put the terminal and the ``ray`` logger back as they were, and close the file."""
        if self._saved is None:
            return
        out, err, handlers, propagate = self._saved
        self._saved = None
        if isinstance(sys.stdout, _Router) and sys.stdout._owner is self:
            sys.stdout = out
        if isinstance(sys.stderr, _Router) and sys.stderr._owner is self:
            sys.stderr = err
        logger = logging.getLogger("ray")
        logger.handlers = handlers
        logger.propagate = propagate
        if self._color is None:
            os.environ.pop("RAY_COLOR_PREFIX", None)
        else:
            os.environ["RAY_COLOR_PREFIX"] = self._color
        if self._fd2 is not None:
            os.dup2(self._fd2, 2)
            os.close(self._fd2)
            self._fd2 = None
        if self._own_terminal is not None:
            self._own_terminal.close()
            self._own_terminal = None
        self.terminal = err
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None


class HeadWatch(threading.Thread):
    """Calls ``on_lost`` once when the Ray head at ``HOST:PORT`` stops accepting connections for ``grace_s``.

    A daemon thread; :meth:`stop` ends it (before the driver disconnects, or a local
    instance's own shutdown would look like a lost head).
    """

    def __init__(self, address: str, on_lost: Callable[[], None], *, grace_s: float = HEAD_GRACE_S,
                 period_s: float = 1.0) -> None:
        super().__init__(name="sfp_ray_head_watch", daemon=True)
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.on_lost = on_lost
        self.grace_s = grace_s
        self.period_s = period_s
        self._stopped = threading.Event()

    def answers(self) -> bool:
        """Whether the head accepts a TCP connection within ``period_s``."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.period_s):
                return True
        except OSError:
            return False

    def run(self) -> None:
        last = time.monotonic()
        while not self._stopped.wait(self.period_s):
            if self.answers():
                last = time.monotonic()
            elif time.monotonic() - last >= self.grace_s and not self._stopped.is_set():
                self.on_lost()
                return

    def stop(self) -> None:
        self._stopped.set()


def ray_running() -> bool:
    """Whether this process is connected to a Ray instance."""
    return ray.is_initialized()


def connected_address() -> str:
    """``HOST:PORT`` of the GCS (the head) of the Ray instance this process is connected to."""
    return ray.get_runtime_context().gcs_address
