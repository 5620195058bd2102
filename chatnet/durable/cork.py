"""The durability cork: no reply leaves before the stored messages it follows are on disk.

The guarantee (seeds/PROTOCOL.md section 6)
-------------------------------------------
*A message accepted into a store is on disk before its sender can see any
reply to a later line.*  ``DurabilityCork`` enforces it: when a session
stores a message, its sender's transport is **corked** -- everything for it
waits in its queue (``Transport.hold(CORK)``) -- until the batch holding that message has
been committed by the storage thread (``chatnet.workers.StorageWriter``).
Each loop pass hands the thread one batch, the pass's stores and the
delivered rows to delete, committed as one transaction (group commit).
Nobody else waits: a slow disk delays the senders whose messages it is
writing, and the loop goes on serving everyone else.

If the batch fails (a full disk, a lock held elsewhere, a file that became
read-only), none of its stores is on disk: each sender gets ``the server
could not store your message`` spliced into its unsent bytes exactly where
the message was (its position, ``Transport.stream_end`` when it was stored),
so no later reply overtakes it, and the core hears ``StoreFailed``.  Stores
then fail at once for ``BACKOFF`` seconds, and so do deletes, so chat is not
stalled on the lock again and again.

Back-pressure from the disk
---------------------------
A cork holds a sender's output, not its input: a disk slower than the
senders (a frozen file system, a lock another program holds, a huge store
limit) would otherwise pile their stores up in memory without end.  So the
cork counts what each sender's uncommitted stores hold (their text plus
``STORE_OVERHEAD`` each) and tells the core ``StoresWaiting`` when that
passes ``SENDER_BOUND``, or when all senders' together pass ``TOTAL_BOUND``
(then for every sender with stores waiting): the core stops reading it.
``StoresCommitted`` follows when its own count is below half its bound and
the total below half of its.  So uncommitted stores hold at most about
``TOTAL_BOUND``, plus one read (64 KiB) for each sender paused.

Two more things wait for commits, so that what they read includes every
store made before them -- for their account, and nothing else, so a frozen
disk stalls only those who depend on what it is writing: a login's stored
delivery, when stores for that account are still on their way
(``deliver``), and account lookups, when stores or deletes for that account
are (``after_stores_of``).  And ``check_file`` notices a database file deleted or
replaced under the running server: stores are refused from then on, since
they would be lost at the stop.

It owns the batches in flight, the corks, the positions of stores not yet
committed and the back-off.  It *pushes* a cork to the sender's transport
(``hold(CORK)``, ``release(CORK)``): the transport never reads the cork.  It
must not send or decide anything itself: it is handed the few things of the
loop it uses (``now``, ``clock``, ``warn``, ``feed``, ``writable``,
``transport``) and tells them what happened.
"""

import collections
import logging

from ..core.events import StoreFailed, StoresCommitted, StoresWaiting
from .workers import Batch

log = logging.getLogger("chatnet.server")

#: After a failed write, stores (and deletes) fail fast this long (seconds).
BACKOFF = 1.0

#: What one sender's stores may hold in memory while they wait for a commit,
#: and all senders' together, before the senders are not read (bytes).  One
#: sender still stores about 10 MB/s at a 5 ms commit.
SENDER_BOUND = 64 * 1024
TOTAL_BOUND = 8 * 1024 * 1024
#: Counted per store besides its text: the action, its place in the batch.
STORE_OVERHEAD = 256


class DurabilityCork(object):
    """Group commit on the storage thread, and the cork that makes it a guarantee."""

    def __init__(self, writer, stored, storage, metrics, now, clock, warn, feed, writable,
                 transport):
        self._writer = writer
        self._stored = stored
        self._storage = storage        # for the file check only: it writes nothing here
        self._now = now                # the time of this pass
        self._clock = clock            # the time now (commit latency)
        self._warn = warn              # a rate-limited warning
        self._feed = feed              # an input for the core
        self._writable = writable      # write this transport in this pass's write step
        self._transport = transport    # conn -> its open Transport, or None
        self._metrics = metrics        # commit latency and failures, when measured
        self._submitted_at = {}        # batch number -> when it was handed over
        self._pass_stores = []         # (StoreMessage, position) stored in this pass
        self._in_flight = {}           # batch number -> Batch the thread is writing
        self._going_back_in_flight = {}   # batch number -> its stores going back (sender None)
        self._next_number = 1
        #: conn -> its stores not yet committed (its transport is held while there are any).
        self.corked = collections.Counter()
        self._waiting_bytes = collections.Counter()   # conn -> what its uncommitted stores hold
        self._waiting_total = 0
        self._behind = set()           # senders told StoresWaiting, not yet StoresCommitted
        self._recipients = collections.Counter()   # account -> stores for it not yet committed
        self._deliveries = {}          # account -> transports waiting to read its store
        self._waiting_on = {}          # account -> [(function, argument)] to run once committed
        #: StoreMessages of undelivered messages waiting for a batch the database takes: never
        #: dropped, so bounded only by what the connections that ended held (each at most its
        #: send queue limit plus what its kernel held unacknowledged).
        self._going_back = []
        self._down_until = 0.0
        self.file_lost = False         # the database file was deleted or replaced under us

    def holds(self, transport):
        """True while ``transport``'s output must wait for a commit."""
        return transport.conn in self.corked

    def in_flight(self):
        return bool(self._in_flight or self._pass_stores or self._going_back
                    or self._stored.has_deletes())

    def waiting_bytes(self):
        """What the stores of connected senders waiting for a commit hold (``TOTAL_BOUND`` above)."""
        return self._waiting_total

    def going_back(self):
        """Undelivered messages not yet stored again: waiting, or in a batch on its way."""
        # Counted per batch when it is made, not walked here: the exit asks this every
        # 50 ms while hundreds of thousands of them may wait (a walk each time made
        # stopping quadratic).  Between passes no going-back store is in _pass_stores.
        return len(self._going_back) + sum(self._going_back_in_flight.values())

    # ---------------------------------------------------------------- stores and batches

    def store(self, action):
        """A ``StoreMessage``: into this pass's batch (or failed in place, while backing off).

        A message going back into the store (``sender_conn`` None: a connection
        never delivered it) is never refused: it waits for the next batch the
        database takes (``_going_back``).
        """
        self._stored.noted_store(action.recipient)       # its store is read at the next login
        if action.sender_conn is None:
            self._recipients[action.recipient] += 1       # a login's delivery waits for it
            self._going_back.append(action)
            return
        sender = self._transport(action.sender_conn)
        position = sender.stream_end() if sender is not None else 0
        if self._now() < self._down_until or self.file_lost:
            self._fail([(action, position)])
            return
        self._pass_stores.append((action, position))
        self.corked[action.sender_conn] += 1
        if self.corked[action.sender_conn] == 1 and sender is not None:
            sender.hold(sender.CORK)
        self._recipients[action.recipient] += 1
        self._count_waiting(action, +1)

    def _count_waiting(self, action, sign):
        """Count a sender's store waiting for a commit (+1) or done (-1); pause or resume it."""
        conn, size = action.sender_conn, sign * (len(action.text) + STORE_OVERHEAD)
        self._waiting_bytes[conn] += size
        self._waiting_total += size
        if sign > 0:
            if conn not in self._behind and (self._waiting_bytes[conn] >= SENDER_BOUND
                                             or self._waiting_total >= TOTAL_BOUND):
                self._behind.add(conn)
                self._feed(StoresWaiting(conn))
            return
        if not self._waiting_bytes[conn]:
            del self._waiting_bytes[conn]

    def _resume_caught_up(self):
        """Senders whose stores are (nearly) on disk are read again."""
        if self._waiting_total >= TOTAL_BOUND // 2:
            return
        for conn in [conn for conn in self._behind
                     if self._waiting_bytes.get(conn, 0) < SENDER_BOUND // 2]:
            self._behind.discard(conn)
            self._feed(StoresCommitted(conn))

    def release(self):
        """The pass's commit step: hand this pass's stores and deletes to the storage thread."""
        deletes = []
        waiting = self._going_back or self._stored.has_deletes()
        if not waiting and not self._pass_stores:        # most passes: nothing to commit
            return
        going_back = 0
        if waiting and self._now() >= self._down_until:
            if self._stored.has_deletes():
                deletes = self._stored.take_deletes()
            if self._going_back and not self.file_lost:
                # Older than anything stored in this pass: they go first.
                going_back = len(self._going_back)
                self._pass_stores[:0] = [(action, 0) for action in self._going_back]
                self._going_back = []
        if not self._pass_stores and not deletes:       # most passes: nothing to commit
            return
        batch = Batch(self._next_number, self._pass_stores, deletes)
        self._next_number += 1
        self._pass_stores = []
        self._in_flight[batch.number] = batch
        if going_back:
            self._going_back_in_flight[batch.number] = going_back
        self._submitted_at[batch.number] = self._now()
        self._writer.submit(batch)

    def finished(self, batch):
        """The storage thread wrote ``batch``: failures in place, corks off, waiters on."""
        del self._in_flight[batch.number]
        self._going_back_in_flight.pop(batch.number, None)
        submitted_at = self._submitted_at.pop(batch.number)
        if self._metrics is not None:
            self._metrics.commit_latency.observe(max(0.0, self._clock() - submitted_at))
            if batch.error is not None:
                self._metrics.database_failed()
        if batch.error is not None:
            self._warn("database write", "cannot %s in the database (%s); stored messages "
                            "are refused for %.0f s, live chat goes on",
                            "store messages" if batch.stores else "delete delivered messages",
                            batch.error, BACKOFF)
            self._down_until = self._now() + BACKOFF
            self._stored.not_deleted(batch.deletes)
            failed = batch.stores
        else:
            self._stored.deleted(batch.deletes)
            failed = [batch.stores[index] for index in batch.refused]
            for action, _ in failed:
                log.info("a message for %r was not stored: its account is gone", action.recipient)
        if batch.error is not None:                     # going back into the store: again, later
            again = [action for action, _ in batch.stores if action.sender_conn is None]
            if again:
                self._going_back[:0] = again            # ahead of any that came meanwhile
                self._warn("store again", "%d undelivered message%s could not be stored again "
                           "yet (%s); kept in memory and retried", len(self._going_back),
                           "" if len(self._going_back) == 1 else "s", batch.error)
            failed = [entry for entry in failed if entry[0].sender_conn is not None]
        self._splice(failed)
        for action, _ in batch.stores:
            if batch.error is None or action.sender_conn is not None:
                self._uncork(action)
        for action, _ in failed:
            self._feed(StoreFailed(action.sender_conn, action.recipient))
        if self._behind:
            self._resume_caught_up()
        if self._waiting_on:
            self._run_waiting_on()

    def _uncork(self, action):
        conn, recipient = action.sender_conn, action.recipient
        if conn is not None:
            self._uncork_sender(conn)
            self._count_waiting(action, -1)
        self._recipients[recipient] -= 1
        if not self._recipients[recipient]:
            del self._recipients[recipient]
            for transport in self._deliveries.pop(recipient, ()):
                if not transport.closed and self._stored.streaming(transport):
                    self._stored.refill(transport)
                    self._writable(transport)

    def _uncork_sender(self, conn):
        self.corked[conn] -= 1
        if not self.corked[conn]:
            del self.corked[conn]
            transport = self._transport(conn)
            if transport is not None:
                transport.release(transport.CORK)
                self._writable(transport)

    def _fail(self, failed):
        """Stores that failed before reaching a batch: notices in place, the core told."""
        self._splice(failed)
        for action, _ in failed:
            self._feed(StoreFailed(action.sender_conn, action.recipient))

    def _splice(self, failed):
        """Put each failure notice where its message was in the sender's stream.

        Nothing of the sender's produced since the store has been sent (its
        transport is corked), so every position is still in the unsent bytes.
        """
        for action, position in reversed(failed):     # latest first: no position shifts
            if action.sender_conn is None:             # refused: its account was removed
                continue
            sender = self._transport(action.sender_conn)
            if sender is not None:
                sender.insert_at(position, action.failure_notice)
                self._writable(sender)

    # ---------------------------------------------------------------- what waits for commits

    def deliver(self, transport, user_id):
        """Start the stored delivery of a login -- reading once stores for it are committed."""
        waiting = user_id in self._recipients
        self._stored.start(transport, user_id.decode("ascii"), read_now=not waiting)
        if waiting:
            self._deliveries.setdefault(user_id, []).append(transport)

    def after_stores_of(self, account, function, argument):
        """Run ``function(argument)`` once every store and delete for ``account`` made so far
        is committed -- at once when none is on its way.

        Only that account's: a lookup reads its count and whether it is
        registered, and a commit of other accounts' messages cannot change
        either.  So on a frozen disk a ``chatwith/`` to anyone whose store is
        not being written is answered at once.
        """
        if not self._touches(account):
            function(argument)
            return
        self._waiting_on.setdefault(account, []).append((function, argument))

    def _touches(self, account):
        """Are stores or deletes for ``account`` on their way to the disk?"""
        return account in self._recipients or self._stored.deletes_pending_for(account)

    def _run_waiting_on(self):
        for account in [account for account in self._waiting_on if not self._touches(account)]:
            for function, argument in self._waiting_on.pop(account):
                function(argument)

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
