"""chatnet: a TCP chat server and terminal client, standard library only.

Reading order for learners (each module's docstring says what it owns):

1. ``chatnet.wire``     -- the bytes on the wire: login frames, lines, notices.
2. ``chatnet.events``   -- the inputs the core takes and the actions it returns.
3. ``chatnet.core``     -- every protocol rule, as a pure state machine.
4. ``chatnet.reactor``  -- the ``selectors`` loop that feeds the core; each
   connection's bytes go through a ``chatnet.transport`` (TLS: ``chatnet.tls``),
   durability is ``chatnet.ledger``'s cork, blocking work ``chatnet.workers``'.
5. ``chatnet.storage``  -- accounts and stored messages in SQLite.
6. ``chatnet.passwords``-- how passwords are hashed and checked.
7. ``chatnet.server``, ``chatnet.accounts`` -- the command lines.
8. ``chatnet.client_core``, ``chatnet.screen``, ``chatnet.client`` -- the
   terminal client, built the same way: a pure protocol machine, the screen,
   and a ``selectors`` loop.

``chatnet.bench`` is a load generator for measuring a server; ``chatnet.cli``
holds what the command lines share.
"""

__version__ = "1.1.0"
