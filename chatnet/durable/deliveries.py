"""Delivering stored messages: streamed as a socket drains, each row to one connection, deleted once.

It owns which stored rows are on their way to which connection and which
were delivered but are not yet deleted from the database.  It asks a
connection's transport to queue rows (``queue_stored``) and to drop the ones
not started (``drop_unsent_stored``) -- the queue, its offsets and the row
marks are the transport's -- and reads and deletes rows through
``chatnet.durable.storage``; it must not send, close or decide anything about
a session -- the loop calls it at the right moments.

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
* **An empty store is not read.**  It knows which accounts may have
  stored messages: those that had some at the start, and every recipient
  of a store since (``noted_store``, before its commit).  An account leaves
  that set when a read of its whole store found nothing.  A login of any
  other account -- most logins -- costs no database read at all.
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


class _Everyone(set):
    """Every account may have stored messages (the start could not tell)."""

    def __contains__(self, user_id):
        return True


_EVERYONE = _Everyone()


class StoredStream(object):
    """One connection's stored messages on their way: which account, and how far read."""

    __slots__ = ("user_id", "after_row", "readable")

    def __init__(self, user_id, readable):
        self.user_id = user_id
        self.after_row = 0             # rows up to this id have been read
        #: False while stores for the account are on their way to the disk: reading now
        #: would miss them (the reader sees only what is committed).
        self.readable = readable


class StoredDeliveries(object):
    """Stored rows in delivery, and delivered rows waiting to be deleted; see the module docstring.

    It asks each connection's transport to queue rows, and learns from it
    which were sent or dropped: the queue and its offsets are the transport's.
    """

    def __init__(self, reader, warn):
        self._reader = reader          # a read-only connection of the loop's own
        self._warn = warn
        self._streams = {}             # conn -> StoredStream, while its rows are read
        self._in_delivery = set()      # row ids queued on some connection
        self._delivered = set()        # row ids delivered, not yet deleted by a commit
        self._delivered_of = {}        # ... and whose store each was in (account, bytes)
        self._deleting_for = collections.Counter()   # account -> its rows in ``_delivered``
        self._deleting = set()         # ... of which deletes are in a batch on its way
        self.delivered_total = 0       # rows delivered since the start (for the metrics)
        #: Accounts (str) whose stores may hold a message: read at their login.
        self._maybe_stored = self._read_recipients()

    # ---------------------------------------------------------------- streaming

    def start(self, connection, user_id, read_now=True):
        """Begin streaming ``user_id``'s store to ``connection`` (after its ``1``).

        ``read_now=False``: stores for it are not committed yet; everything
        else for the connection waits behind until ``refill`` is called.
        """
        stream = self._streams.get(connection.conn)
        if stream is not None:          # streaming already: more rows are coming for it
            stream.readable = stream.readable and read_now
            return
        if read_now and user_id not in self._maybe_stored:
            return                      # nothing stored, nothing on its way: nothing to read
        self._streams[connection.conn] = StoredStream(user_id, readable=read_now)
        connection.begin_stored()
        if read_now:
            self.refill(connection)

    def streaming(self, connection):
        """True while ``connection``'s stored rows are still being read."""
        return connection.conn in self._streams

    def refill(self, connection):
        """Queue rows until the queue holds ``REFILL_BELOW`` bytes or the store is done.

        Called with ``read_now=False`` pending, this is the commit's word that
        the store may be read now.
        """
        stream = self._streams.get(connection.conn)
        if stream is not None:
            stream.readable = True
        while stream is not None and connection.queue_size() < REFILL_BELOW:
            try:
                rows = self._reader.stored_messages(stream.user_id, stream.after_row, BATCH_ROWS)
            except sqlite3.Error as error:
                self._warn("database read", "cannot read a message store: %s", error)
                rows = []               # what is left stays stored for the next login
            if not rows and not stream.after_row:
                self._maybe_stored.discard(stream.user_id)   # the whole store: empty
            for row_id, sender, text in rows:
                stream.after_row = row_id
                if row_id in self._in_delivery or row_id in self._delivered:
                    continue
                self._in_delivery.add(row_id)
                connection.queue_stored(wire.relay_line(sender.encode("ascii"), text), row_id)
            if len(rows) < BATCH_ROWS:
                self._finish(connection)
                stream = None

    def noted_store(self, recipient):
        """A message for ``recipient`` (bytes) is on its way into its store."""
        self._maybe_stored.add(recipient.decode("ascii"))

    def _read_recipients(self):
        try:
            return self._reader.recipients()
        except sqlite3.Error as error:
            self._warn("database read", "cannot read which stores hold messages: %s", error)
            return _EVERYONE

    def _finish(self, connection):
        """Every stored row is queued: what waited behind them follows."""
        del self._streams[connection.conn]
        connection.end_stored()

    # ---------------------------------------------------------------- progress

    def progress(self, connection):
        """The kernel took bytes, or the peer acknowledged some: rows acknowledged are
        delivered; the queue is refilled if it ran low."""
        for row_id in connection.rows_acknowledged():
            self._in_delivery.discard(row_id)
            self._mark_delivered(row_id, connection.user_id)
            self.delivered_total += 1
        stream = self._streams.get(connection.conn)
        if stream is not None and stream.readable and connection.queue_size() < REFILL_BELOW:
            self.refill(connection)

    def stop(self, connection):
        """The session ended (replaced, shut down): unsent rows leave the queue, stay stored."""
        if connection.conn in self._streams:
            self._finish(connection)
        for row_id in connection.drop_unsent_stored():
            self._in_delivery.discard(row_id)

    def settle(self, connection, acknowledgements_known):
        """The connection ends: rows it sent are delivered, or go back as undelivered
        messages (``Transport.take_rows_at_close``); either way their stored copies go."""
        for row_id in connection.take_rows_at_close(acknowledgements_known):
            self._in_delivery.discard(row_id)
            self._mark_delivered(row_id, connection.user_id)

    def _mark_delivered(self, row_id, account):
        if row_id not in self._delivered:
            self._delivered.add(row_id)
            self._delivered_of[row_id] = account
            self._deleting_for[account] += 1

    def forget(self, connection):
        """The socket is closed: rows not delivered stay stored."""
        for row_id in connection.forget_stored():
            self._in_delivery.discard(row_id)
        self._streams.pop(connection.conn, None)

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
        for row_id in row_ids:
            account = self._delivered_of.pop(row_id, None)
            self._deleting_for[account] -= 1
            if not self._deleting_for[account]:
                del self._deleting_for[account]

    def deletes_pending_for(self, account):
        """Are rows of ``account``'s store delivered and not yet deleted by a commit?"""
        return account in self._deleting_for

    def not_deleted(self, row_ids):
        """A batch with these deletes failed: they are taken again later."""
        self._deleting.difference_update(row_ids)

    def waiting_to_be_deleted(self):
        return len(self._delivered)
