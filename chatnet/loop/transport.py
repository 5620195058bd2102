"""One client connection as the loop sees it: its socket, its send queue, its one write path.

A ``Transport`` owns a connected, nonblocking socket and everything about
moving bytes through it, in the manner of asyncio's
``_SelectorSocketTransport``:

* **reading**: ``read()`` is one ``recv`` of at most ``read_size`` bytes;
  ``pause_reading``/``resume_reading`` (flow control and held input, decided
  by the core) change what the selector watches;
* **writing**: ``write(data)`` sends at once, straight from those bytes,
  when nothing waits before them and nothing holds the output -- the usual
  case; the core already joins what one input says to one client into one
  ``Send``.  Otherwise, or for what the kernel did not take, the bytes go to
  the queue, and ``write_ready()`` sends from it when the socket is writable.
  Output is *held* for a reason its owner pushes and releases: ``LOGIN`` (a
  login's ``1`` waits to leave with its stored messages, as one block),
  ``CORK`` (the durability cork: a message this client stored is not on disk
  yet) and, never released, ``SHUT`` (stopping: ``finish_output`` sent the
  FIN).  ``_send`` is the one place queued bytes leave;
* **water marks**: after each, the bytes waiting for the client are compared
  with the marks, and the *edge* is returned -- ``FULL`` (above the high
  mark), ``DRAINED`` (back below the low one), ``OVERFLOW`` (over the hard
  cap), ``BROKEN`` (the socket failed), ``FINISHED`` (closing, and all sent
  and acknowledged) -- for the loop to turn into inputs for the core, a drop
  or a close (``chatnet.loop.departures``);
* **interest**: the events it needs (read unless paused, write only while
  bytes wait that it may send) are handed to the loop only when they change;
* **stored rows**: ``chatnet.durable.deliveries`` asks it to queue rows
  (``queue_stored``) and learns which were acknowledged (``rows_acknowledged``)
  or never started (``drop_unsent_stored``); while rows stream, other output
  waits ``behind`` them;
* **closing**: ``close_when_drained()`` lets the queue empty first;
  ``close()`` only closes the socket -- ``Departures.close`` has taken what it
  never delivered (``take_undelivered``) and had the loop forget it first --
  after taking input nobody will read, so that the kernel ends the stream
  with a FIN, not a reset that would throw away the last answer.

It must not make a protocol decision or touch the database.  Its loop is
three callables (``TransportHooks``), so it is tested with a fake socket and
a fake loop, without threads.  TLS is a layer around it:
``LayeredTransport`` below, the same shape as asyncio's ``sslproto``.

The outgoing stream: offsets, units, invariants
-----------------------------------------------
Every byte a client is sent has a *stream offset*: its position in
everything ever queued for that connection.  The plaintext transport keeps::

    queued        bytes ever queued or sent, not counting ``behind``   (plaintext)
    sent          bytes ever taken by the kernel                       (plaintext)
    outgoing      bytes queued, not yet taken: offsets sent .. queued
    behind        bytes waiting behind stored rows (or, once a slow reader is
                  dropped, everything after its last notice); never sent while set
    stored_marks  (end offset, row id) of each stored row queued      (plaintext)
    sent_log      the chunks the kernel took and the peer has not acknowledged
                  (``chatnet.net.acks``): ``start`` and each chunk's size, in
                  the units TCP carries (below)

``LayeredTransport`` adds ``wire_sent`` (ciphertext handed to TCP, TLS's own
records included) and ``cipher_out`` (ciphertext the kernel has not taken:
at most about 64 KiB).  Over TLS the sent log's offsets are ciphertext;
everywhere else, plaintext.  These always hold while the transport is open
(``tests/test_transport_property.py`` checks them after every step of random
runs):

1. ``sent == queued - len(outgoing)``: the queue is exactly what was queued
   and not sent.
2. ``stream_end() == queued + len(behind)``: the offset a new write will get.
3. Stored marks are in order, and each ends where its row's line ends; a
   mark leaves only when the peer acknowledged its offset
   (``rows_acknowledged``) or at the close (``take_rows_at_close``).
4. The sent log holds whole lines from the first one the peer did not fully
   acknowledge; what it keeps ends at ``sent`` (plaintext) or ``wire_sent``
   (TLS).  So ``undelivered()`` -- the log's unacknowledged lines, then
   ``outgoing``, then ``behind`` -- is every line the peer may not have, in
   order, and nothing it acknowledged.
5. Only this class writes these fields; the cork, the stored deliveries and
   the loop ask (``hold``/``release``, ``queue_stored``, ``registered``, ...).
"""

import collections
import selectors
import socket
import struct
from typing import Callable, NamedTuple

from ..net import tcp
from .. import wire
from ..net.acks import ACKS_KNOWN, CHECK_EVERY, SentLog, bytes_acked, can_still_ack
from .handshakes import HandshakeHooks

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

# The edges ``write`` and ``write_ready`` report.
FULL = "full"            # the bytes waiting passed the high-water mark
DRAINED = "drained"      # ... and fell back below the low-water mark
OVERFLOW = "overflow"    # ... and passed the hard cap: drop the client
BROKEN = "broken"        # the socket failed (``failure`` says how)
FINISHED = "finished"    # closing, and everything was sent and acknowledged: close it now

# Reasons to hold output in the queue (``hold``/``release``; bits of ``holds``).
LOGIN = 1                # a login's "1" waits to leave with its stored messages (one block)
CORK = 2                 # a message this client stored waits for its commit (the durability cork)
SHUT = 4                 # stopping: the write side is shut (a FIN went); nothing more is sent

#: The send queue of a connection with nothing queued: one shared empty value,
#: so an idle connection holds no buffer (``enqueue`` makes one on demand).
NOTHING = b""


class TransportHooks(NamedTuple):
    """What a transport asks of its loop -- the whole of that contract.  One is shared by all."""

    now: Callable            # now(): the time of this pass (the stall clock)
    set_interest: Callable   # set_interest(transport, mask, paused): register exactly ``mask``
    stored_progress: Callable  # stored_progress(transport): bytes taken or acknowledged, rows queued


class WaterMarks(object):
    """The send-queue limits of one server, from its ``send_queue_limit``."""

    __slots__ = ("high", "low", "hard")

    def __init__(self, send_queue_limit):
        self.hard = send_queue_limit
        self.high = max(1, send_queue_limit // 4)
        self.low = send_queue_limit // 16


class Transport(object):
    """A client's socket, send queue and write path; see the module docstring."""

    __slots__ = (
        "conn", "sock", "host", "peer", "trusted", "outgoing", "queued", "sent", "mask", "paused",
        "eof", "closing", "closed", "core_knows", "queue_full", "progress_at", "watched",
        "read_size", "stored_marks", "behind", "failure", "user_id", "sent_log", "holds", "dropping",
        "full_since", "fin_read",
        "_hooks", "_marks", "_max_read",
    )

    kind = "plain"               # LayeredTransport: its listener's ("tls", "web", "web+tls")
    eof_follows = False          # LayeredTransport: the stream ended right after the data just read
    readable = True              # LayeredTransport: False while it waits for a handshake slot

    #: The reasons to hold output, for those who push them without importing this module.
    LOGIN, CORK = LOGIN, CORK

    def __init__(self, hooks, marks, conn, sock, host, peer, trusted, read_size):
        self._hooks = hooks            # TransportHooks: the loop, as far as a transport needs it
        self._marks = marks
        self.conn = conn
        self.sock = sock
        self.host = host               # the client's address, for per-address limits
        self.peer = peer               # "host:port", for the log
        self.trusted = trusted         # on a trusted network
        self.outgoing = NOTHING        # queued, not yet taken by the kernel (a bytearray then)
        self.queued = 0                # stream offset: bytes ever queued or sent
        self.sent = 0                  # stream offset: bytes ever taken by the kernel
        self.mask = 0                  # events the selector watches
        self.paused = False            # the core asked to stop reading
        self.eof = False               # the client sent EOF
        self.closing = False           # close once ``outgoing`` is empty
        self.closed = False
        self.core_knows = True         # False once the core asked for Close
        self.queue_full = False        # FULL was reported, DRAINED not yet
        self.full_since = 0.0          # ... since when (its senders are held back that long)
        self.progress_at = 0.0         # when the kernel last took bytes (or the queue began)
        self.watched = False           # paused, and in the hang-up watch
        self.read_size = read_size     # the most one recv may bring (the core may lower it)
        self._max_read = read_size
        self.stored_marks = None       # deque of (end offset, stored row id) of stored rows queued
        self.behind = None             # output waiting behind stored rows still streaming (bytearray)
        self.failure = None            # why the socket failed
        self.user_id = None            # the account logged in on it (from LoginSucceeded)
        self.sent_log = None           # chunks the kernel took, not yet acknowledged (chatnet.net.acks)
        self.holds = 0                 # reasons output waits in the queue (LOGIN | CORK)
        self.dropping = False          # dropped as a slow reader: its last notice is on its way
        self.fin_read = False          # a recv found the peer's FIN: nothing more is coming

    def __repr__(self):
        # In the manner of asyncio's transports: what the selector watches.
        return "<Transport %d %s read=%s write=%s queued=%d>" % (
            self.conn, self.peer, "polling" if self.mask & READ else "idle",
            "polling" if self.mask & WRITE else "idle", len(self.outgoing))

    # ---------------------------------------------------------------- reading

    def read(self):
        """One ``recv``: the bytes, ``b""`` at EOF, None if none are there.  OSError: it broke."""
        try:
            data = self.sock.recv(self.read_size)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            self.fin_read = True
        return data

    def read_at_most(self, size):
        """The core's ``ReadAtMost``: ``size`` bytes a read at most (0: the loop's own size)."""
        self.read_size = min(self._max_read, size) if size else self._max_read

    def input_ended(self):
        """EOF: stop watching for input, or select would report it again and again."""
        self.eof = True
        self.update_interest()

    def pause_reading(self):
        self.paused = True
        self.update_interest()

    def resume_reading(self):
        self.paused = False
        self.update_interest()

    # ---------------------------------------------------------------- writing

    def write(self, data):
        """Send ``data`` now if nothing waits before it and the cork is off; else queue it.

        Returns the water-mark edge (``BROKEN`` if the socket failed), or
        None -- the usual case: the kernel took it all, straight from the bytes.
        """
        if self.closed:
            return None
        if self.behind is not None:                    # stored messages go first
            self.behind += data
            return self._edge()
        self.queued += len(data)
        if self.outgoing:
            self.enqueue(data)                         # behind bytes already waiting
            return self._edge()
        if not self.holds:
            sent = self._send(data)
            if sent is None:
                self.enqueue(data)                     # never sent: counted undelivered
                return BROKEN
            if sent == len(data):
                return None
            data = data[sent:]                         # the kernel took part: queue the rest
        self.enqueue(data)
        self.progress_at = self._hooks.now()           # the queue begins
        self.update_interest()
        return self._edge()

    def hold(self, reason):
        """Keep output in the queue for ``reason`` (``LOGIN``, ``CORK``) until it is released.

        The owners of the reasons push them (the loop at login, the cork at a
        store); the transport never asks anyone whether it may send.
        """
        self.holds |= reason

    def release(self, reason):
        """``reason`` no longer holds output; the loop writes it in its write step."""
        self.holds &= ~reason

    def logged_in(self, user_id):
        """``LoginSucceeded``: its ``1`` waits to leave with its stored messages (one block)."""
        self.user_id = user_id         # for the accounts check (once a second)
        self.hold(LOGIN)

    def stored_may_follow(self):
        """``DeliverStored``: the ``1`` waits no more; its stored messages are queued behind it."""
        self.release(LOGIN)
        if not self.outgoing:
            self.progress_at = self._hooks.now()       # the queue begins now

    def credit_stall(self, seconds):
        """The loop was away for ``seconds``: no client could read meanwhile, so none pays."""
        self.progress_at += seconds
        self.full_since += seconds

    def enqueue(self, data):
        """Append ``data`` to the send queue, made on demand."""
        if self.outgoing:
            self.outgoing += data
        else:
            self.outgoing = bytearray(data)

    def write_ready(self):
        """Send from the queue once (the socket is writable, or the cork opened); the edge or None."""
        edge = None
        if self.outgoing and not self.holds:
            sent = self._send(self.outgoing)
            if sent is None:
                return BROKEN
            if sent:
                del self.outgoing[:sent]
                if not self.outgoing:
                    self.outgoing = NOTHING            # give the buffer back
                self.progress_at = self._hooks.now()
                if self.stored_marks or self.behind is not None:
                    self._hooks.stored_progress(self)
                edge = self._edge()
        if self.closing and self.drained():
            return FINISHED
        if not self.closed and (self.outgoing or self.mask != READ):
            self.update_interest()
        return edge

    def _send(self, data):
        """``send`` once: the bytes the kernel took (0 if it would block), or None if it broke.

        It advances ``sent``, the stream offset of what TCP took.  None means
        none of ``data`` reached TCP: the caller keeps it queued, so it is
        counted undelivered (``take_undelivered``) when the connection is
        dropped.
        """
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self.failure = "send failed: %s" % (error.strerror or error)
            return None
        if sent:
            self.sent += sent
            # Remember it until the peer's TCP acknowledges it (chatnet.net.acks):
            # inline, for this runs once per send.
            kept = data if sent == len(data) and type(data) is bytes else bytes(data[:sent])
            log = self.sent_log
            if log is None:
                self.sent_log = SentLog(self.sent - sent, kept)
            else:
                chunks = log.chunks
                chunks.append(kept)
                if len(chunks) >= CHECK_EVERY:
                    self.check_acks()
        return sent

    def check_acks(self):
        """Forget what the peer acknowledged (one ``getsockopt``)."""
        acked = bytes_acked(self.sock)
        if acked is None:                  # no TCP_INFO here: what the kernel took counts
            self.sent_log = None
            return
        # The log's offsets are of what crossed TCP: ciphertext with TLS.
        self.sent_log.acknowledged(acked, self._tcp_end())
        if not self.sent_log.chunks:
            self.sent_log = None
        if self.stored_marks:
            self._hooks.stored_progress(self)          # rows acknowledged leave the store

    def _tcp_end(self):
        """The stream offset, in what TCP carries, after everything handed to it."""
        return self.sent

    def acknowledged(self):
        """What the peer's TCP acknowledged, in the units TCP carries; None where the kernel
        cannot tell (no TCP_INFO).  With the sent log empty that is everything handed to
        TCP, and a closing connection was just asked (``drained``): no second system call."""
        if self.sent_log is None and ACKS_KNOWN:
            return self._tcp_end()
        return bytes_acked(self.sock)

    def take_undelivered(self, acked=None):
        """Closing: the relay messages the peer may not have, ``(sender, text)`` in order.

        The caller has asked the stored deliveries first: stored rows not yet
        sent left the queue (they stay stored), and a row half sent is among
        these (its stored copy is then deleted).  With messages to keep the
        socket will close with a reset, not a FIN: the kernel must not
        deliver what goes elsewhere now.  ``acked``: ``acknowledged()``, if
        the caller has just asked.
        """
        messages = wire.relay_messages(self.undelivered(acked))
        if messages:
            tcp.set_option(self.sock, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return messages

    def undelivered(self, acked=None):
        """The bytes of every line the peer may not have: unacknowledged, then never sent
        (queued, then waiting behind)."""
        if acked is None:                       # not asked yet (or the kernel cannot tell)
            acked = bytes_acked(self.sock)      # still open: the loop asks before it closes
        unacked = b""
        if self.sent_log is not None and acked is not None:
            unacked = self.sent_log.unacknowledged(acked)
        return unacked + bytes(self.outgoing) + bytes(self.behind or b"")

    def _edge(self):
        """Compare the bytes waiting with the water marks; the edge crossed, or None."""
        if not self.queue_full and len(self.outgoing) <= self._marks.high and self.behind is None:
            return None                                # far below every mark
        waiting = self.live_bytes_waiting()
        marks = self._marks
        if waiting > marks.hard:
            return OVERFLOW
        if self.queue_full:
            if waiting <= marks.low:
                self.queue_full = False
                return DRAINED
        elif waiting > marks.high:
            self.queue_full = True
            self.full_since = self._hooks.now()
            return FULL
        return None

    def live_bytes_waiting(self):
        """Bytes waiting for the client, not counting stored messages from its login.

        Those are bounded by the stream's batch size (``chatnet.durable.deliveries``), not
        by how the client reads, so they must not make a client look slow.
        """
        waiting = len(self.outgoing)
        marks = self.stored_marks
        if marks:
            waiting -= max(0, marks[-1][0] - self.sent)
        if self.behind is not None:
            waiting += len(self.behind)
        return waiting

    def stream_end(self):
        """The stream offset after everything queued for the client so far."""
        return self.queued + (len(self.behind) if self.behind is not None else 0)

    def insert_at(self, position, data):
        """Put ``data`` into the unsent bytes at stream offset ``position`` (a failure notice)."""
        if self.behind is not None and position >= self.queued:
            index = position - self.queued             # in what waits behind the stored rows
            self.behind[index:index] = data
            return
        unsent_from = self.queued - len(self.outgoing)
        index = max(0, position - unsent_from)
        if not self.outgoing:
            self.outgoing = bytearray()
        self.outgoing[index:index] = data
        self.queued += len(data)
        if self.stored_marks:
            self.stored_marks = type(self.stored_marks)(
                (end + len(data) if end > position else end, row_id)
                for end, row_id in self.stored_marks)

    # ---------------------------------------------------------------- stored rows
    # ``chatnet.durable.deliveries`` decides which rows to stream and when;
    # it asks these, and the queue, the offsets and the marks stay the transport's.

    def begin_stored(self):
        """Stored rows come first: until ``end_stored``, other output waits behind them."""
        self.behind = bytearray()

    def streaming_stored(self):
        return self.behind is not None

    def queue_size(self):
        """Bytes queued, not yet taken by the kernel."""
        return len(self.outgoing)

    def queue_stored(self, line, row_id):
        """Queue one stored row's relay line, remembering where it ends."""
        self.enqueue(line)
        self.queued += len(line)
        if self.stored_marks is None:          # made only when needed: most logins have none
            self.stored_marks = collections.deque()
        self.stored_marks.append((self.queued, row_id))

    def end_stored(self):
        """Every stored row is queued: what waited behind them follows."""
        behind, self.behind = self.behind, None
        if behind:
            self.enqueue(behind)
            self.queued += len(behind)

    def rows_acknowledged(self):
        """The stored rows whose last byte the peer's TCP acknowledged since the last call.

        "Delivered" is acknowledged, not taken by the kernel: a row leaves the
        store only once its bytes are the client's (seeds/PROTOCOL.md section 6),
        so a ``kill -9`` cannot lose what sat in the kernel's send buffer.  What
        the sent log still keeps is not acknowledged (it keeps whole lines);
        without TCP_INFO there is no log, and what the kernel took counts.
        """
        marks, rows = self.stored_marks, []
        if not marks:
            return rows
        log = self.sent_log
        acknowledged = self.sent if log is None else self.sent - sum(map(len, log.chunks))
        while marks and marks[0][0] <= acknowledged:
            rows.append(marks.popleft()[1])
        return rows

    def drop_unsent_stored(self):
        """The session ended: stored rows not yet started leave the queue; their ids.

        The row being sent, if one is, is kept whole: a line cut in the
        middle would garble the stream.
        """
        if self.behind is not None:
            self.end_stored()
        marks = self.stored_marks
        if not marks or marks[-1][0] <= self.sent:
            return []
        keep_until = self.sent
        for end, _ in marks:
            if end > self.sent:
                keep_until = end
                break
        unsent_from = self.queued - len(self.outgoing)
        cut_from, cut_to = keep_until - unsent_from, marks[-1][0] - unsent_from
        if cut_to > cut_from:
            del self.outgoing[cut_from:cut_to]
            self.queued -= cut_to - cut_from
        dropped = []
        while marks and marks[-1][0] > keep_until:
            dropped.append(marks.pop()[1])
        return dropped

    def take_rows_at_close(self, acknowledgements_known):
        """Closing, after ``drop_unsent_stored``: the stored rows to delete now.

        Where TCP_INFO tells, every row still marked was sent, at least in
        part: acknowledged, or going back whole among ``take_undelivered``'s
        messages -- either way its stored copy must go, or it would come twice.
        Without it, the rows the kernel took count as delivered; a row half
        sent stays stored.
        """
        marks, rows = self.stored_marks, []
        while marks and (acknowledgements_known or marks[0][0] <= self.sent):
            rows.append(marks.popleft()[1])
        return rows

    def forget_stored(self):
        """The socket is closed: every stored row still marked (they stay stored)."""
        self.behind = None
        marks = self.stored_marks
        if not marks:
            return []
        rows = [row_id for _, row_id in marks]
        marks.clear()
        return rows

    # ---------------------------------------------------------------- interest and closing

    def registered(self, mask, watched):
        """The loop registered ``mask`` for it (``watched``: a paused socket in the hang-up watch)."""
        self.mask = mask
        self.watched = watched

    def core_lets_go(self):
        """The core asked for its close, or is about to hear it was lost: True if it knew of it until now."""
        knew = self.core_knows
        self.core_knows = False
        return knew

    def update_interest(self):
        """Hand the loop exactly the events this transport needs now, if they changed."""
        reading = not (self.paused or self.eof or self.closing) and self.readable
        writing = self._writing()
        mask = (READ if reading else 0) | (WRITE if writing else 0)
        if mask != self.mask:
            self._hooks.set_interest(self, mask, not reading and not (self.eof or self.closing))

    def _writing(self):
        """Does it need ``EVENT_WRITE``?  While bytes wait that it may send."""
        return self.outgoing and not self.holds

    def finish_output(self):
        """Stopping: once nothing waits to be sent, shut the write side (a FIN).  True once done.

        The client hears the end after everything it was sent, the goodbye
        last; it closes, and the loop reads that.  Until then its lines are
        still read and handled -- its TCP was told they arrived.  What is
        written to it afterwards stays queued (``SHUT`` holds it for good)
        and goes back as undelivered at the close.
        """
        if self.holds & SHUT:
            return True
        if self.outgoing or self.behind is not None or self.closed:
            return False
        self._say_goodbye()
        self.hold(SHUT)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass                                       # it is gone already: the close will tell
        self.update_interest()
        return True

    def _say_goodbye(self):
        """A layer's last words before the FIN (TLS's close_notify, a WebSocket's close)."""

    def close_when_drained(self):
        """Stop reading; close once everything was sent and acknowledged.  True: that is now.

        ``write_ready`` reports ``FINISHED`` when the rest has drained.
        Waiting for the acknowledgements too means that what the client
        received in the last instant is not counted undelivered (and then
        delivered twice); the loop's linger bounds the wait.
        """
        self.closing = True
        if not self.drained():
            self.update_interest()
            return False
        return True

    def drained(self):
        """Nothing left to send, and (where TCP_INFO tells) nothing left unacknowledged.

        (Output held by ``SHUT`` is never sent: it is not waited for.)
        """
        if self.outgoing and not self.holds & SHUT:
            return False
        if self.sent_log is not None:
            self.check_acks()
        return self.sent_log is None or not can_still_ack(self.sock)

    def last_word(self, notice):
        """Dropped as a slow reader: ``notice`` is the last thing it is sent.

        The notice goes right after the line under way (a line cut in the middle
        would garble the stream); what else is queued, and whatever comes later,
        waits aside in ``behind`` and is never sent -- it goes back as undelivered
        when the connection closes (``take_undelivered``).
        """
        self.dropping = True
        cut = self._line_end_in_queue()
        aside = self.outgoing[cut:]
        self.outgoing = bytearray(self.outgoing[:cut]) + notice
        self.queued += len(notice) - len(aside)
        self.behind = bytearray(aside) + (self.behind or b"")
        self.update_interest()

    def _line_end_in_queue(self):
        """Where in the queue the line the kernel took part of ends (0: it took whole lines)."""
        log = self.sent_log
        if log is None or log.chunks[-1][-1:] == b"\n":
            return 0
        return self.outgoing.find(b"\n") + 1          # 0 if the rest of it is not queued yet

    def close(self, clean=False):
        """Close the socket now; ``clean``: a TLS stream ends with ``close_notify`` (best effort).

        Only ``Departures.close`` calls this, after the loop has taken what it
        never delivered and unregistered it (before its descriptor can be reused).
        """
        if self.closed:
            return
        self.closed = True
        if clean and not self.fin_read:
            self._discard_unread_input()
        self.sock.close()
        self.outgoing = NOTHING

    def _discard_unread_input(self):
        """Take what the peer sent that will never be read, before closing.

        Closing a socket with unread input makes the kernel answer with a
        reset, and a reset makes the peer's kernel throw away what it had
        not read yet -- the notice or HTTP answer just sent before the close.
        (What is there now; input still on its way may yet cause one.)
        """
        try:
            for _ in range(4):
                if not self.sock.recv(65536):
                    return
        except OSError:
            pass


#: Plaintext encrypted at once: four of TLS's largest records.  Encrypting this
#: much at a time, and only while the kernel takes it whole, keeps at most
#: about 64 KiB of ciphertext waiting outside the queue the water marks
#: measure -- and costs one ``encrypt`` and one ``send`` per 64 KiB, not per record.
ENCRYPT_AT_ONCE = 4 * 16384


class LayeredTransport(Transport):
    """A transport whose bytes cross a layer on their way: TLS, WebSocket, or both.

    A layer (``chatnet.net.tls.TLSLayer``, ``chatnet.net.web.WebLayer``, or
    ``chatnet.net.web.Stack`` of the two) turns the bytes TCP carries into the
    stream and back, and never touches a socket.  It sits between the socket
    and the stream, as asyncio's ``sslproto`` sits between the socket transport
    and the protocol: ``read`` hands what was received to the layer and returns
    the stream's bytes; ``_send`` encodes the queue 64 KiB at a time and hands
    the result (records, frames) to the socket, keeping what the kernel did not
    take in ``cipher_out``.  What a layer offers: ``receive(data)`` ->
    ``(stream bytes, bytes to send back)``, ``encode(data)``, ``goodbye()``,
    ``handshake_done``, ``ended``, ``output_closed`` (it sends nothing more: a
    WebSocket after its close frame), ``describe()``; it raises an ``OSError``
    (``TLSFailed``) when the stream cannot go on.  Everything else -- the queue,
    the holds, the water marks, the stall clock, acknowledgements, closing --
    is the plaintext transport's, unchanged:

    * the stream offsets ``queued`` and ``sent`` stay in the stream's bytes
      (``sent`` counts bytes encoded and handed on); ``wire_sent`` counts what
      was handed to TCP, the layer's own bytes included (TLS records, a pong),
      and is what the peer's acknowledgements are compared with;
    * ``cipher_out`` holds at most about 64 KiB: the queue (``outgoing``)
      keeps the rest unencoded, so the water marks and the hard cap see it,
      and ``live_bytes_waiting`` counts ``cipher_out`` too;
    * wire bytes draining are progress for the stall clock, like plaintext taken;
    * while ``cipher_out`` waits, ``EVENT_WRITE`` is watched.
    Before the layer's handshake (TLS's, the HTTP upgrade) is done nothing is
    encoded: the stream's bytes wait.  Before its handshake slot comes
    (``chatnet.loop.handshakes``) it has no layer at all (``NOT_STARTED``), is
    not read (``readable`` False) and only its hang-up is watched;
    ``begin_handshake`` makes the layer.
    """

    __slots__ = ("layer", "cipher_out", "eof_follows", "wire_sent", "readable", "kind",
                 "_handshakes", "_new_layer")

    def __init__(self, hooks, marks, conn, sock, host, peer, trusted, read_size, layer,
                 handshakes=None, new_layer=None, kind="tls"):
        """``layer``: the layer, or ``NOT_STARTED`` until ``begin_handshake`` makes one
        with ``new_layer()``; ``handshakes``: the ``HandshakeHooks`` of ``chatnet.loop.handshakes``
        (None: no limits, for tests); ``kind``: its listener's, for the metrics."""
        Transport.__init__(self, hooks, marks, conn, sock, host, peer, trusted, read_size)
        self.layer = layer             # (its handshake counts as login time)
        self.cipher_out = None         # wire bytes the kernel did not take yet
        self.eof_follows = False       # the stream ended right after the data just read
        self.wire_sent = 0             # wire bytes handed to TCP (or waiting in cipher_out)
        self.kind = kind
        self._handshakes = handshakes or NO_HANDSHAKE_LIMITS
        self._new_layer = new_layer
        #: Not while it waits for a handshake slot: its first bytes wait in the kernel.
        #: (An attribute, not a property: ``update_interest`` reads it on every change.)
        self.readable = layer is not NOT_STARTED

    # ---------------------------------------------------------------- the handshake's turn

    def wait_for_slot(self):
        """No handshake slot is free: read nothing, but learn if the peer leaves meanwhile."""
        self._hooks.set_interest(self, 0, True)

    def begin_handshake(self):
        """Its slot came: OpenSSL's state is made now, and reading begins."""
        if not self.closed:
            self.layer = self._new_layer()
            self.readable = True
            self.update_interest()

    # ---------------------------------------------------------------- reading

    def read(self):
        """One ``recv``, through the layer: plaintext, ``b""`` at the end, None if none yet.

        ``TLSFailed`` (an OSError) when the handshake or a record failed.  A
        handshake step waits for a later pass when this one had its share.
        """
        handshaking = not self.layer.handshake_done
        if handshaking and not self._handshakes.may_step():
            return None                                # select reports it again next pass
        try:
            data = self.sock.recv(self.read_size)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            self.fin_read = True
        plaintext, ciphertext = self.layer.receive(data)
        if ciphertext:
            self.wire_sent += len(ciphertext)
            if self.sent_log is not None:
                # Records of TLS's own (a ticket, a key update) follow the last chunk
                # logged: count them as part of it, so every later offset stays true.
                self.sent_log.wire_sizes[-1] += len(ciphertext)
            self.cipher_out = (self.cipher_out or bytearray()) + ciphertext
            self._flush_cipher()
        if handshaking and self.layer.handshake_done:
            self._handshakes.finished(self)            # its slot goes to the next in line
            self.update_interest()                     # plaintext may be sent now
        elif self.cipher_out:
            self.update_interest()
        if self.layer.ended:
            if plaintext:
                self.eof_follows = True                # the loop reports the EOF right after
                return plaintext
            return b""
        return plaintext or None

    def eof_after_data(self):
        """Did the stream end right after the data ``read`` just returned?  (Asked once.)"""
        if self.eof_follows and not self.closed:
            self.eof_follows = False
            return True
        return False

    # ---------------------------------------------------------------- writing

    def write_ready(self):
        if self.cipher_out and not self._flush_cipher():
            return BROKEN
        edge = Transport.write_ready(self)
        if edge is None and self.queue_full and not self.closed:
            edge = self._edge()                        # records drained: perhaps below the mark
        return edge

    def _send(self, data):
        """Encrypt and hand on records while the kernel takes them all: the plaintext taken.

        0 while records of earlier plaintext still wait in ``cipher_out``;
        None if none of ``data`` reached TCP because the socket or the layer broke.
        """
        layer = self.layer
        if not layer.handshake_done or layer.output_closed:
            return 0                                   # not yet; or never (then undelivered)
        if self.cipher_out:
            if not self._flush_cipher():
                return None
            if self.cipher_out:
                return 0
        size, taken = len(data), 0
        while taken < size:
            piece = data if size <= ENCRYPT_AT_ONCE else data[taken:taken + ENCRYPT_AT_ONCE]
            try:
                records = layer.encode(piece)
            except OSError as error:                   # TLSFailed: the stream is over
                self.failure = str(error)
                return taken or None
            try:
                sent = self.sock.send(records)         # usually all of it: no copy
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:                   # this record did not reach TCP
                self.failure = "send failed: %s" % (error.strerror or error)
                return taken or None
            self.wire_sent += len(records)
            self.sent += len(piece)
            taken += len(piece)
            # A copy of a bytearray: the queue it came from changes after this.
            self._log_sent(piece if type(piece) is bytes else bytes(piece), len(records))
            if sent < len(records):
                self.cipher_out = bytearray(records[sent:])
                self.update_interest()                 # the rest of the records waits: EVENT_WRITE
                break
        return taken

    def _log_sent(self, data, wire_size):
        """Remember ``data`` (whole records' plaintext) until the peer's TCP acknowledges it."""
        log = self.sent_log
        if log is None:
            self.sent_log = SentLog(self.wire_sent - wire_size, data, wire_size)
        else:
            log.chunks.append(data)
            log.wire_sizes.append(wire_size)
            if len(log.chunks) >= CHECK_EVERY:
                self.check_acks()

    def _flush_cipher(self):
        """Send the waiting ciphertext once; False if the socket broke.  Taken bytes are progress."""
        try:
            sent = self.sock.send(self.cipher_out)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as error:
            self.failure = "send failed: %s" % (error.strerror or error)
            return False
        if sent:
            del self.cipher_out[:sent]
            self.progress_at = self._hooks.now()
        return True

    def _tcp_end(self):
        return self.wire_sent

    def live_bytes_waiting(self):
        return Transport.live_bytes_waiting(self) + len(self.cipher_out or b"")

    # ---------------------------------------------------------------- interest and closing

    def _writing(self):
        return self.cipher_out or (self.outgoing and self.layer.handshake_done and not self.holds
                                   and not self.layer.output_closed)

    def close_when_drained(self):
        if not self.layer.handshake_done:
            self.outgoing = NOTHING                    # it never got as far as reading them
        return Transport.close_when_drained(self)

    def drained(self):
        """Also: what the layer will never send (after a WebSocket's close frame) waits for
        nothing -- it goes back as undelivered -- but what was sent before is waited for."""
        if self.cipher_out:
            return False
        if self.outgoing and (self.layer.output_closed or self.holds & SHUT):
            # Everything handed to TCP acknowledged?  (Not the sent log's test: it keeps a
            # line's start until the line's end is acknowledged, and this end never goes.)
            acked = bytes_acked(self.sock)
            return acked is None or acked >= self.wire_sent or not can_still_ack(self.sock)
        return Transport.drained(self)

    def finish_output(self):
        if self.cipher_out:
            return False                               # the last records first
        return Transport.finish_output(self)

    def _say_goodbye(self):
        if self.layer.handshake_done:
            try:
                self.sock.send(self.layer.goodbye())   # a few bytes: the kernel has room now
            except OSError:
                pass

    def close(self, clean=False):
        """``clean``: the stream ends with ``close_notify`` (best effort)."""
        if not self.closed and clean and self.layer.handshake_done and not self.holds & SHUT:
            try:
                self.sock.send(self.layer.goodbye())
            except OSError:
                pass
        Transport.close(self, clean)
        self.cipher_out = None
        if not self.layer.handshake_done:
            self._handshakes.finished(self)            # its slot, or its place in line, is free
        self.layer = GONE                                # OpenSSL's state goes now, not with the object


class _NoLayer(object):
    """Where a layer is not (yet, or any more): no handshake done, nothing ended."""

    __slots__ = ()
    handshake_done = False
    ended = False
    output_closed = False


NOT_STARTED = _NoLayer()       # waiting for a handshake slot
GONE = _NoLayer()              # closed


def _no_limit():
    return True


NO_HANDSHAKE_LIMITS = HandshakeHooks(_no_limit, lambda transport: None)
