"""The core's partner rules (seeds/PROTOCOL.md section 3): ``chatwith/``, lookups, watchers.

``PartnerRules`` is the part of ``chatnet.core.ChatCore`` that answers
``chatwith/<ID>``: every ID is looked up (``LookUpAccount``: it may have been
removed since it logged in), the answer is ``0``, ``1`` or ``2`` with its
notice, and the session starts watching its partner, so it hears when the
partner comes online or leaves.  It also forgets accounts that were removed
(closing their sessions) and keeps the core's view of their stores.

It is a mixin of ``ChatCore`` and shares its state (the sessions, who is
online, who watches whom, the lookups waiting); like the rest of the core it
is pure.
It uses ``ChatCore``'s output (``_send``, ``_emit``), ``_enter``, ``_close``
and ``_carry_on``.
"""

from .. import wire
from .events import LimitReached, LookUpAccount
from .phases import Phase


class PartnerRules(object):
    """Section 3's ``chatwith/`` for ``ChatCore``; see the module docstring."""

    def _on_account_looked_up(self, event):
        session = self._sessions.get(event.conn)
        if (session is None or session.phase is not Phase.LOOKING_UP
                or session.looking_up != event.user_id):
            return
        if session.lookup_stale:
            # The account logged in (and its store emptied) after the database
            # was asked: the count is out of date, so ask again.
            session.lookup_stale = False
            self._emit(LookUpAccount(session.conn, event.user_id))
            return
        self._forget_lookup(session)
        self._enter(session, "looked up")
        registered = self._learn_account(event)
        if session.phase is Phase.CHATTING:         # not closed: its own account was removed
            self._answer_chatwith(session, event.user_id, registered)
            self._carry_on(session)

    def _on_accounts_removed(self, event):
        for user_id in event.user_ids:
            self._account_removed(user_id)

    def _account_removed(self, user_id):
        """``user_id`` is no longer registered: forget its store; close it if it is online."""
        self._stores.forget(user_id)
        removed = self._sessions.get(self._online.get(user_id))
        if removed is not None:
            self._emit(LimitReached(removed.conn, "account removed",
                                    "%s is no longer registered" % user_id.decode("ascii")))
            self._close(removed, "account removed", wire.NOTICE_REMOVED)

    def _chatwith(self, session, target):
        if not wire.is_valid_id(target):
            self._answer_chatwith(session, target, registered=False)
        else:
            # Even an online account is looked up: it may have been removed
            # (with ``chatnet.accounts``) since it logged in.
            self._enter(session, "chatwith")
            session.looking_up = target
            self._lookups.setdefault(target, set()).add(session.conn)
            self._emit(LookUpAccount(session.conn, target))

    def _forget_lookup(self, session):
        waiting = self._lookups.get(session.looking_up)
        if waiting is not None:
            waiting.discard(session.conn)
            if not waiting:
                del self._lookups[session.looking_up]
        session.looking_up = None

    def _answer_chatwith(self, session, target, registered):
        self._set_partner(session, None)
        if not registered:
            self._send(session.conn, wire.CODE_FAILED + wire.NOTICE_NO_SUCH_USER)
            return
        self._set_partner(session, target)
        session.partner_online = target in self._online
        if session.partner_online:
            self._send(session.conn, wire.CODE_ONLINE + wire.NOTICE_ONLINE)
        else:
            self._send(session.conn, wire.CODE_OK + wire.NOTICE_OFFLINE)

    def _learn_account(self, answer):
        """What a lookup says of an account: is it still there, how full is its store?

        Returns whether it is registered.  A lookup that failed (the database
        could not be read) changes nothing, and an account that is online is
        registered as far as it can tell.
        """
        target = answer.user_id
        if answer.failed:
            return target in self._online
        if not answer.registered:
            self._account_removed(target)
            return False
        self._stores.learn(target, answer.stored, answer.generation)
        return True

    def _set_partner(self, session, partner):
        old = session.partner
        if old is not None:
            watchers = self._watchers[old]
            watchers.discard(session.conn)
            if not watchers:
                del self._watchers[old]
        session.partner = partner
        session.partner_online = False
        if partner is not None:
            self._watchers.setdefault(partner, set()).add(session.conn)
