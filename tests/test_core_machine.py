"""The core as a state machine: every (phase, input) pair, and its purity."""

import ast
import glob
import itertools
import os

import pytest

import chatnet.core.machine
from chatnet.core.phases import Phase
from chatnet.core.events import (
    AccountLookedUp, Connected, ConnectionLost, DataReceived, InputEnded,
    LoginChecked, ServerStopped, ServerStopping, StoreFailed, TimePassed,
)
from core_harness import CoreHarness, frame

ACCOUNTS = {b"alice": b"pw", b"bob": b"pw"}


def session_in(phase):
    """A harness and a connection whose session is in ``phase``."""
    h = CoreHarness(accounts=ACCOUNTS, failure_delays=(5.0,), answer_checks=False)
    conn = h.connect()
    if phase is Phase.CHECKING:
        h.send(conn, frame(b"alice", b"pw"))
    elif phase is Phase.DELAYED:
        h.send(conn, frame(b"alice", b"wrong"))
        h.answer_check()
    elif phase in (Phase.CHATTING, Phase.LOOKING_UP, Phase.CLOSED):
        h.send(conn, frame(b"alice", b"pw"))
        h.answer_check()
        if phase is Phase.LOOKING_UP:
            h.answer_lookups = False
            h.send(conn, b"chatwith/bob\n")
        elif phase is Phase.CLOSED:
            h.hang_up(conn)
    session = h.core.session(conn)
    assert (session.phase if session else Phase.CLOSED) is phase
    return h, conn


def inputs_for(conn):
    """One of every kind of input about ``conn``, with plausible contents."""
    return [
        Connected(conn + 100),
        DataReceived(conn, frame(b"alice", b"pw")),
        DataReceived(conn, b"chatwith/bob\nchat/hi\n"),
        DataReceived(conn, b"\xff" * 40 + b"\n"),
        InputEnded(conn),
        ConnectionLost(conn),
        LoginChecked(conn, b"alice", True),
        LoginChecked(conn, b"alice", False),
        AccountLookedUp(conn, b"bob", True, 0),
        AccountLookedUp(conn, b"bob", False, 0),
        StoreFailed(conn, b"bob"),
        TimePassed(),
        ServerStopping(),
        ServerStopped(),
    ]


@pytest.mark.parametrize("phase, event_index", list(itertools.product(
    list(Phase), range(len(inputs_for(0))))))
def test_every_input_in_every_phase_is_handled_without_error(phase, event_index):
    """h2's exhaustive walk, with itertools: nothing the reactor can say crashes the core."""
    h, conn = session_in(phase)
    h.advance(1.0)
    h.feed(inputs_for(conn)[event_index])
    h.advance(60.0)
    online = h.core.online()
    for user_id, online_conn in online.items():
        assert h.core.session(online_conn).user_id == user_id


def test_inputs_about_unknown_connections_are_ignored():
    h = CoreHarness(accounts=ACCOUNTS)
    for event in inputs_for(42)[1:-2]:
        assert h.core.handle(event, 0.0) == []


def test_connecting_the_same_id_twice_is_a_programming_error():
    h = CoreHarness(accounts=ACCOUNTS)
    h.feed(Connected(1))
    with pytest.raises(ValueError):
        h.core.handle(Connected(1), 0.0)


FORBIDDEN = {"socket", "selectors", "select", "sqlite3", "time", "threading", "random",
             "asyncio", "os", "signal", "logging", "concurrent"}


PACKAGE = os.path.dirname(os.path.dirname(chatnet.core.machine.__file__))
PURE_MODULES = sorted(
    [os.path.relpath(path, PACKAGE) for path in glob.glob(os.path.join(PACKAGE, "core", "*.py"))]
    + ["wire.py", "values.py", "client/protocol.py", "client/lifecycle.py"])


@pytest.mark.parametrize("module", PURE_MODULES)
def test_the_core_and_its_vocabulary_import_no_io_module(module):
    """trio-style layering, enforced: the pure modules cannot reach the outside world.

    Every module in ``chatnet/core/`` is checked by globbing the folder, so a new
    pure module is covered without anyone remembering to list it.
    """
    path = os.path.join(PACKAGE, module)
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & FORBIDDEN == set()


# ---------------------------------------------------------------- the transition table

def test_every_transition_in_the_table_happens_and_no_other():
    """Drive sessions through every arrow of core.TRANSITIONS, recording each change."""
    from chatnet.core.machine import ChatCore
    from chatnet.core.phases import TRANSITIONS
    from core_harness import CoreHarness, frame
    seen = set()
    original = ChatCore._enter

    def recording(core, session, cause):
        before = session.phase
        original(core, session, cause)
        seen.add((before, cause, session.phase))

    ChatCore._enter = recording
    try:
        accounts = {b"alice": b"pw", b"bob": b"pw"}
        delayed = CoreHarness(accounts=accounts, failure_delays=(0.5,), account_failure_limit=1)
        conn = delayed.connect()
        delayed.send(conn, frame(b"\0", b"x"))                        # LOGIN -failure-> DELAYED
        delayed.advance(1.0)                                          # DELAYED -answered 0-> LOGIN
        delayed.send(conn, frame(b"alice", b"no"))                    # LOGIN -frame-> CHECKING -failure->
        delayed.advance(1.0)
        assert delayed.lines(conn) == [b"0", b"0"]
        delayed.login(b"alice", conn=conn)                            # CHECKING -password right->
        delayed.send(conn, b"chatwith/bob\n")                         # CHATTING <-> LOOKING_UP
        for phase_conn in (delayed.connect(), ):
            delayed.drop(phase_conn)                                  # LOGIN -closed->
        quick = CoreHarness(accounts=accounts, answer_checks=False)
        conn = quick.connect()
        quick.send(conn, frame(b"\0", b"x"))                          # LOGIN -answered 0-> LOGIN
        quick.send(conn, frame(b"alice", b"no"))
        quick.answer_check()                                          # CHECKING -answered 0-> LOGIN
        waiting = quick.connect()
        quick.send(waiting, frame(b"alice", b"pw"))
        quick.drop(waiting)                                           # CHECKING -closed->
        slow = CoreHarness(accounts=accounts, failure_delays=(5.0,))
        conn = slow.connect()
        slow.send(conn, frame(b"alice", b"no"))
        slow.drop(conn)                                               # DELAYED -closed->
        looking = CoreHarness(accounts=accounts)
        looking.answer_lookups = False
        conn = looking.login(b"alice")
        looking.send(conn, b"chatwith/bob\n")
        looking.drop(conn)                                            # LOOKING_UP -closed->
        chatting = CoreHarness(accounts=accounts)
        chatting.drop(chatting.login(b"bob"))                         # CHATTING -closed->
    finally:
        ChatCore._enter = original
    assert seen == {(before, cause, after) for (before, cause), after in TRANSITIONS.items()}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_the_pure_modules_import_only_the_pure_floor(module):
    """No arrow up: ``core/`` and the client's pure modules import nothing of ``loop/``,
    ``durable/`` or ``net/`` (the folders' layers, checked the way imports are written)."""
    path = os.path.join(PACKAGE, module)
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            target = (node.module or "").split(".")[0]
            assert target not in ("loop", "durable", "net", "server", "accounts", "bench"), \
                "%s imports %s%s" % (module, "." * node.level, node.module)
