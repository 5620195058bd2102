"""The durability cork: no reply leaves before the stored messages it follows are on disk.

The guarantee (PROTOCOL.md section 6)
-------------------------------------
*A message accepted into a store is on disk before its sender can see any
reply to a later line.*  ``DurabilityCork`` enforces it like this: the first
``StoreMessage`` of a loop pass opens the pass's SQLite transaction, and
from that moment the cork is **engaged** -- every transport's ``write``
only queues, and the transport is *held* here.  At the pass's commit step
``release()`` commits once for all of the pass's stores (group commit) and
only then hands the held transports back to be written.  So no byte
produced after a store can leave before that store's commit.

If a store or the commit fails (a full disk, a lock held elsewhere, a file
that became read-only), none of the pass's stores can be trusted to be on
disk: each sender gets ``the server could not store your message`` spliced
into its unsent bytes exactly where the message was (``StoreMessage`` said
where: ``Transport.stream_end`` when it was stored), so no later reply
overtakes it, and the core hears ``StoreFailed``.  Stores then fail fast for
``BACKOFF`` seconds, so chat is not stalled on the lock again and again.

It also deletes delivered stored rows (``chatnet.stored``) in the same
transactions, under the same back-off, and notices a database file deleted
or replaced under the running server (``check_file``): stores are refused
from then on, since they would be lost at the stop.

It owns the transaction, the positions of uncommitted stores and the
back-off.  It must not send or decide anything itself: it tells its loop
(``transport``, ``feed``, ``warn``, ``now``) what happened.
"""

import logging
import sqlite3

from .events import StoreFailed

log = logging.getLogger("chatnet.server")

#: After a failed write, stores fail fast this long (seconds).
BACKOFF = 1.0


class DurabilityCork(object):
    """Group commit, and the cork that makes it a guarantee; see the module docstring."""

    def __init__(self, storage, stored, loop):
        self._storage = storage
        self._stored = stored
        self._loop = loop
        self._uncommitted = []         # (StoreMessage, its position in the sender's stream)
        self._held = {}                # conn -> transport whose output waits for the commit
        self._down_until = 0.0         # stores fail fast until then
        self.file_lost = False         # the database file was deleted or replaced under us

    @property
    def engaged(self):
        """True while stores of this pass wait for their commit: output must wait too."""
        return self._storage.in_transaction

    def hold(self, transport):
        self._held[transport.conn] = transport

    # ---------------------------------------------------------------- stores

    def store(self, action):
        """Write one ``StoreMessage`` into the pass's transaction (or fail it in place)."""
        sender = self._loop.transport(action.sender_conn)
        position = sender.stream_end() if sender is not None else 0
        if self._loop.now < self._down_until or self.file_lost:
            self._fail([(action, position)])
            return
        try:
            self._storage.store_message(action.recipient.decode("ascii"),
                                        action.sender.decode("ascii"), action.text)
        except sqlite3.IntegrityError as error:
            # This one message cannot be stored (its recipient was just removed).
            log.info("a message for %r was not stored: %s", action.recipient, error)
            self._fail([(action, position)])
            return
        except sqlite3.Error as error:
            self._uncommitted.append((action, position))     # fails with the rest
            self._abandon("store a message", error)
            return
        self._uncommitted.append((action, position))

    def release(self):
        """The pass's commit step: commit, then return the transports whose output may go now."""
        if self._storage.in_transaction:
            try:
                self._storage.commit()
                self._uncommitted = []
                self._stored.committed()
            except sqlite3.Error as error:
                self._abandon("commit", error)
        held, self._held = self._held, {}
        return held.values()

    def delete_delivered(self):
        """Delete delivered stored rows in the transaction, unless the database backs off."""
        error = self._stored.delete_delivered(self._loop.now < self._down_until)
        if error is not None:
            # They stay marked delivered, so nobody gets them again; retried later.
            self._abandon("delete delivered messages", error)

    def _abandon(self, what, error):
        """A write failed: roll back, tell every sender in the transaction, back off a moment.

        SQLite may already have rolled the whole transaction back (a full disk
        does that), so none of its stores can be trusted to be on disk.
        """
        self._loop.warn("database write", "cannot %s in the database (%s); stored messages are "
                        "refused for %.0f s, live chat goes on", what, error, BACKOFF)
        self._down_until = self._loop.now + BACKOFF
        try:
            self._storage.rollback()
        except sqlite3.Error:
            pass
        self._stored.rolled_back()
        failed, self._uncommitted = self._uncommitted, []
        self._fail(failed)

    def _fail(self, failed):
        """Put each failure notice where its message was in the sender's stream; tell the core.

        Nothing produced since the first store has been sent yet (the cork),
        so every position is still in the unsent bytes.  All notices go in
        before the core hears of any failure, because telling it may send.
        """
        for action, position in reversed(failed):     # latest first: no position shifts
            sender = self._loop.transport(action.sender_conn)
            if sender is not None:
                sender.insert_at(position, action.failure_notice)
                self.hold(sender)
        for action, _ in failed:
            self._loop.feed(StoreFailed(action.sender_conn, action.recipient))

    # ---------------------------------------------------------------- the file

    def check_file(self):
        """Is the database file still the one at its path?  (``rm chat.db*``.)  False once lost."""
        if not self.file_lost and not self._storage.file_in_place():
            self.file_lost = True
            guarded = self._storage.guard_path()
            log.warning("the database file %s was deleted or replaced while the server runs: "
                        "stored messages are refused from now on (they would be lost at the "
                        "stop); live chat goes on; restart the server to use the file at that path%s",
                        self._storage.path, "" if guarded else " (its path cannot be locked)")
        return not self.file_lost
