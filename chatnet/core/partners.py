"""The core's partner rules (seeds/PROTOCOL.md section 3): ``chatwith/``, lookups, watchers.

``PartnerRules`` answers ``chatwith/<ID>``: every ID is looked up
(``LookUpAccount``: it may have been removed since it logged in), the answer
is ``0``, ``1`` or ``2`` with its notice, and the session starts watching its
partner, so it hears when the partner comes online or leaves.  It also
forgets accounts that were removed (closing their sessions) and keeps the
core's view of their stores up to date from what lookups say.

It owns two tables, and nothing else writes them::

    watchers:  account ID -> conns whose partner is that account
    lookups:   account ID -> conns waiting for the answer to its lookup

``ChatCore`` holds one ``PartnerRules`` as h11's ``Connection`` holds its
``ConnectionState``: the core hands it the registry it shares (``sessions``,
``online``, ``stores``) and its own steps (``CoreSteps``: ``send``, ``emit``,
``enter``, ``close``, ``carry_on``), and calls it; it never reaches back into
the core.  Like the rest of the core it is pure: no socket, clock or
database.
"""

from .. import wire
from .events import LimitReached, LookUpAccount
from .phases import Phase


class PartnerRules(object):
    """Section 3's ``chatwith/``; see the module docstring."""

    def __init__(self, registry, steps):
        self._sessions = registry.sessions   # conn -> Session (shared with the core)
        self._online = registry.online       # account ID -> conn (shared; read here)
        self._stores = registry.stores       # the core's StoreView
        self._steps = steps
        self._watchers = {}                  # account ID -> set of conns whose partner it is
        self._lookups = {}                   # account ID -> conns waiting for its lookup

    def watchers(self, user_id):
        """The conns whose partner is ``user_id`` (a copy)."""
        return set(self._watchers.get(user_id, ()))

    # ---------------------------------------------------------------- inputs

    def chatwith(self, session, target):
        """``chatwith/<target>`` from a CHATTING session."""
        if not wire.is_valid_id(target):
            self._answer(session, target, registered=False)
        else:
            # Even an online account is looked up: it may have been removed
            # (with ``chatnet.accounts``) since it logged in.
            self._steps.enter(session, "chatwith")
            session.looking_up = target
            self._lookups.setdefault(target, set()).add(session.conn)
            self._steps.emit(LookUpAccount(session.conn, target, session.user_id))

    def looked_up(self, event):
        """``AccountLookedUp``: answer the ``chatwith/`` that asked, unless the answer is stale."""
        session = self._sessions.get(event.conn)
        if (session is None or session.phase is not Phase.LOOKING_UP
                or session.looking_up != event.user_id):
            return
        if session.lookup_stale:
            # The account logged in (and its store emptied) after the database
            # was asked: the count is out of date, so ask again.
            session.lookup_stale = False
            self._steps.emit(LookUpAccount(session.conn, event.user_id, session.user_id))
            return
        self._forget_lookup(session)
        self._steps.enter(session, "looked up")
        registered = self._learn_account(event)
        if session.phase is Phase.CHATTING:         # not closed: its own account was removed
            self._answer(session, event.user_id, registered)
            self._steps.carry_on(session)

    def accounts_removed(self, event):
        """``AccountsRemoved``: forget each account's store; close it where it is online."""
        for user_id in event.user_ids:
            self._account_removed(user_id)

    # ---------------------------------------------------------------- comings and goings

    def logged_in(self, user_id, replaced):
        """``user_id`` just logged in (``replaced``: it already was, on another connection).

        Lookups of it under way will bring a stale store count; its watchers
        hear ``2`` unless it was online already (then they see no change).
        """
        for conn in self._lookups.get(user_id, ()):
            self._sessions[conn].lookup_stale = True
        if replaced:
            return
        for conn in self._watchers.get(user_id, ()):
            watcher = self._sessions[conn]
            if not watcher.partner_online:
                watcher.partner_online = True
                self._steps.send(conn, wire.CODE_ONLINE + wire.NOTICE_ONLINE)

    def leaving(self, session):
        """``session`` is closing: it waits for no lookup and watches nobody any more."""
        if session.looking_up is not None:
            self._forget_lookup(session)
        self._set_partner(session, None)

    def logged_out(self, user_id):
        """``user_id`` is offline now: its watchers hear so and lose their partner."""
        for conn in self._watchers.pop(user_id, ()):
            watcher = self._sessions[conn]
            watcher.partner = None
            watcher.partner_online = False
            self._steps.send(conn, wire.NOTICE_DESTROYED)

    def forget_everyone(self):
        """The server is stopping: nobody watches anybody, so nobody hears of the others."""
        for session in self._sessions.values():
            session.partner = None
            session.partner_online = False
        self._watchers.clear()

    # ---------------------------------------------------------------- the rules

    def _account_removed(self, user_id):
        """``user_id`` is no longer registered: forget its store; close it if it is online."""
        self._stores.forget(user_id)
        removed = self._sessions.get(self._online.get(user_id))
        if removed is not None:
            self._steps.emit(LimitReached(removed.conn, "account removed",
                                          "%s is no longer registered" % user_id.decode("ascii")))
            self._steps.close(removed, "account removed", wire.NOTICE_REMOVED)

    def _forget_lookup(self, session):
        waiting = self._lookups.get(session.looking_up)
        if waiting is not None:
            waiting.discard(session.conn)
            if not waiting:
                del self._lookups[session.looking_up]
        session.looking_up = None

    def _answer(self, session, target, registered):
        self._set_partner(session, None)
        if not registered:
            self._steps.send(session.conn, wire.CODE_FAILED + wire.NOTICE_NO_SUCH_USER)
            return
        self._set_partner(session, target)
        session.partner_online = target in self._online
        if session.partner_online:
            self._steps.send(session.conn, wire.CODE_ONLINE + wire.NOTICE_ONLINE)
        else:
            self._steps.send(session.conn, wire.CODE_OK + wire.NOTICE_OFFLINE)

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
