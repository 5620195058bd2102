"""How connections leave the loop: water-mark edges, drops, contained bugs, undelivered messages.

``Departures`` holds the loop's answers to "this connection went wrong or
ends": what a transport's water marks said (tell the core its queue is full
or drained, drop a client over the hard limit or one whose socket broke,
close one that finished), dropping a slow reader (with a last notice if it
fits), dropping any connection the core still thinks is open (telling the
core first), and containing an unexpected exception to the one connection it
happened on.

Every connection ends through ``close``, and closing flows one way, as
asyncio's ``_force_close`` -> ``_call_connection_lost`` does::

    take what it never delivered  (the stored deliveries, then the transport)
    -> give it back to the core   (``Undelivered``, through ``feed``)
    -> the loop forgets it        (unregistered before its descriptor is reused)
    -> the transport closes its socket

It owns those rules and nothing else: the core decides what follows; the
transport closes its socket; the loop (``feed``) carries inputs.
"""

import logging

from .. import wire
from ..core.events import ConnectionLost, SendQueueDrained, SendQueueFull, Undelivered
from .transport import BROKEN, DRAINED, FINISHED, FULL, OVERFLOW

log = logging.getLogger("chatnet.server")

NOTICE_SEND_QUEUE = wire.notice("you are not reading your messages, closing the connection")

#: Seconds a dropped slow reader's last notice has to arrive before the reset.
DROP_LINGER = 1.0


class Departures(object):
    """The loop's rules for connections that go wrong or end; see the module docstring."""

    def __init__(self, feed, hard_limit, strict, stored, forget, transport, now, call_at):
        self._feed = feed
        self._hard_limit = hard_limit      # send queue bytes over which a client is dropped
        self._strict = strict              # tests: a bug is raised, not contained
        self._stored = stored              # StoredDeliveries: which stored rows it had
        self._forget = forget              # the loop forgets a closing transport everywhere
        self._transport = transport        # conn -> its open Transport, or None
        self._now = now                    # the time of this pass
        self._call_at = call_at            # the loop's timers

    def edge(self, transport, edge):
        """What a transport's water marks said: tell the core, or drop the client."""
        if edge is FULL:
            self._feed(SendQueueFull(transport.conn))
        elif edge is DRAINED:
            self._feed(SendQueueDrained(transport.conn))
        elif edge is OVERFLOW:
            self.drop_slow_reader(transport, "%d bytes wait to be sent, over the limit of %d" % (
                transport.live_bytes_waiting(), self._hard_limit))
        elif edge is BROKEN:
            self.drop(transport, transport.failure)
        elif edge is FINISHED:
            self.close(transport, clean=True)

    def drop_slow_reader(self, transport, why):
        """Drop a client that does not read fast enough -- after its last notice had a moment.

        The notice is the last thing it is sent, right after the line under way
        (``Transport.last_word``); everything else waits aside.  The drop itself
        comes ``DROP_LINGER`` seconds later, so a client that does read gets the
        notice before the reset (which must come: what its TCP never
        acknowledged goes back into the store, and the kernel must not deliver
        it as well).  Meanwhile the core still counts it online, so what is
        relayed to it waits aside in order and goes back with the rest; its
        senders are paused already.
        """
        if transport.closed or transport.dropping:
            return                                      # dropped already: once is enough
        log.warning("connection %d from %s dropped: it does not read (%s)",
                    transport.conn, transport.peer, why)
        if transport.user_id is not None:
            self._stored.stop(transport)                # stored rows not started stay stored
        transport.last_word(NOTICE_SEND_QUEUE)
        transport.pause_reading()
        self._call_at(self._now() + DROP_LINGER, self._finish_drop, transport)

    def _finish_drop(self, transport):
        if not transport.closed:
            self.drop(transport, "slow reader")

    def drop(self, transport, reason):
        """Close a connection the core still thinks is open, and tell the core."""
        log.debug("connection %d from %s: %s", transport.conn, transport.peer, reason)
        if transport.core_lets_go():
            self._feed(ConnectionLost(transport.conn))  # first: the session ends, then ...
        self.close(transport)                           # ... what it never got goes elsewhere

    def close(self, transport, clean=False):
        """The one way a connection ends (see the module docstring); ``clean``: a TLS
        stream ends with ``close_notify``."""
        if transport.closed:
            return
        if transport.user_id is not None:
            acked = transport.acknowledged()            # one TCP_INFO read serves both
            self._stored.stop(transport)
            self._stored.settle(transport, acked is not None)
            self.give_back(transport, transport.take_undelivered(acked))
        self._forget(transport)
        transport.close(clean)

    def failed(self, transport, error):
        """Reading or writing ``transport`` raised ``error`` unexpectedly: drop it alone."""
        if self._strict:
            raise error
        log.error("internal error on connection %d from %s; closing it",
                  transport.conn, transport.peer, exc_info=error)
        try:
            self.drop(transport, "internal error")
        except Exception:
            log.exception("internal error while closing connection %d", transport.conn)

    def contain(self, event, error):
        """The core or an action raised ``error`` on ``event``: close that event's connection only.

        The core hears ``ConnectionLost`` (through the FIFO, after the input
        being handled), so a session it may hold half-changed is forgotten.
        """
        if self._strict:
            raise error
        conn = getattr(event, "conn", None)
        log.error("internal error while handling %s; closing connection %s",
                  type(event).__name__, conn, exc_info=error)
        transport = self._transport(conn)
        if transport is not None:
            transport.core_lets_go()
            self.close(transport)
        if conn is not None and type(event) is not ConnectionLost:     # not again and again
            self._feed(ConnectionLost(conn))

    def give_back(self, transport, messages):
        """Relay messages the closed ``transport`` never delivered, ``(sender, text)``: to the core."""
        if messages:
            log.info("connection %d from %s ended with %d message%s undelivered; kept",
                     transport.conn, transport.peer, len(messages), "" if len(messages) == 1 else "s")
            self._feed(Undelivered(transport.conn, transport.user_id, tuple(messages)))

