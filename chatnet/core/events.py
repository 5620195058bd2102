"""The values that cross the boundary between the reactor and the core.

The core (``chatnet.core.machine``) is driven by *inputs*: small immutable values that
say what happened ("bytes arrived on connection 7", "the password check for
connection 7 came back").  It answers each input with a list of *actions*:
small immutable values that say what to do ("send these bytes to connection
3", "store this message", "check this password").  The reactor
(``chatnet.loop.reactor``) turns socket events into inputs and carries out the
actions, in order.

Connections are named by plain ``int`` ids chosen by the reactor; account IDs,
passwords and message texts are ``bytes``, exactly as on the wire.

This module must stay a list of data types: no behaviour, no imports of I/O
modules.  Read it as the vocabulary of ``ChatCore.handle``: the inputs its
``_handlers`` table takes, and the actions the loop's ``ActionRunner.table``
carries out.
"""

from typing import NamedTuple, Optional

from ..values import compared_by_type


# ==================================================================== inputs
# What the reactor tells the core.  Every input is handed over together with
# the current time (``ChatCore.handle(event, now)``), so none carries a clock.

@compared_by_type
class Connected(NamedTuple):
    """A client connected; its login timeout starts now.

    ``peer`` is the client's address (the host, without the port);
    ``trusted`` says it is on a trusted network (the server's default:
    loopback), which the per-account login throttle spares.  Untrusted
    unless said: forgetting it must not spare anyone.
    """
    conn: int
    peer: str = ""
    trusted: bool = False


@compared_by_type
class DataReceived(NamedTuple):
    """Bytes arrived from the client, in order, in chunks of any size."""
    conn: int
    data: bytes


@compared_by_type
class InputEnded(NamedTuple):
    """The client closed its sending side (EOF).

    Bytes that came before are still handled; then the core closes the
    connection.  A client that only half-closed still gets every reply.
    """
    conn: int


@compared_by_type
class ConnectionLost(NamedTuple):
    """The connection is gone (reset, error, or closed by the reactor's policy).

    Nothing more can be sent on it; held input is dropped.
    """
    conn: int


@compared_by_type
class HungUp(NamedTuple):
    """The client closed while the server was not reading it (its reading was paused).

    Its last bytes and its EOF still wait in the kernel; they come as
    ``DataReceived`` and ``InputEnded`` once it is read again.
    """
    conn: int


@compared_by_type
class LoginChecked(NamedTuple):
    """The answer to ``CheckLogin``: was the password right for that ID?

    ``registered`` says whether the ID exists; the core does not let it
    change the answer or its timing (the reply must not tell).
    """
    conn: int
    user_id: bytes
    ok: bool
    registered: bool = True


@compared_by_type
class AccountLookedUp(NamedTuple):
    """The answer to ``LookUpAccount``.

    ``stored`` is how many messages wait in that account's store, counting
    everything stored and delivered before the question was asked;
    ``generation`` tells this account from an earlier one of the same ID
    (removed and added again); ``failed`` says the database could not be
    read, so ``registered`` is only a guess.
    """
    conn: int
    user_id: bytes
    registered: bool
    stored: int
    generation: str = ""
    failed: bool = False


@compared_by_type
class AccountsRemoved(NamedTuple):
    """These logged-in accounts are no longer registered (``chatnet.accounts remove``)."""
    user_ids: tuple


@compared_by_type
class Undelivered(NamedTuple):
    """Messages that ``user_id``'s connection ``conn`` never delivered: it ended before
    its TCP acknowledged them (or before they left the server).

    ``messages`` are ``(sender, text)`` pairs in their original order.
    (seeds/PROTOCOL.md section 6, "Added in 1.1".)
    """
    conn: int
    user_id: bytes
    messages: tuple


@compared_by_type
class StoreFailed(NamedTuple):
    """A ``StoreMessage`` could not be written (disk full, database locked...).

    The reactor has already put the action's ``failure_notice`` in the
    sender's stream; the core corrects its count of the store.
    """
    sender_conn: int
    recipient: bytes


@compared_by_type
class SendQueueFull(NamedTuple):
    """The bytes waiting to be sent to ``conn`` passed the high-water mark.

    The client is not reading fast enough; whoever feeds it should wait.
    """
    conn: int


@compared_by_type
class SendQueueDrained(NamedTuple):
    """The bytes waiting for ``conn`` fell back below the low-water mark."""
    conn: int


@compared_by_type
class StoresWaiting(NamedTuple):
    """The stores ``conn`` made that wait for a commit passed their bound: the disk is behind.

    Whoever sends them should wait until they are on disk (``StoresCommitted``).
    """
    conn: int


@compared_by_type
class StoresCommitted(NamedTuple):
    """The stores of ``conn`` waiting for a commit fell back below half their bound."""
    conn: int


@compared_by_type
class TimePassed(NamedTuple):
    """Nothing happened but time; due deadlines (login timeout, delays) fire."""


@compared_by_type
class ServerStopping(NamedTuple):
    """The server is shutting down: say goodbye to everyone logged in, close the others.

    Sessions stay: what their clients sent before they heard the goodbye
    still arrives (their TCP was told it did), and is handled as ever until
    ``ServerStopped``.
    """


@compared_by_type
class ServerStopped(NamedTuple):
    """The last call is over: everyone leaves at once, and every session closes."""


def data_received(conn, data, _new=tuple.__new__):
    """``DataReceived(conn, data)``, built without the named tuple's Python-level constructor.

    It is made once per read, the hottest place there is; the value is the same.
    """
    return _new(DataReceived, (conn, data))


# =================================================================== actions
# What the core asks the reactor to do.  The reactor carries them out in the
# order they are listed; the order is part of the protocol (a login's "1"
# before its stored messages, stored messages before live ones).

@compared_by_type
class Send(NamedTuple):
    """Append ``data`` to connection ``conn``'s outgoing bytes."""
    conn: int
    data: bytes


@compared_by_type
class Close(NamedTuple):
    """Close ``conn`` once the bytes already queued for it have been sent (and acknowledged).

    ``drain=False``: close it now -- what it has not delivered comes back at
    once as ``Undelivered`` -- because something newer for the same account
    must not overtake it (a login that replaced it).  The core has forgotten
    the connection when it asks for this; the reactor must not report it
    back as ``ConnectionLost``.
    """
    conn: int
    reason: str
    drain: bool = True


@compared_by_type
class CheckLogin(NamedTuple):
    """Verify ``password`` for ``user_id`` (which may not exist); answer ``LoginChecked``."""
    conn: int
    user_id: bytes
    password: bytes

    def __repr__(self):
        return "CheckLogin(conn=%r, user_id=%r, password=<%d bytes>)" % (
            self.conn, self.user_id, len(self.password))


@compared_by_type
class LookUpAccount(NamedTuple):
    """Find out whether ``user_id`` is registered; answer ``AccountLookedUp``.

    ``asker``: the account of ``conn``.  If it was removed meanwhile,
    ``AccountsRemoved`` comes first, so no answer follows a removal.
    """
    conn: int
    user_id: bytes
    asker: bytes = b""


@compared_by_type
class StoreMessage(NamedTuple):
    """Append a message to ``recipient``'s store (durably, before any later reply).

    If it cannot be stored -- now, or when the pass's transaction fails to
    commit -- the reactor puts ``failure_notice`` into ``sender_conn``'s
    stream exactly where the message was, so no reply to a later line can
    overtake it (that reply would say the message is on disk), and reports
    ``StoreFailed``.  ``sender_conn`` None: a message its recipient's
    connection never delivered, going back into the store; nobody waits.
    """
    recipient: bytes
    sender: bytes
    text: bytes
    sender_conn: int
    failure_notice: bytes


@compared_by_type
class DeliverStored(NamedTuple):
    """Queue every message in ``user_id``'s store on ``conn``, oldest first.

    Each message leaves the store only once its bytes were handed to the
    socket; if the connection drops first, it stays stored.
    """
    conn: int
    user_id: bytes


@compared_by_type
class ReadAtMost(NamedTuple):
    """Let each read of ``conn`` bring at most ``size`` bytes (None: the reactor's own size).

    The core holds input before login and while a connection waits; this
    keeps what it holds within its limits, so a read never lands on top.
    """
    conn: int
    size: Optional[int]


@compared_by_type
class PauseReading(NamedTuple):
    """Stop reading from ``conn`` for now (the core holds enough of its input)."""
    conn: int


@compared_by_type
class ResumeReading(NamedTuple):
    """Read from ``conn`` again."""
    conn: int


@compared_by_type
class LoginSucceeded(NamedTuple):
    """For the operator's log: ``conn`` is now logged in as ``user_id``."""
    conn: int
    user_id: bytes


@compared_by_type
class LoginFailed(NamedTuple):
    """For the operator's log: a login on ``conn`` failed (``user_id`` as sent, if readable)."""
    conn: int
    user_id: Optional[bytes]
    failures: int


@compared_by_type
class LimitReached(NamedTuple):
    """For the operator's log: a limit or policy was applied to ``conn``."""
    conn: int
    limit: str
    detail: str = ""


@compared_by_type
class LoggedOut(NamedTuple):
    """For the operator's log: the session of ``user_id`` on ``conn`` ended."""
    conn: int
    user_id: bytes
    reason: str


def send(conn, data, _new=tuple.__new__):
    """``Send(conn, data)``, built as fast as ``data_received`` (once per output)."""
    return _new(Send, (conn, data))
