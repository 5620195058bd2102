"""How connections leave the loop: water-mark edges, drops, contained bugs, undelivered messages.

``Departures`` holds the loop's answers to "this connection went wrong":
what a transport's water marks said (tell the core its queue is full or
drained, or drop a client over the hard limit, or one whose socket broke),
dropping a slow reader (with a last notice if it fits), dropping any
connection the core still thinks is open (telling the core first, so what it
never got goes elsewhere), containing an unexpected exception to the one
connection it happened on, and handing the core what a closing connection
never delivered (``Undelivered``).

It owns those rules and nothing else: the core decides what follows; the
transport closes its socket; the loop (``feed``) carries inputs.
"""

import logging

from .. import wire
from ..core.events import ConnectionLost, SendQueueDrained, SendQueueFull, Undelivered
from .transport import BROKEN, DRAINED, FULL, OVERFLOW

log = logging.getLogger("chatnet.server")

NOTICE_SEND_QUEUE = wire.notice("you are not reading your messages, closing the connection")


class Departures(object):
    """The loop's rules for connections that go wrong or end; see the module docstring."""

    def __init__(self, feed, hard_limit, strict):
        self._feed = feed
        self._hard_limit = hard_limit      # send queue bytes over which a client is dropped
        self._strict = strict              # tests: a bug is raised, not contained

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

    def drop_slow_reader(self, transport, why):
        log.warning("connection %d from %s dropped: it does not read (%s)",
                    transport.conn, transport.peer, why)
        transport.last_word(NOTICE_SEND_QUEUE)
        self.drop(transport, "slow reader")

    def drop(self, transport, reason):
        """Close a connection the core still thinks is open, and tell the core."""
        log.debug("connection %d from %s: %s", transport.conn, transport.peer, reason)
        if transport.core_lets_go():
            self._feed(ConnectionLost(transport.conn))  # first: what it never got goes elsewhere
        transport.close()

    def failed(self, transport):
        """Reading or writing ``transport`` raised something unexpected: drop it alone.

        Called from the ``except`` that caught it (so ``strict`` re-raises that).
        """
        if self._strict:
            raise
        log.exception("internal error on connection %d from %s; closing it",
                      transport.conn, transport.peer)
        try:
            self.drop(transport, "internal error")
        except Exception:
            log.exception("internal error while closing connection %d", transport.conn)

    def keep_undelivered(self, transport):
        """What the peer's TCP never acknowledged, or that never left: back to the core."""
        self.give_back(transport, transport.take_undelivered())

    def give_back(self, transport, messages):
        """Relay messages the closed ``transport`` never delivered, ``(sender, text)``: to the core."""
        if messages:
            log.info("connection %d from %s ended with %d message%s undelivered; kept",
                     transport.conn, transport.peer, len(messages), "" if len(messages) == 1 else "s")
            self._feed(Undelivered(transport.conn, transport.user_id, tuple(messages)))

