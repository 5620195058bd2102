"""Who stops being read, and how much a read may bring: the core's flow control.

The core (``chatnet.core.machine``) asks the reactor to stop reading a connection
(``PauseReading``) while at least one of these reasons holds, and to read it
again (``ResumeReading``) when none is left:

* ``HELD_INPUT``: the input held for the session -- waiting for a password
  check, a delay or a lookup, or not logged in yet -- has reached its limit;
* ``OWN_QUEUE``: the reactor reported the connection's own send queue full
  (``SendQueueFull``): a client that does not read its replies is not given
  more to reply to;
* ``DISK``: the messages it stored wait for the disk beyond their bound
  (``StoresWaiting``, from the durability cork): a sender is not read
  faster than its stores are committed, so a slow or frozen disk costs
  bounded memory, whatever ``--store-limit`` allows;
* ``(PARTNER_QUEUE, conn)``: the connection relayed a message to ``conn``
  while its send queue was full.  Only a connection that actually sends to
  a slow reader waits -- not everyone whose partner it is -- so a watcher
  that does not write can still pick someone else.

A client that closes while it is paused (``HungUp``) is held back no longer:
what it sent before leaving is read and handled, then its EOF ends the
session, so it does not stay online as a ghost.  Only ``HELD_INPUT`` still
applies to it (that wait is short and bounded).

Memory before login
-------------------
Before login, and while a session waits, its input is held, so a read must
bring only what fits: ``ReadAtMost`` tells the reactor how much.  Per
session that is ``hold_limit`` minus what is held, and before login at most
``login_read`` a read: a login frame and the lines sent with it, not the
whole hold limit reserved for every newcomer -- at 64 KiB a read, 256 clients
used up the budget and the rest of a storm was paused and resumed while
their password checks waited, a log line and two ``epoll`` changes each.
The session still reads on, a read at a time, up to ``hold_limit``.  Before login there is
also a budget for all sessions together (``unauthenticated_budget``), kept
with credit, as HTTP/2 keeps its windows: a read granted to a session is
reserved in the budget until it is used or taken back, so the bound is exact.
A login frame always fits (16 bytes), or a full budget would keep everyone
out.  Sessions that found the budget used up wait in ``_waiting_for_room``,
in order, and are let read again as room frees -- first come, first
served, and only until one finds no room: the budget is shared, so the ones
after it would find none either.  (Offering the room to every waiting
session at every change made a storm of 1,000 logins cost 180,000 checks.)

``ReadingGate`` owns the reasons, the hold-backs and the budget.  It is pure,
like the core: it emits actions through the function it is given.
"""

import collections

from .. import wire
from .events import LimitReached, PauseReading, ReadAtMost, ResumeReading
from .phases import LOGIN_PHASES, Phase

HELD_INPUT = "held input"
OWN_QUEUE = "own send queue"
DISK = "stores waiting for the disk"
PARTNER_QUEUE = "partner's send queue"


class ReadingGate(object):
    """Pause reasons, hold-backs and the before-login budget; see the module docstring."""

    def __init__(self, hold_limit, login_read, budget, sessions, emit):
        self._hold_limit = hold_limit
        self._login_read = login_read        # the most one read brings before login
        self._budget = budget
        self._sessions = sessions            # the core's conn -> Session (read only)
        self._emit = emit                    # the core's way to add an action
        self._held_back = {}                 # conn with a full send queue -> conns paused for it
        self._unauthenticated = 0            # input bytes held or granted before login, together
        self._waiting_for_room = collections.OrderedDict()   # conns paused for room, in order
        self._letting_in = False             # _let_waiting_read is running (no re-entry)

    @property
    def unauthenticated_bytes(self):
        return self._unauthenticated

    # ---------------------------------------------------------------- held input

    def limit(self, session):
        """Keep what is held for ``session`` within its limits; pause or grant a read."""
        room = self._room_for_input(session)
        if room is not None and room <= 0:
            if HELD_INPUT not in session.pause_reasons:
                self._emit(LimitReached(session.conn, "held input", "%d bytes wait%s" % (
                    len(session.held), "" if session.held else
                    "; unauthenticated connections hold %d bytes" % self._unauthenticated)))
            self.pause(session, HELD_INPUT)
            room = 0
        else:
            self.unpause(session, HELD_INPUT)
            if room != session.read_limit:
                self._emit(ReadAtMost(session.conn, room))
        session.read_limit = room
        self._count_unauthenticated(session)

    def _room_for_input(self, session):
        """How many more input bytes ``session`` may take; None when it may read freely."""
        phase = session.phase
        if phase is Phase.CHATTING and not session.held and session.backlog is None:
            return None
        held = len(session.held)
        room = self._hold_limit - held
        if phase in LOGIN_PHASES:
            if room > self._login_read:
                room = self._login_read
            others = self._unauthenticated - session.counted_held
            budget_left = self._budget - others - held
            if phase is Phase.LOGIN:
                budget_left = max(budget_left, wire.FRAME_SIZE - held)
            if budget_left < room:
                room = budget_left
                if room <= 0:
                    self._waiting_for_room[session.conn] = None
        return room

    def _count_unauthenticated(self, session):
        """Count what ``session`` holds, and the read it was granted, against the budget."""
        counted = 0
        if session.phase in LOGIN_PHASES:
            counted = len(session.held) + (session.read_limit or 0)
        change = counted - session.counted_held
        if change:
            session.counted_held = counted
            self._unauthenticated += change
            if change < 0 and self._waiting_for_room and not self._letting_in:
                self._let_waiting_read()

    def _let_waiting_read(self):
        """Room freed: the sessions waiting for it read again, in order, while it lasts."""
        waiting = self._waiting_for_room
        self._letting_in = True
        try:
            while waiting:
                conn, _ = waiting.popitem(last=False)
                session = self._sessions.get(conn)
                if session is None:
                    continue
                self.limit(session)              # puts it back if there is no room yet
                if conn in waiting:
                    waiting.move_to_end(conn, last=False)    # it keeps its place, first
                    return
        finally:
            self._letting_in = False

    # ---------------------------------------------------------------- reasons

    def pause(self, session, reason):
        if reason in session.pause_reasons or (session.hung_up and reason is not HELD_INPUT):
            return
        if not session.pause_reasons:
            session.pause_reasons = set()
            self._emit(PauseReading(session.conn))
        session.pause_reasons.add(reason)

    def unpause(self, session, reason):
        if reason not in session.pause_reasons:
            return
        session.pause_reasons.discard(reason)
        if not session.pause_reasons:
            self._emit(ResumeReading(session.conn))

    def hold_back(self, sender, full_conn):
        """Pause ``sender``: what it relays piles up at ``full_conn``."""
        self._held_back.setdefault(full_conn, set()).add(sender.conn)
        self.pause(sender, (PARTNER_QUEUE, full_conn))

    def release_held_back(self, full_conn):
        for conn in self._held_back.pop(full_conn, ()):
            sender = self._sessions.get(conn)
            if sender is not None:
                self.unpause(sender, (PARTNER_QUEUE, full_conn))

    def hung_up(self, session):
        """Nobody waits for a client that has left: only its held input still pauses it."""
        session.hung_up = True
        for reason in list(session.pause_reasons):
            if reason is not HELD_INPUT:
                self.unpause(session, reason)

    def forget(self, session):
        """``session`` ended (its phase is CLOSED): its holds, its budget, its hold-backs."""
        self._waiting_for_room.pop(session.conn, None)
        self._count_unauthenticated(session)
        self.release_held_back(session.conn)
        for senders in self._held_back.values():
            senders.discard(session.conn)

    def release_all_held_back(self):
        """The server stops: nobody is held back for anybody -- a slow reader will not drain
        now, and what its senders sent before the goodbye must still be read."""
        for full_conn in list(self._held_back):
            self.release_held_back(full_conn)
