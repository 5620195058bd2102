"""A session's phases, and the only ways it moves between them.

This module is data: the ``Phase`` enum and ``TRANSITIONS``, the table of
every allowed (phase, cause) -> phase.  The core (``chatnet.core.machine``) changes
a session's phase in one place, ``ChatCore._enter``, which looks the change
up here and refuses any other; ``tests/test_core_machine.py`` walks the
table.  It must not hold behaviour.
"""

import enum


class Phase(enum.Enum):
    LOGIN = "login"              #: reading 16-byte login frames
    CHECKING = "checking"        #: a frame's password is being checked; input held
    DELAYED = "delayed"          #: a failed login's ``0`` waits out its delay; input held
    CHATTING = "chatting"        #: logged in, reading lines
    LOOKING_UP = "looking up"    #: a ``chatwith/`` waits for its account lookup; input held
    CLOSED = "closed"            #: forgotten; nothing more happens

    # Members are singletons compared by identity, so identity's hash will do:
    # Enum's own ``__hash__`` is Python code, and phases are looked up in sets
    # and tables on every input (13 calls per login, more per chunk read).
    __hash__ = object.__hash__


#: Every change of phase: (phase, cause) -> the next phase.  ``ChatCore._enter``
#: refuses anything else, and a test walks the table.
TRANSITIONS = {
    (Phase.LOGIN, "frame"): Phase.CHECKING,               # a valid frame: check the password
    (Phase.LOGIN, "failure"): Phase.DELAYED,              # an invalid or throttled frame
    (Phase.LOGIN, "answered 0"): Phase.LOGIN,             # ... with no delay configured
    (Phase.CHECKING, "password right"): Phase.CHATTING,
    (Phase.CHECKING, "failure"): Phase.DELAYED,           # its 0 waits out the delay
    (Phase.CHECKING, "answered 0"): Phase.LOGIN,          # ... or, with no delay, comes now
    (Phase.DELAYED, "answered 0"): Phase.LOGIN,
    (Phase.CHATTING, "chatwith"): Phase.LOOKING_UP,       # the account is looked up
    (Phase.LOOKING_UP, "looked up"): Phase.CHATTING,
}
TRANSITIONS.update({(phase, "closed"): Phase.CLOSED for phase in Phase if phase is not Phase.CLOSED})

#: Phases before a successful login; the login timeout applies to them.
LOGIN_PHASES = frozenset((Phase.LOGIN, Phase.CHECKING, Phase.DELAYED))
#: Phases that wait for something outside the connection's own input.
WAITING_PHASES = frozenset((Phase.CHECKING, Phase.DELAYED, Phase.LOOKING_UP))
#: Phases after a successful login: the account is online.
LOGGED_IN_PHASES = frozenset((Phase.CHATTING, Phase.LOOKING_UP))
