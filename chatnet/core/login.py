"""The core's login rules (seeds/PROTOCOL.md section 2): frames, checks, delays, timeouts.

``LoginRules`` is the part of ``chatnet.core.ChatCore`` that takes a
connection from its first byte to ``1``: it reads 16-byte frames, asks for
the password check (``CheckLogin``), answers ``0`` after the failure delay
that ``chatnet.login_gate`` says, logs the account in (replacing an older
login of it, telling its watchers it came online, starting the stored
delivery), and closes a connection whose login timeout ran out.  The login
timeouts and failure delays are the core's only deadlines, so they live here
too (``next_deadline``).

It is a mixin of ``ChatCore`` and shares its state (the sessions, who is
online, the output); like the rest of the core it is pure: no socket, clock
or database -- it sees the time it is given.
It uses ``ChatCore``'s output (``_send``, ``_emit``), ``_enter`` (the one
place a phase changes), ``_close`` and ``_carry_on``.
"""

import heapq

from .. import wire
from .events import CheckLogin, DeliverStored, LimitReached, LoginFailed, LoginSucceeded
from .phases import LOGIN_PHASES, Phase


class LoginRules(object):
    """Section 2 of the protocol, for ``ChatCore``; see the module docstring."""

    def next_deadline(self):
        """When the core next needs ``TimePassed`` (a ``now`` value), or None."""
        deadlines = self._deadlines
        while deadlines and not self._deadline_pending(*deadlines[0]):
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def _on_login_checked(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.phase is not Phase.CHECKING:
            return
        if event.ok:
            self._log_in(session, event.user_id)
        else:
            self.login_gate.note_failure(event.user_id, session.trusted, self._now)
            self._login_failed(session, event.user_id)
        self._carry_on(session)

    def _on_time_passed(self, event):
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= self._now:
            when, conn = heapq.heappop(deadlines)
            session = self._sessions.get(conn)
            if session is None:
                continue
            if session.phase in LOGIN_PHASES and self._now >= session.login_deadline:
                self._emit(LimitReached(conn, "login timeout"))
                self._close(session, "login timeout", wire.NOTICE_LOGIN_TIMEOUT)
            elif session.phase is Phase.DELAYED and self._now >= session.release_at:
                self._answer_failure(session)
                self._carry_on(session)

    def _deadline_pending(self, when, conn):
        """False for a deadline whose session no longer waits for it."""
        session = self._sessions.get(conn)
        if session is None:
            return False
        if session.phase in LOGIN_PHASES and when == session.login_deadline:
            return True
        return session.phase is Phase.DELAYED and when == session.release_at

    def _read_login_frame(self, session, frame):
        credentials = wire.parse_login_frame(frame)
        if credentials is None:
            self._login_failed(session, None)
        elif self.login_gate.is_throttled(credentials.user_id, session.peer, session.trusted,
                                          self._now):
            self._emit(LimitReached(session.conn, "account throttle",
                                    "too many failed logins for %s; refused unchecked"
                                    % credentials.user_id.decode("ascii")))
            self._login_failed(session, credentials.user_id)
        else:
            self._enter(session, "frame")
            self._emit(CheckLogin(session.conn, credentials.user_id, credentials.password))

    def _login_failed(self, session, user_id):
        self.counts["logins_failed"] += 1
        session.failures += 1
        self._emit(LoginFailed(session.conn, user_id, session.failures))
        delay = self.login_gate.delay_after(session.failures)
        if delay > 0:
            self._enter(session, "failure")
            session.release_at = self._now + delay
            heapq.heappush(self._deadlines, (session.release_at, session.conn))
        else:
            self._answer_failure(session)

    def _answer_failure(self, session):
        session.release_at = None
        self._send(session.conn, wire.CODE_FAILED)
        if session.failures >= self.config.max_failures:
            self._emit(LimitReached(session.conn, "failed logins",
                                    "%d on one connection" % session.failures))
            self._close(session, "too many failed logins")
        else:
            self._enter(session, "answered 0")

    def _log_in(self, session, user_id):
        replaced = self._sessions.get(self._online.get(user_id))
        self.counts["logins_succeeded"] += 1
        self._enter(session, "password right")
        session.user_id = user_id
        session.relay_prefix = wire.relay_prefix(user_id)
        self._online[user_id] = session.conn
        self._stores.forget(user_id)                 # delivery is about to empty it
        for conn in self._lookups.get(user_id, ()):
            self._sessions[conn].lookup_stale = True
        self.login_gate.note_login(user_id, session.peer, session.trusted)
        self._emit(LoginSucceeded(session.conn, user_id))
        if replaced is not None:
            # The account stays online, so its watchers see no change.
            self._close(replaced, "replaced", wire.NOTICE_REPLACED)
        self._send(session.conn, wire.CODE_OK)
        self._emit(DeliverStored(session.conn, user_id))
        if replaced is None:
            self._tell_watchers_online(user_id)

    def _tell_watchers_online(self, user_id):
        for conn in self._watchers.get(user_id, ()):
            watcher = self._sessions[conn]
            if not watcher.partner_online:
                watcher.partner_online = True
                self._send(conn, wire.CODE_ONLINE + wire.NOTICE_ONLINE)
