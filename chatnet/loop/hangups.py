"""Noticing that a client left while the server was not reading it.

A socket whose reading is paused (flow control, held input) is not watched
for ``EVENT_READ`` -- or ``select`` would report its waiting bytes again and
again.  But then its EOF and its reset go unseen, too: a client that quit
would stay "online" until the pause ended, and messages for it would go into
a dead socket.  ``HangUpWatch`` closes that gap.

On Linux it keeps a second epoll set holding only the paused sockets, each
registered for ``EPOLLRDHUP`` (the peer sent FIN, even with unread data in
front of it) and, implicitly, ``EPOLLHUP``/``EPOLLERR`` (reset).  An epoll
set is itself a descriptor that is readable when one of its events is
ready, so the loop's selector watches this one descriptor for all of them.
Each registration is one-shot: it fires once, and the loop decides.

It owns that epoll set and the map from descriptor to connection; it must
not read, write or close a client socket.  Where ``select.epoll`` or
``EPOLLRDHUP`` does not exist (not Linux), it watches nothing and says so
(``available``): a paused client's departure is then noticed when the pause
ends.
"""

import select

_EPOLL = getattr(select, "epoll", None)
_RDHUP = getattr(select, "EPOLLRDHUP", None)


class HangUpWatch(object):
    """Which paused sockets' peers closed (FIN) or reset; see the module docstring."""

    def __init__(self):
        self.available = _EPOLL is not None and _RDHUP is not None
        self._poll = _EPOLL() if self.available else None
        self._watched = {}                        # fd -> connection

    def fileno(self):
        """The descriptor to watch for reading, or None where nothing is watched."""
        return self._poll.fileno() if self._poll is not None else None

    def watch(self, fd, connection):
        if self._poll is None or fd in self._watched:
            return
        self._poll.register(fd, _RDHUP | select.EPOLLONESHOT)
        self._watched[fd] = connection

    def unwatch(self, fd):
        if self._watched.pop(fd, None) is not None:
            try:
                self._poll.unregister(fd)
            except (OSError, ValueError):
                pass

    def hung_up(self):
        """``(connection, reset)`` for each watched socket whose peer left, once each."""
        for fd, events in self._poll.poll(0):
            connection = self._watched.get(fd)
            if connection is None:
                continue
            self.unwatch(fd)
            yield connection, bool(events & (select.EPOLLERR | select.EPOLLHUP))

    def close(self):
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        self._watched.clear()
