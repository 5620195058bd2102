"""How the loop's ``select`` is interrupted: by worker threads, by signals, by a stop request.

``WakeUp`` owns a socket pair whose reading end the loop watches.  Worker
threads (password checks, lookups, the database writer) write a byte when a
result waits; ``signal.set_wakeup_fd`` makes the C signal handler write one
too, because Python retries an interrupted ``select`` (PEP 475) and a flag
alone would wait for the next event.  The Python-level handlers only set
flags, which the loop reads between passes: a handler runs wherever the main
thread happens to be (in the middle of writing a log line, say), so it must
not touch anything else.

It owns the pair and the flags; it must not run anything on the loop's behalf.
"""

import signal
import socket


class WakeUp(object):
    """The loop's wake-up descriptor and the stop and reload flags; see the module docstring."""

    def __init__(self):
        self.reader, self._writer = socket.socketpair()
        for end in (self.reader, self._writer):
            end.setblocking(False)
        self.stop_requested = False
        self.stopped_by = "asked to stop"     # or the signal's name
        self.reload_requested = False

    def wake(self):
        """Make a waiting ``select`` return (safe from any thread)."""
        try:
            self._writer.send(b"\0")
        except OSError:          # full (a wake-up is pending anyway) or closed
            pass

    def drain(self):
        """Read the wake-up bytes (their number means nothing)."""
        try:
            while len(self.reader.recv(4096)) == 4096:    # usually one byte, one call
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def request_stop(self):
        self.stop_requested = True
        self.wake()

    def install_signal_handlers(self, reload_wanted):
        """SIGTERM and SIGINT request a stop; SIGHUP a reload, or nothing (main thread only)."""
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hangup_signal if reload_wanted else signal.SIG_IGN)

    def take_reload(self):
        """True once per SIGHUP."""
        wanted, self.reload_requested = self.reload_requested, False
        return wanted

    def _on_stop_signal(self, signum, frame):
        self.stop_requested = True
        self.stopped_by = signal.Signals(signum).name

    def _on_hangup_signal(self, signum, frame):
        self.reload_requested = True

    def close(self):
        self.reader.close()
        self._writer.close()
