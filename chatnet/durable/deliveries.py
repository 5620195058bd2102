"""Delivering stored messages: streamed as a socket drains, each row to one connection, deleted once.

It owns which stored rows are on their way to which connection and which
were delivered but are not yet deleted from the database.  It writes into a
connection's send queue (``outgoing``) and reads and deletes rows through
``chatnet.storage``; it must not send, close or decide anything about a
session -- the reactor calls it at the right moments.

The rules it keeps
------------------
* **Streamed, not copied whole.**  A login's stored messages are read from
  the database a batch at a time, and the next batch only when the send
  queue has drained below ``REFILL_BELOW``.  So a login that never reads
  costs one batch, not the whole store (``--store-limit`` times
  ``--max-line``).
* **Everything else waits behind them.**  While a connection's stored
  messages are streaming, bytes for it from anywhere else (live relays,
  replies to lines it pipelined behind its login) go to ``behind`` and join
  the queue after the last stored row: seeds/PROTOCOL.md section 3 (ordering).
* **One row, one connection.**  A row queued on a connection is *in
  delivery*; a row whose last byte the kernel took is *delivered*.  Neither
  is read again for another login, so a second login of the same account
  never receives what the first is receiving.  When a connection closes, the
  rows it had not started sending leave its queue and stay stored; a row
  half sent is finished if the socket allows, else stays stored.
* **Deleted once, retried until it sticks.**  Delivered rows are handed to
  the storage thread's next batch (``take_deletes``) -- not while the
  database backs off after a failure, and again after a failed batch -- and
  remembered as delivered until a commit has removed them, so they are never
  delivered twice unless the process crashes first (seeds/PROTOCOL.md
  section 6: at least once).
* **Read on the loop's own connection**, read-only: it sees what is
  committed.  A login whose account has stores still on their way to the
  disk starts reading only once they are committed (``start(...,
  read_now=False)``, then ``refill``), so they come in order.
"""

import collections
import sqlite3

from .. import wire

#: Rows read from the database per batch.
BATCH_ROWS = 32
#: A streaming connection's queue is refilled when it holds fewer bytes than this.
REFILL_BELOW = 64 * 1024


class StoredStream(object):
    """One connection's stored messages on their way."""

    __slots__ = ("user_id", "after_row", "behind", "readable")

    def __init__(self, user_id, readable):
        self.user_id = user_id
        self.after_row = 0             # rows up to this id have been read
        self.behind = bytearray()      # output that waits until every stored row is queued
        #: False while stores for the account are on their way to the disk: reading now
        #: would miss them (the reader sees only what is committed).
        self.readable = readable


class StoredDeliveries(object):
    """The reactor's ledger of stored rows in delivery; see the module docstring."""

    def __init__(self, reader, warn):
        self._reader = reader          # a read-only connection of the loop's own
        self._warn = warn
        self._in_delivery = set()      # row ids queued on some connection
        self._delivered = set()        # row ids delivered, not yet deleted by a commit
        self._deleting = set()         # ... of which deletes are in a batch on its way
        self.delivered_total = 0       # rows delivered since the start (for the metrics)

    # ---------------------------------------------------------------- streaming

    def start(self, connection, user_id, read_now=True):
        """Begin streaming ``user_id``'s store to ``connection`` (after its ``1``).

        ``read_now=False``: stores for it are not committed yet; everything
        else for the connection waits behind until ``refill`` is called.
        """
        connection.stream = StoredStream(user_id, readable=read_now)
        if read_now:
            self.refill(connection)

    def refill(self, connection):
        """Queue rows until the queue holds ``REFILL_BELOW`` bytes or the store is done.

        Called with ``read_now=False`` pending, this is the commit's word that
        the store may be read now.
        """
        stream = connection.stream
        if stream is not None:
            stream.readable = True
        while stream is not None and len(connection.outgoing) < REFILL_BELOW:
            try:
                rows = self._reader.stored_messages(stream.user_id, stream.after_row, BATCH_ROWS)
            except sqlite3.Error as error:
                self._warn("database read", "cannot read a message store: %s", error)
                rows = []               # what is left stays stored for the next login
            for row_id, sender, text in rows:
                stream.after_row = row_id
                if row_id in self._in_delivery or row_id in self._delivered:
                    continue
                self._in_delivery.add(row_id)
                if connection.stored_marks is None:    # made only when needed: most logins have none
                    connection.stored_marks = collections.deque()
                line = wire.relay_line(sender.encode("ascii"), text)
                connection.enqueue(line)
                connection.queued += len(line)
                connection.stored_marks.append((connection.queued, row_id))
            if len(rows) < BATCH_ROWS:
                self._finish(connection)
                stream = None

    def _finish(self, connection):
        """Every stored row is queued: what waited behind them follows."""
        behind = connection.stream.behind
        connection.stream = None
        if behind:
            connection.enqueue(behind)
            connection.queued += len(behind)

    # ---------------------------------------------------------------- progress

    def sent(self, connection):
        """The kernel took bytes: rows whose last byte it took are delivered."""
        marks = connection.stored_marks
        while marks and marks[0][0] <= connection.sent:
            row_id = marks.popleft()[1]
            self._in_delivery.discard(row_id)
            self._delivered.add(row_id)
            self.delivered_total += 1
        stream = connection.stream
        if stream is not None and stream.readable and len(connection.outgoing) < REFILL_BELOW:
            self.refill(connection)

    def stop(self, connection):
        """The session ended (replaced, shut down): unsent rows leave the queue, stay stored.

        The row being sent, if one is, is kept whole: a line cut in the
        middle would garble the stream.
        """
        if connection.stream is not None:
            self._finish(connection)
        marks = connection.stored_marks
        if not marks or marks[-1][0] <= connection.sent:
            return
        keep_until = connection.sent
        for end, _ in marks:
            if end > connection.sent:
                keep_until = end
                break
        unsent_from = connection.queued - len(connection.outgoing)
        cut_from, cut_to = keep_until - unsent_from, marks[-1][0] - unsent_from
        if cut_to > cut_from:
            del connection.outgoing[cut_from:cut_to]
            connection.queued -= cut_to - cut_from
        while marks and marks[-1][0] > keep_until:
            self._in_delivery.discard(marks.pop()[1])

    def settle_half_sent(self, connection):
        """A row half sent when its connection ended goes back as an undelivered message:
        its stored copy is deleted, or it would come twice."""
        marks = connection.stored_marks
        while marks and marks[-1][0] > connection.sent:
            row_id = marks.pop()[1]
            self._in_delivery.discard(row_id)
            self._delivered.add(row_id)

    def forget(self, connection):
        """The socket is closed: rows not delivered stay stored."""
        marks = connection.stored_marks
        if marks:
            for _, row_id in marks:
                self._in_delivery.discard(row_id)
            marks.clear()
        connection.stream = None

    # ---------------------------------------------------------------- deleting

    def has_deletes(self):
        """True when delivered rows wait to be handed to a batch."""
        return len(self._delivered) > len(self._deleting)

    def take_deletes(self):
        """Delivered rows not yet on their way to be deleted: for the next batch."""
        todo = self._delivered - self._deleting
        self._deleting |= todo
        return sorted(todo)

    def deleted(self, row_ids):
        """A batch with these deletes committed."""
        self._delivered.difference_update(row_ids)
        self._deleting.difference_update(row_ids)

    def not_deleted(self, row_ids):
        """A batch with these deletes failed: they are taken again later."""
        self._deleting.difference_update(row_ids)

    def waiting_to_be_deleted(self):
        return len(self._delivered)
