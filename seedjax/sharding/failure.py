"""What a process does when a peer dies or a SIGTERM arrives outside the training loop.

Peer loss (multi-process runs). Two paths, both ending in one ``error: lost process ...`` line
on stderr that names the lost process and the last committed checkpoint step, and a non-zero
exit code:

* ``PeerWatchdog``: a daemon thread in every process writes a heartbeat counter into the
  ``jax.distributed`` key-value store every second and reads the others'. A peer whose counter
  has not moved for ``timeout_s`` (``--peer_timeout_s``, default 30 s) is lost: the watchdog
  prints the line and ends the process with ``os._exit(EXIT_PEER_LOST)``, whatever the main
  thread is blocked in (a collective, a checkpoint barrier). jax's own heartbeat timeout is set
  well above it (``jax_heartbeat_timeout``), so jax's C++ abort (SIGABRT plus a stack dump)
  never comes first while the coordinator is alive. A peer that finished normally marks itself
  done first and is not reported. A failed collective in the main thread (gloo reports a dead
  peer at once) waits for the watchdog's verdict (``wait_if_peer_lost``).
* The coordinator (process 0) hosts the key-value store; when it dies, jax's client aborts the
  other processes at once from a C++ thread (no Python hook runs). ``filter_fatal_stderr``
  puts a small filter process on fd 2 that passes everything through except that abort: the
  C++ log lines of the coordination service and the stack dump are replaced by the same one
  line (exit status: SIGABRT, non-zero). ``SEEDJAX_RAW_STDERR=1`` turns the filter off.

SIGTERM outside the training loop (``SigtermGuard``): from the start of the CLI until the
trainer installs its own handler (start-up: jax.distributed, building data, restoring,
checkpoint verification), and again after the loop, a SIGTERM prints one ``status:`` line and
exits with code 0 (like a preemption inside the loop, which finishes the step and saves). It
works while the main thread is blocked in C++ code (a wake-up fd read by a thread).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

EXIT_PEER_LOST = 4
_last_checkpoint: Callable[[], str] = lambda: "none yet"


def set_checkpoint_reporter(fn: Callable[[], str]) -> None:
    """``fn() -> str`` describes the last committed checkpoint (used in the lost-peer line)."""
    global _last_checkpoint
    _last_checkpoint = fn


def last_committed_step(ckpt_dir: str) -> str:
    """'step N in DIR' for the newest committed step folder (orbax's commit file), or 'none'."""
    try:
        steps = sorted((int(n) for n in os.listdir(ckpt_dir) if n.isdigit()
                        and os.path.exists(os.path.join(ckpt_dir, n, "commit_success.txt"))),
                       reverse=True)
    except OSError:
        steps = []
    return f"step {steps[0]} in {ckpt_dir}" if steps else f"none in {ckpt_dir}"


def lost_line(who: str, why: str, last: str) -> str:
    return (f"error: lost {who} ({why}); last checkpoint: {last}; exiting (restart every "
            "process to resume from it)")


def jax_heartbeat_timeout(timeout_s: int) -> int:
    """jax's own heartbeat timeout: far enough above ours that the watchdog reports first."""
    return max(100, 3 * int(timeout_s))


class PeerWatchdog(threading.Thread):
    def __init__(self, client, process_id: int, num_processes: int, timeout_s: float,
                 interval_s: float = 1.0):
        super().__init__(name="seedjax-peer-watchdog", daemon=True)
        self.client, self.pid, self.n = client, process_id, num_processes
        self.timeout_s, self.interval_s = float(timeout_s), interval_s
        self.lost = threading.Event()  # never set: wait_if_peer_lost sleeps on it
        self._stop = threading.Event()

    def run(self) -> None:
        seen = {q: (None, time.monotonic()) for q in range(self.n) if q != self.pid}
        beat = 0
        while not self._stop.is_set():
            beat += 1
            try:
                self.client.key_value_set(f"seedjax/alive/{self.pid}", str(beat),
                                          allow_overwrite=True)
            except Exception:  # noqa: BLE001 (the store lives in process 0)
                if self._stop.is_set():
                    return
                self._exit("process 0 (the coordinator)", "its key-value store is unreachable")
            now = time.monotonic()
            for q, (last, since) in list(seen.items()):
                try:
                    if self.client.key_value_try_get(f"seedjax/done/{q}"):
                        seen.pop(q)
                        continue
                except Exception:  # noqa: BLE001 (not done: the key is absent)
                    pass
                try:
                    value = self.client.key_value_try_get(f"seedjax/alive/{q}")
                except Exception:  # noqa: BLE001 (no heartbeat yet)
                    value = None
                if value != last:
                    seen[q] = (value, now)
                elif now - since > self.timeout_s and not self._stop.is_set():
                    self._exit(f"process {q} of {self.n}",
                               f"no heartbeat for {self.timeout_s:g} s")
            self._stop.wait(self.interval_s)

    def _exit(self, who: str, why: str) -> None:
        # (``self.lost`` stays unset: a main thread waiting in wait_if_peer_lost must not wake
        # up and print its own error before this process ends)
        try:
            last = _last_checkpoint()
        except Exception:  # noqa: BLE001
            last = "unknown"
        print(lost_line(who, why, last), file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_LOST)

    def stop(self) -> None:
        """Normal end: tell the peers this process is done, then stop beating."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.client.key_value_set(f"seedjax/done/{self.pid}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001
            pass


_watchdog: PeerWatchdog | None = None


def start_watchdog(client, process_id: int, num_processes: int, timeout_s: float) -> None:
    global _watchdog
    import atexit
    _watchdog = PeerWatchdog(client, process_id, num_processes, timeout_s)
    _watchdog.start()
    atexit.register(_watchdog.stop)  # runs before jax's own shutdown (registered earlier)


def stop_watchdog() -> None:
    if _watchdog is not None:
        _watchdog.stop()


_PEER_ERROR = re.compile(r"gloo|nccl|connection (reset|closed|refused)|socket closed|"
                         r"unavailable|deadline_exceeded|barrier|peer", re.I)


def wait_if_peer_lost(exc: BaseException) -> None:
    """After an exception in a multi-process run that looks like a dead peer (a failed
    collective), waits up to the watchdog's timeout (+5 s) for it to report the lost process
    and end this one; returns if no peer turned out lost (then it was some other error)."""
    if _watchdog is None or not _PEER_ERROR.search(f"{type(exc).__name__} {exc}"):
        return
    _watchdog.lost.wait(_watchdog.timeout_s + 5)


# ---------------------------------------------------------------- coordinator death: stderr
_FILTER = r"""
import os, re, select, sys, time
ckpt_dir = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from seedjax.sharding.failure import last_committed_step, lost_line
MARK = b"Terminating process because the JAX distributed service detected fatal errors"
cxx = re.compile(rb"^[EWF]\d{4} ")  # a C++ (absl) log line
buf, held, since, fatal = b"", [], 0.0, False
def emit(data):
    os.write(1, data)
while True:
    ready = select.select([0], [], [], 0.2)[0]
    if ready:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            line += b"\n"
            if fatal:
                continue  # the abort's stack dump
            if MARK in line:
                text = b"".join(held).decode(errors="replace")
                m = re.search(r"unhealthy \(stopped sending heartbeats\):\s*(\d+)", text)
                who, why = ((f"process {m.group(1)}", "jax heartbeat timeout") if m else
                            ("process 0 (the coordinator)", "its connection closed"))
                emit((lost_line(who, why, last_committed_step(ckpt_dir)) + "\n").encode())
                fatal, held = True, []
            elif held or cxx.match(line):  # hold C++ log lines briefly: an abort may follow
                held.append(line)
                since = since or time.monotonic()
            else:
                emit(line)
    if held and time.monotonic() - since > 0.5:
        emit(b"".join(held))
        held, since = [], 0.0
if not fatal:
    emit(b"".join(held) + buf)
"""


def filter_fatal_stderr(ckpt_dir: str) -> None:
    """Routes fd 2 through a filter process (see the module doc). Multi-process runs only."""
    if os.environ.get("SEEDJAX_RAW_STDERR") == "1":
        return
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.stderr.flush()
    proc = subprocess.Popen([sys.executable, "-c", _FILTER, ckpt_dir, root],
                            stdin=subprocess.PIPE, stdout=os.dup(2), close_fds=True,
                            start_new_session=True)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()


# ---------------------------------------------------------------- SIGTERM outside the loop
class SigtermGuard:
    """Until another SIGTERM handler is installed (the trainer's), a SIGTERM prints
    ``status: stopped by SIGTERM during <phase> ...`` and exits 0."""

    def __init__(self):
        self.phase = "start-up (before the first training step)"
        self.last_checkpoint: Callable[[], str] = lambda: _last_checkpoint()

    def _handler(self, signum, frame) -> None:  # the wake-up fd does the work
        pass

    def install(self) -> None:
        """Call from the main thread; again after anything that may replace the handler."""
        if getattr(self, "_r", None) is None:
            self._r, w = os.pipe()
            os.set_blocking(w, False)
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, name="seedjax-sigterm", daemon=True).start()
        signal.signal(signal.SIGTERM, self._handler)

    def _watch(self) -> None:
        while True:
            data = os.read(self._r, 64)
            if signal.SIGTERM not in data:
                continue
            if signal.getsignal(signal.SIGTERM) != self._handler:
                continue  # the training loop's handler is in charge (finishes the step, saves)
            try:
                last = self.last_checkpoint()
            except Exception:  # noqa: BLE001
                last = "unknown"
            print(f"status: stopped by SIGTERM during {self.phase}; nothing new to save; last "
                  f"checkpoint: {last}", flush=True)
            sys.stderr.flush()
            os._exit(0)
