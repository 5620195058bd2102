"""The login gate: the rules that slow down password guessing, and their memory.

It owns three rules and the state they need:

* **failure delays** -- each failed login on a connection holds its ``0``
  back a little longer (``delay_after``);
* **the per-account throttle** -- failures for one account from untrusted
  addresses are counted over a window; at the limit, further attempts from
  untrusted addresses are refused without a password check, so many
  connections together cannot guess faster than one;
* **known addresses** -- addresses that logged in to an account before are
  spared by the throttle, so an attacker cannot lock the owner out.

It must not know about connections, sessions, bytes or the clock: the core
(``chatnet.core.machine``) asks it questions and passes ``now`` in.  Like the core it
is pure, and tested with plain data.

Memory stays bounded, and junk cannot flush a real entry
--------------------------------------------------------
Unknown IDs are counted exactly like real ones (otherwise the throttle would
tell which IDs exist), so an attacker can make entries at will.  Accounts
*below* the limit live in an LRU of ``tracked`` entries: junk evicts junk.
Accounts *at* the limit move to a second table that the LRU never touches;
an entry leaves it only when its failures age out of the window.  Reaching
the limit takes ``limit`` answered failures, each held back by the failure
delays, so that table grows at most by the rate the server answers
failures, and empties as the window passes.
"""

from collections import OrderedDict, deque

#: Accounts below the limit whose recent failures are remembered (an LRU).
TRACKED_ACCOUNTS = 10000
#: Addresses remembered per account as having logged in to it.
KNOWN_ADDRESSES = 16


class LoginGate(object):
    """Failure delays, the per-account throttle and known addresses.  See the module docstring."""

    def __init__(self, failure_delays, limit, window, tracked=TRACKED_ACCOUNTS):
        self._delays = tuple(failure_delays)
        self._limit = limit
        self._window = window
        self._tracked = tracked
        self._below_limit = OrderedDict()   # account ID -> deque of failure times (LRU)
        self._at_limit = {}                 # account ID -> deque of failure times (never evicted)
        self._known = OrderedDict()         # account ID -> OrderedDict of addresses (LRU)

    def delay_after(self, failures):
        """Seconds to hold back the ``0`` of a connection's ``failures``-th failure."""
        delays = self._delays
        return delays[min(failures, len(delays)) - 1] if delays else 0

    def is_throttled(self, user_id, peer, trusted, now):
        """True when an attempt on ``user_id`` from ``peer`` is refused unchecked."""
        if trusted or peer in self._known.get(user_id, ()):
            return False
        failures = self._at_limit.get(user_id)
        if failures is None:
            return False
        self._forget_old(failures, now)
        if len(failures) >= self._limit:
            return True
        del self._at_limit[user_id]            # aged below the limit: back among the rest
        if failures:
            self._track_below_limit(user_id, failures)
        return False

    def note_failure(self, user_id, trusted, now):
        """A password check for ``user_id`` failed (from a trusted network it does not count)."""
        if trusted:
            return
        failures = self._at_limit.get(user_id)
        if failures is None:
            failures = self._below_limit.pop(user_id, None) or deque()
        self._forget_old(failures, now)
        failures.append(now)
        if len(failures) >= self._limit:
            self._below_limit.pop(user_id, None)
            self._at_limit[user_id] = failures
        else:
            self._track_below_limit(user_id, failures)

    def note_login(self, user_id, peer, trusted):
        """``peer`` logged in to ``user_id``: spare it from now on."""
        if trusted or not peer:
            return
        addresses = self._known.pop(user_id, None) or OrderedDict()
        addresses.pop(peer, None)
        addresses[peer] = True
        while len(addresses) > KNOWN_ADDRESSES:
            addresses.popitem(last=False)
        self._known[user_id] = addresses
        if len(self._known) > self._tracked:
            self._known.popitem(last=False)

    def tracked_accounts(self):
        """How many accounts below the limit are remembered (for tests)."""
        return len(self._below_limit)

    def _track_below_limit(self, user_id, failures):
        self._below_limit[user_id] = failures
        self._below_limit.move_to_end(user_id)
        if len(self._below_limit) > self._tracked:
            self._below_limit.popitem(last=False)

    def _forget_old(self, failures, now):
        oldest = now - self._window
        while failures and failures[0] <= oldest:
            failures.popleft()
