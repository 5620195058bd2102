"""``python -m chatnet.server``: run a chatnet server.

This module is glue: it reads the command line, opens the database, binds the
listening socket, wires a ``ChatCore`` to a ``Reactor`` and runs it until
SIGTERM or SIGINT.  It owns no protocol rule and no socket handling.

Exit status: 0 after a clean shutdown, 1 when the database or the address
cannot be used, 2 for a bad flag.
"""

import logging
import sys

from . import cli, passwords
from .core import ChatCore, CoreConfig
from .reactor import Reactor, format_address, open_listener
from .storage import MEMORY, Storage, StorageError

PROG = cli.program_name("chatnet.server", "chatnet-server")
DEFAULTS = CoreConfig()

#: ``--demo`` accounts: (ID, password).
DEMO_ACCOUNTS = (("alice", "alice"), ("bob", "bob"), ("carol", "carol"), ("dave", "dave"))

#: A server's database connection waits at most this long for a lock held by
#: ``chatnet.accounts``; it must not stall every client for long.
SERVER_BUSY_TIMEOUT_MS = 200


def parse_args(argv):
    parser = cli.ArgumentParser(
        prog=PROG, description="Run a chatnet chat server (PROTOCOL.md, version 1).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; :: for every IPv6 and IPv4 address)")
    parser.add_argument("--port", type=cli.port_number, default=7070,
                        help="TCP port (default 7070; 0 picks a free one)")
    parser.add_argument("--db", metavar="PATH", default=None,
                        help="SQLite database of accounts and stored messages (default chatnet.db)")
    parser.add_argument("--demo", action="store_true",
                        help="use a throw-away in-memory database with demo accounts")
    parser.add_argument("--store-limit", type=cli.positive_int, default=DEFAULTS.store_limit,
                        metavar="N", help="messages kept per offline account (default %(default)s)")
    parser.add_argument("--max-line", type=cli.positive_int, default=DEFAULTS.max_line,
                        metavar="BYTES", help="longest session line, newline included (default %(default)s)")
    parser.add_argument("--login-timeout", type=cli.positive_float, default=DEFAULTS.login_timeout,
                        metavar="SECONDS", help="time allowed to log in (default %(default)s)")
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"),
                        help="what to log on stderr (default warning; info logs logins and logouts)")
    args = parser.parse_args(argv)
    if args.demo and args.db is not None:
        parser.error("--demo uses an in-memory database; leave out --db")
    if args.max_line < 16:
        parser.error("argument --max-line: must be at least 16")
    if args.db is None:
        args.db = MEMORY if args.demo else "chatnet.db"
    return args


def open_storage(args):
    storage = Storage(args.db, busy_timeout_ms=SERVER_BUSY_TIMEOUT_MS)
    try:
        storage.lock_for_server()
        if args.demo:
            storage.add_accounts((user_id, passwords.hash_password(password.encode()))
                                 for user_id, password in DEMO_ACCOUNTS)
    except BaseException:
        storage.close()
        raise
    return storage


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        storage = open_storage(args)
    except StorageError as error:
        raise cli.CommandError(str(error))
    try:
        return serve(args, storage)
    finally:
        storage.close()


def serve(args, storage):
    try:
        listener = open_listener(args.host, args.port)
    except OSError as error:
        raise cli.CommandError("cannot listen on %s:%s: %s" % (
            args.host, args.port, error.strerror or error))
    config = CoreConfig(store_limit=args.store_limit, max_line=args.max_line,
                        login_timeout=args.login_timeout)
    reactor = Reactor(listener, ChatCore(config), storage)
    reactor.install_signal_handlers()
    if args.demo:
        print("demo accounts (ID:password): "
              + " ".join("%s:%s" % account for account in DEMO_ACCOUNTS), flush=True)
    elif not storage.account_count():
        logging.getLogger("chatnet.server").warning(
            "%s has no accounts yet; add one with: python -m chatnet.accounts --db %s add ID",
            args.db, args.db)
    address = format_address(reactor.address)
    print("listening on %s" % address, flush=True)
    logging.getLogger("chatnet.server").info("listening on %s, database %s", address, args.db)
    reactor.serve_forever()
    return 0


def entry_point():
    """The ``chatnet-server`` console script."""
    sys.exit(cli.run(main, PROG))


if __name__ == "__main__":
    entry_point()
