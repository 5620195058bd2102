"""The core's login rules (seeds/PROTOCOL.md section 2): frames, checks, delays, timeouts.

``LoginRules`` takes a connection from its first byte to ``1``: it reads
16-byte frames, asks for the password check (``CheckLogin``), answers ``0``
after the failure delay that ``chatnet.core.login_gate`` says, logs the
account in (replacing an older login of it, starting the stored delivery),
and closes a connection whose login timeout ran out.  The login timeouts and
failure delays are the core's only deadlines, so they live here too
(``next_deadline``), in a heap nothing else touches.

``ChatCore`` holds one ``LoginRules`` (h11's ``Connection`` holds its
``ConnectionState`` the same way).  It is handed the registry it shares with
the core (``sessions``, ``online``, ``stores``), the core's steps
(``CoreSteps``: ``send``, ``emit``, ``enter``, ``close``, ``carry_on``,
``now``, ``count``) and one callable of the partner rules, ``logged_in``
(who watches an account is theirs to know).  It never reaches back into the
core.  Like the rest of the core it is pure: no socket, clock or database --
it sees the time it is given.
"""

import heapq

from .. import wire
from .events import CheckLogin, DeliverStored, LimitReached, LoginFailed, LoginSucceeded
from .phases import LOGIN_PHASES, Phase


class LoginRules(object):
    """Section 2 of the protocol; see the module docstring."""

    def __init__(self, registry, steps, gate, max_failures, logged_in):
        self._sessions = registry.sessions   # conn -> Session (shared with the core)
        self._online = registry.online       # account ID -> conn (written here, at login)
        self._stores = registry.stores       # the core's StoreView
        self._steps = steps
        self._gate = gate                    # LoginGate: failure delays, the account throttle
        self._max_failures = max_failures
        self._logged_in = logged_in          # PartnerRules.logged_in
        self._deadlines = []                 # heap of (when, conn): login timeouts and delays

    # ---------------------------------------------------------------- deadlines

    def started(self, session):
        """A new connection: its login timeout starts now."""
        heapq.heappush(self._deadlines, (session.login_deadline, session.conn))

    def next_deadline(self):
        """When the core next needs ``TimePassed`` (a ``now`` value), or None."""
        deadlines = self._deadlines
        while deadlines and not self._deadline_pending(*deadlines[0]):
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def time_passed(self, event):
        """``TimePassed``: close the sessions whose login timed out; answer ended delays."""
        now = self._steps.now()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            when, conn = heapq.heappop(deadlines)
            session = self._sessions.get(conn)
            if session is None:
                continue
            if session.phase in LOGIN_PHASES and now >= session.login_deadline:
                self._steps.emit(LimitReached(conn, "login timeout"))
                self._steps.close(session, "login timeout", wire.NOTICE_LOGIN_TIMEOUT)
            elif session.phase is Phase.DELAYED and now >= session.release_at:
                self._answer_failure(session)
                self._steps.carry_on(session)

    def _deadline_pending(self, when, conn):
        """False for a deadline whose session no longer waits for it."""
        session = self._sessions.get(conn)
        if session is None:
            return False
        if session.phase in LOGIN_PHASES and when == session.login_deadline:
            return True
        return session.phase is Phase.DELAYED and when == session.release_at

    # ---------------------------------------------------------------- frames and checks

    def read_frame(self, session, frame):
        """One 16-byte login frame from a session in LOGIN."""
        credentials = wire.parse_login_frame(frame)
        if credentials is None:
            self._failed(session, None)
        elif self._gate.is_throttled(credentials.user_id, session.peer, session.trusted,
                                     self._steps.now()):
            self._steps.emit(LimitReached(session.conn, "account throttle",
                                          "too many failed logins for %s; refused unchecked"
                                          % credentials.user_id.decode("ascii")))
            self._failed(session, credentials.user_id)
        else:
            self._steps.enter(session, "frame")
            self._steps.emit(CheckLogin(session.conn, credentials.user_id, credentials.password))

    def checked(self, event):
        """``LoginChecked``: the password check's answer."""
        session = self._sessions.get(event.conn)
        if session is None or session.phase is not Phase.CHECKING:
            return
        if event.ok:
            self._log_in(session, event.user_id)
        else:
            self._gate.note_failure(event.user_id, session.trusted, self._steps.now())
            self._failed(session, event.user_id)
        self._steps.carry_on(session)

    def _failed(self, session, user_id):
        self._steps.count("logins_failed")
        session.failures += 1
        self._steps.emit(LoginFailed(session.conn, user_id, session.failures))
        delay = self._gate.delay_after(session.failures)
        if delay > 0:
            self._steps.enter(session, "failure")
            session.release_at = self._steps.now() + delay
            heapq.heappush(self._deadlines, (session.release_at, session.conn))
        else:
            self._answer_failure(session)

    def _answer_failure(self, session):
        session.release_at = None
        self._steps.send(session.conn, wire.CODE_FAILED)
        if session.failures >= self._max_failures:
            self._steps.emit(LimitReached(session.conn, "failed logins",
                                          "%d on one connection" % session.failures))
            self._steps.close(session, "too many failed logins")
        else:
            self._steps.enter(session, "answered 0")

    def _log_in(self, session, user_id):
        replaced = self._sessions.get(self._online.get(user_id))
        self._steps.count("logins_succeeded")
        self._steps.enter(session, "password right")
        session.user_id = user_id
        session.relay_prefix = wire.relay_prefix(user_id)
        self._online[user_id] = session.conn
        self._stores.forget(user_id)                 # delivery is about to empty it
        self._gate.note_login(user_id, session.peer, session.trusted)
        self._steps.emit(LoginSucceeded(session.conn, user_id))
        if replaced is not None:
            # The account stays online, so its watchers see no change.  What the old
            # connection never delivered goes to this one now, ahead of anything newer.
            self._steps.close(replaced, "replaced", wire.NOTICE_REPLACED, drain=False)
        self._steps.send(session.conn, wire.CODE_OK)
        self._steps.emit(DeliverStored(session.conn, user_id))
        self._logged_in(user_id, replaced is not None)
