"""chatnet: a TCP chat server and terminal client, standard library only.

The folders are the layers, bottom to top (nothing imports upward):

``wire``, ``values``   the bytes on the wire; values that compare by type
``core/``              the server's pure rules: events in, actions out
``net/``               layers of bytes (TLS, WebSocket, the web front), TCP options,
                       acknowledgements
``durable/``           SQLite, password hashing, the worker threads, the cork
``loop/``              the ``selectors`` loop and everything it owns
``client/``            the terminal client, built the same way
``page/``              the browser client: one page, its style, its script (served by ``--web``)
``server``, ``accounts``, ``bench``, ``cli``, ``systemd``   the commands

A first reading (the README's "Reading the code" lists it with line counts):

1. ``chatnet.wire``               -- login frames, line splitting, notices.
2. ``chatnet.core.events``, ``chatnet.core.phases`` -- the core's vocabulary and
   its transition table.
3. ``chatnet.core.machine``       -- ``ChatCore.handle``: one input, a list of actions.
4. ``chatnet.loop.reactor``       -- one pass: wait, read, time, commit, write.
5. ``chatnet.loop.transport``     -- one connection's read and write path.

Then the chapters: durability (``durable/``), acknowledgements
(``net/acks``), layers of bytes (``net/tls``, ``net/websocket``, ``net/web``,
``loop.transport.LayeredTransport``), admission
and limits (``loop/admission``, ``core/reading``, ``loop/departures``), and
the client (``client/``: protocol, lifecycle, screen, shell, main).
"""

__version__ = "1.2.0"
