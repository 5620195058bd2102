"""Talking to systemd: readiness, reloads, stopping, the watchdog, and the journal's log format.

``Notifier`` speaks the ``sd_notify`` datagram protocol with the standard
library alone: one ``AF_UNIX`` datagram per state change to the socket named
by ``$NOTIFY_SOCKET`` (a path, or an abstract name starting with ``@``):
``READY=1`` once the server listens, ``RELOADING=1`` then ``READY=1`` around a
SIGHUP, ``STOPPING=1`` at shutdown, and ``WATCHDOG=1`` every half
``$WATCHDOG_USEC`` -- sent *from the loop's own timer*, so a loop that hangs
stops feeding the watchdog and systemd restarts the service.  Without
``$NOTIFY_SOCKET`` there is no notifier and nothing is sent.

``journal_formatter`` is the log format for stderr connected to the journal
(``$JOURNAL_STREAM``): no timestamp of its own (the journal keeps one) and a
syslog priority prefix (``<4>`` for a warning) that the journal reads.

It must not know anything about chat: the server module wires it in.
"""

import logging
import os
import socket
import time


class Notifier(object):
    """Sends ``sd_notify`` states; best effort (systemd may be gone)."""

    def __init__(self, address, watchdog_seconds=None):
        self._address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        #: How often the loop must send WATCHDOG=1 (half the timeout), or None.
        self.watchdog_interval = watchdog_seconds / 2 if watchdog_seconds else None

    @classmethod
    def from_environment(cls, environ=os.environ):
        """A notifier when systemd asked for one (``$NOTIFY_SOCKET``), else None."""
        name = environ.get("NOTIFY_SOCKET")
        if not name:
            return None
        address = "\0" + name[1:] if name.startswith("@") else name
        watchdog = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1e6
        return cls(address, watchdog)

    def notify(self, *states):
        try:
            self._sock.sendto("\n".join(states).encode("ascii"), self._address)
        except OSError:
            pass

    def ready(self):
        self.notify("READY=1", "STATUS=serving")

    def reloading(self):
        # MONOTONIC_USEC lets Type=notify-reload match the reload (systemd 253+).
        self.notify("RELOADING=1", "MONOTONIC_USEC=%d" % int(time.monotonic() * 1e6))

    def stopping(self):
        self.notify("STOPPING=1")

    def watchdog(self):
        self.notify("WATCHDOG=1")

    def close(self):
        self._sock.close()


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>name: message``: the journal adds the time and reads the priority."""

    def format(self, record):
        text = logging.Formatter.format(self, record)
        priority = _PRIORITY.get(record.levelno, 6)
        return "\n".join("<%d>%s" % (priority, line) for line in text.splitlines())


def logging_to_journal(stream, environ=os.environ):
    """True when ``stream`` is the journal's: ``$JOURNAL_STREAM`` names its device and inode."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def journal_formatter():
    return JournalFormatter("%(name)s: %(message)s")
