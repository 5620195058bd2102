"""The core's view of the offline stores: how many messages wait for each account.

The messages themselves live in the database; the core needs only a count
per account, to refuse a message to a full store (seeds/PROTOCOL.md section
6).  A count is learned from a lookup (``AccountLookedUp``, answered by the
database after every store and delivery asked before it) and then kept up to
date by the core itself: one more for each store, one less for each store
that failed.  It is forgotten when the account logs in (delivery is about to
empty the store) or turns out to be gone.

A count belongs to one *generation* of an account: an account removed and
added again (``chatnet.accounts``) has a new one and an empty store, so the
lookup's count replaces ours.  Otherwise ours wins -- it already includes
what was stored since the question was asked.

Pure data, like the core that owns it.
"""


class StoreView(object):
    """Counts of stored messages per account, when known; see the module docstring."""

    def __init__(self, limit):
        self.limit = limit
        self._counts = {}           # account ID -> messages in its store
        self._generations = {}      # account ID -> which account the count is of

    def count(self, user_id):
        """The count of ``user_id``'s store, or None if unknown."""
        return self._counts.get(user_id)

    def take(self, user_id):
        """One more message for ``user_id``: True if it fits, False if the store is full."""
        count = self._counts.get(user_id, 0)
        if count >= self.limit:
            return False
        self._counts[user_id] = count + 1
        return True

    def force(self, user_id):
        """One more message, past the limit if need be (an undelivered one going back)."""
        self._counts[user_id] = self._counts.get(user_id, 0) + 1

    def failed(self, user_id):
        """A store the count already included did not happen."""
        count = self._counts.get(user_id)
        if count:
            self._counts[user_id] = count - 1

    def learn(self, user_id, stored, generation):
        """A lookup's count, for the account of that generation."""
        if self._generations.get(user_id) != generation:
            self._counts[user_id] = stored
            self._generations[user_id] = generation

    def forget(self, user_id):
        self._counts.pop(user_id, None)
        self._generations.pop(user_id, None)
