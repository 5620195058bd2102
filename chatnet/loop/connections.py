"""The loop's table of open connections, and what the selector watches for each.

It owns the map from connection id to ``Transport``, every selector
registration of a transport (``set_interest``: register, modify, unregister
-- only ever with the mask the transport asked for), the hang-up watch of
paused transports (``chatnet.loop.hangups``), the set of transports waiting to
write (which the stall sweep walks) and, for the log, the peers of
connections closed in this pass.  It must not read or write a socket, nor
decide anything: the transports say what they need, the loop decides.
"""

from .hangups import HangUpWatch
from .transport import WRITE


class Connections(object):
    """Open transports and their registrations; see the module docstring."""

    def __init__(self, selector, on_first_writer):
        self._selector = selector
        self._on_first_writer = on_first_writer   # the loop starts its stall sweep
        self.by_conn = {}                        # conn id -> Transport
        self.writing = set()                      # transports waiting for EVENT_WRITE
        self.hangups = HangUpWatch()
        self._departed = {}                       # conn id -> Transport, closed in this pass

    def __len__(self):
        return len(self.by_conn)

    def get(self, conn):
        return self.by_conn.get(conn)

    def all(self):
        """Every open transport (a list: closing one while walking it is fine)."""
        return list(self.by_conn.values())

    def add(self, transport):
        self.by_conn[transport.conn] = transport
        transport.update_interest()

    def peer(self, conn):
        """``host:port`` of ``conn``, open or closed in this pass, for the log."""
        transport = self.by_conn.get(conn)
        if transport is None:
            transport = self._departed.get(conn)
        return transport.peer if transport is not None else "?"

    def departed(self, conn):
        """The transport of ``conn`` if it closed in this pass (its core may not know yet), or None."""
        return self._departed.get(conn)

    def new_pass(self):
        if self._departed:
            self._departed.clear()

    def set_interest(self, transport, mask, paused):
        """Register exactly ``mask`` for ``transport``; watch a paused one for its hang-up."""
        if paused != transport.watched:
            if paused:
                self.hangups.watch(transport.sock.fileno(), transport)
            else:
                self.hangups.unwatch(transport.sock.fileno())
        if mask & WRITE:
            if not self.writing:
                self._on_first_writer()
            self.writing.add(transport)
        else:
            self.writing.discard(transport)
        if transport.mask == 0:
            if mask:                              # (0: only its hang-up is watched)
                self._selector.register(transport.sock, mask, transport)
        elif mask == 0:
            self._selector.unregister(transport.sock)
        else:
            self._selector.modify(transport.sock, mask, transport)
        transport.registered(mask, paused)

    def forget(self, transport):
        """``transport`` is closing: unregister it everywhere, before its descriptor is reused."""
        if transport.mask:
            self._selector.unregister(transport.sock)
        if transport.watched:
            self.hangups.unwatch(transport.sock.fileno())
        transport.registered(0, False)
        self.writing.discard(transport)
        del self.by_conn[transport.conn]
        self._departed[transport.conn] = transport

    def close(self):
        self.hangups.close()
