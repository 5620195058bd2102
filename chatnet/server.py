"""``python -m chatnet.server``: run a chatnet server.

This module is glue: it reads the command line, opens the database, binds the
listening socket, wires a ``ChatCore`` to a ``Reactor`` and runs it until
SIGTERM or SIGINT.  It owns no protocol rule and no socket handling.

Exit status: 0 after a clean shutdown, 1 when the database or the address
cannot be used, 2 for a bad flag.
"""

import logging
import re
import signal
import sys

from . import cli, systemd
from .durable import passwords
from .loop.admission import TLS_REFUSALS_AT_ONCE, format_address, open_listener, parse_networks
from .core.machine import ChatCore, CoreConfig
from .loop.reactor import Reactor, ReactorLimits
from .durable.storage import MEMORY, Storage, StorageError
from .loop.metrics import parse_address
from .net.tls import KeyPairError, TLSContext
from .net.web import WebFront

log = logging.getLogger("chatnet.server")

PROG = cli.program_name("chatnet.server", "chatnet-server")
DEFAULTS = CoreConfig()
LIMITS = ReactorLimits()

#: Descriptors kept back from clients for the database, the listeners, the
#: selector, the wake-up socket and the TLS refusals under way (at most a
#: quarter of a small limit).
RESERVED_DESCRIPTORS = 64 + TLS_REFUSALS_AT_ONCE

#: ``--demo`` accounts: (ID, password).
DEMO_ACCOUNTS = (("alice", "alice"), ("bob", "bob"), ("carol", "carol"), ("dave", "dave"))
#: ``--demo``'s web page, unless --web says otherwise.
DEMO_WEB = ("127.0.0.1", 7080)

#: A server's database connection waits at most this long for a lock held by
#: ``chatnet.accounts``; it must not stall every client for long.
SERVER_BUSY_TIMEOUT_MS = 200


def parse_args(argv):
    parser = cli.ArgumentParser(
        prog=PROG, description="Run a chatnet chat server (seeds/PROTOCOL.md, version 1.2).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; :: for every IPv6 and IPv4 address)")
    parser.add_argument("--port", type=cli.port_number, default=7070,
                        help="TCP port (default 7070; 0 picks a free one)")
    add_tls_flags(parser)
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
    add_limit_flags(parser)
    parser.add_argument("--web", metavar="HOST:PORT", default=None,
                        help="serve the browser client's page and chat over WebSocket on HOST:PORT "
                        "(off by default, --demo: 127.0.0.1:7080; PORT 0 picks a free one; "
                        "https and wss with --tls-cert)")
    parser.add_argument("--web-origin", metavar="ORIGIN", action="append", default=[],
                        help="also let pages from ORIGIN (e.g. https://chat.example.org) chat "
                        "through --web; the page's own origin always may (repeatable)")
    parser.add_argument("--metrics", metavar="HOST:PORT", default=None,
                        help="serve GET /metrics (Prometheus' text format) on HOST:PORT "
                        "(off by default; PORT 0 picks a free one)")
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"),
                        help="what to log (default warning; info logs logins, logouts and limits)")
    parser.add_argument("--log-file", metavar="PATH",
                        help="log to this file instead of stderr; SIGHUP reopens it (for logrotate)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def add_tls_flags(parser):
    """--tls-cert, --tls-key, --tls-port, --no-plain."""
    tls = parser.add_argument_group("TLS (see the README's \"Running with TLS\")")
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="PEM certificate (chain) for the TLS listener")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key for the TLS listener")
    tls.add_argument("--tls-port", type=cli.port_number, default=7071,
                     help="TLS port (default 7071; 0 picks a free one)")
    tls.add_argument("--no-plain", action="store_true",
                     help="no plaintext listener: TLS only")


def add_limit_flags(parser):
    """The flags of the README's "Limits and policies" table."""
    limits = parser.add_argument_group("limits and policies (see the README's table)")
    limits.add_argument("--max-connections", type=cli.positive_int, default=None, metavar="N",
                        help="connections at once (default: what the descriptor limit allows)")
    limits.add_argument("--max-per-ip", type=cli.positive_int, default=LIMITS.max_per_ip,
                        metavar="N", help="connections from one address (default %(default)s; "
                        "trusted networks are exempt)")
    limits.add_argument("--trusted", default="127.0.0.0/8,::1", metavar="NETWORKS",
                        help="comma-separated networks exempt from the per-address and per-account "
                        "limits, or 'none' (default %(default)s)")
    limits.add_argument("--send-queue-limit", type=cli.positive_int, default=LIMITS.send_queue_limit,
                        metavar="BYTES", help="bytes waiting for a client that does not read before "
                        "it is dropped; its senders wait from a quarter of it (default %(default)s)")
    limits.add_argument("--write-timeout", type=cli.positive_float, default=LIMITS.write_timeout,
                        metavar="SECONDS", help="drop a client that takes no byte for this long "
                        "(default %(default)s)")
    limits.add_argument("--keepalive", type=cli.non_negative_float, default=LIMITS.keepalive,
                        metavar="SECONDS", help="idle time before TCP keepalive probes a silent "
                        "client; 0 turns them off (default %(default)s)")
    limits.add_argument("--unauthenticated-memory", type=cli.positive_int,
                        default=DEFAULTS.unauthenticated_budget, metavar="BYTES",
                        help="input held for connections that have not logged in, all together "
                        "(default %(default)s)")
    limits.add_argument("--max-handshakes", type=cli.positive_int, default=LIMITS.max_handshakes,
                        metavar="N", help="TLS handshakes under way at once, about 64 KiB each; "
                        "later ones wait their turn unread (default %(default)s)")
    limits.add_argument("--failure-delay", type=cli.non_negative_float,
                        default=DEFAULTS.failure_delays[0], metavar="SECONDS",
                        help="hold back a failed login's 0 this long, doubling twice "
                        "(default %(default)s)")
    limits.add_argument("--max-login-failures", type=cli.positive_int, default=DEFAULTS.max_failures,
                        metavar="N", help="failed logins before a connection is closed "
                        "(default %(default)s)")
    limits.add_argument("--account-failures", type=cli.positive_int,
                        default=DEFAULTS.account_failure_limit, metavar="N",
                        help="failed logins for one account from untrusted addresses within "
                        "--account-window before further ones are refused (default %(default)s)")
    limits.add_argument("--account-window", type=cli.positive_float,
                        default=DEFAULTS.account_failure_window, metavar="SECONDS",
                        help="the window in which --account-failures are counted "
                        "(default %(default)s)")


def check_args(parser, args):
    """What argparse cannot check alone; a usage error names the flag."""
    try:
        args.trusted = parse_networks(args.trusted)
    except ValueError as error:
        parser.error("argument --trusted: %s" % error)
    if args.demo and args.db is not None:
        parser.error("--demo uses an in-memory database; leave out --db")
    if args.max_line < 16:
        parser.error("argument --max-line: must be at least 16, not %d" % args.max_line)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.no_plain and not args.tls_cert:
        parser.error("--no-plain needs a TLS listener (--tls-cert and --tls-key)")
    for flag in ("metrics", "web"):
        if getattr(args, flag) is not None:
            try:
                setattr(args, flag, parse_address(getattr(args, flag)))
            except ValueError as error:
                parser.error("argument --%s: %s" % (flag, error))
    args.web_by_default = args.demo and args.web is None
    if args.web_by_default:
        args.web = DEMO_WEB
    if args.web_origin and args.web is None:
        parser.error("--web-origin needs --web")
    for origin in args.web_origin:
        if not re.match(r"^https?://[^/\s]+/?$", origin):
            parser.error("argument --web-origin: expected http://HOST[:PORT] or https://HOST[:PORT], "
                         "not %r" % origin)
    if args.db is None:
        args.db = MEMORY if args.demo else "chatnet.db"


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


def set_up_logging(args):
    """Log to stderr, or to ``--log-file``; return the handler.

    SIGHUP is ignored from here on, so a closed terminal cannot stop the
    server; with ``--log-file`` the reactor later makes it reopen the file.
    """
    if args.log_file:
        try:
            handler = logging.FileHandler(args.log_file, encoding="utf-8")
        except OSError as error:
            raise cli.CommandError("cannot open the log file %s: %s" % (
                args.log_file, error.strerror or error))
    else:
        handler = logging.StreamHandler(sys.stderr)
    if not args.log_file and systemd.logging_to_journal(sys.stderr):
        handler.setFormatter(systemd.journal_formatter())      # the journal keeps the time
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return handler


def reopen_log(handler):
    """Close and open the log file again (after logrotate moved it)."""
    handler.acquire()
    try:
        if handler.stream is not None:
            handler.stream.close()
        handler.stream = handler._open()
    finally:
        handler.release()


def descriptor_budget():
    """Raise the soft descriptor limit to the hard one; return how many clients fit."""
    try:
        import resource
    except ImportError:                       # not POSIX
        return LIMITS.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - min(RESERVED_DESCRIPTORS, soft // 4))


def main(argv=None):
    args = parse_args(argv)
    handler = set_up_logging(args)
    try:
        storage = open_storage(args)
    except StorageError as error:
        raise cli.CommandError(str(error))
    try:
        return serve(args, storage, handler)
    finally:
        storage.close()


def serve(args, storage, log_handler):
    tls = open_tls(args)
    listener = None if args.no_plain else listen(args.host, args.port)
    if tls is not None:
        tls = (listen(args.host, args.tls_port), tls)
    metrics = listen(*args.metrics) if args.metrics is not None else None
    web = open_web(args, tls[1] if tls is not None else None)
    delay = args.failure_delay
    config = CoreConfig(store_limit=args.store_limit, max_line=args.max_line,
                        login_timeout=args.login_timeout,
                        failure_delays=(delay, 2 * delay, 4 * delay) if delay else (),
                        max_failures=args.max_login_failures,
                        account_failure_limit=args.account_failures,
                        account_failure_window=args.account_window,
                        unauthenticated_budget=args.unauthenticated_memory)
    limits = ReactorLimits(max_connections=args.max_connections or descriptor_budget(),
                           max_per_ip=args.max_per_ip, trusted_networks=args.trusted,
                           send_queue_limit=args.send_queue_limit,
                           write_timeout=args.write_timeout, keepalive=args.keepalive,
                           refusal_timeout=args.login_timeout,
                           max_handshakes=args.max_handshakes)
    reactor = Reactor(listener, ChatCore(config), storage, limits, tls=tls, metrics=metrics,
                      web=web)
    notifier = systemd.Notifier.from_environment()
    reactor.install_signal_handlers(on_hangup=hangup_handler(args, log_handler, tls, notifier))
    if args.demo:
        print("demo accounts (ID:password): "
              + " ".join("%s:%s" % account for account in DEMO_ACCOUNTS), flush=True)
    elif not storage.account_count():
        log.warning("%s has no accounts yet; add one with: python -m chatnet.accounts --db %s add ID",
                    args.db, args.db)
    for host, port, kind in reactor.listening():
        address = format_address((host, port)) + LISTENER_WORDS[kind]
        if kind.startswith("web"):
            address += " %s://%s/" % ("https" if kind == "web+tls" else "http",
                                      format_address((host, port)))
        print("listening on %s" % address, flush=True)
        log.info("listening on %s, database %s", address, args.db)
    if metrics is not None:
        print("metrics on http://%s/metrics" % format_address(reactor.metrics_address()), flush=True)
    if notifier is not None:
        tell_systemd(reactor, notifier)
    reactor.serve_forever()
    print("stopped (%s)" % reactor.stopped_by, flush=True)
    return 0


def tell_systemd(reactor, notifier):
    """READY=1 now, STOPPING=1 at shutdown, WATCHDOG=1 from the loop's own timer."""
    notifier.ready()
    reactor.when_stopping(notifier.stopping)
    interval = notifier.watchdog_interval
    if interval:
        def beat(_):
            notifier.watchdog()
            reactor.call_at(reactor.now + interval, beat)
        reactor.call_at(reactor.now, beat)


#: What a listener's line says after its address.
LISTENER_WORDS = {"plain": "", "tls": " (TLS)", "web": " (web)", "web+tls": " (web)"}


def open_web(args, tls):
    """The web listener: ``(socket, WebFront, TLSContext or None)``, or None.

    --demo's own web port (7080) is a convenience: when it is taken, the demo
    serves without a page and says so, instead of not starting.
    """
    if args.web is None:
        return None
    try:
        front = WebFront(args.max_line, secure=tls is not None, origins=args.web_origin)
    except OSError as error:
        raise cli.CommandError("cannot read the web page's files: %s" % error)
    try:
        sock = open_listener(*args.web)
    except OSError as error:
        if args.web_by_default:
            print("no web page: cannot listen on %s (%s); choose another with --web HOST:PORT"
                  % (format_address(args.web), error.strerror or error), file=sys.stderr, flush=True)
            return None
        raise cli.CommandError("cannot listen on %s: %s" % (format_address(args.web),
                                                              error.strerror or error))
    return sock, front, tls


def listen(host, port):
    try:
        return open_listener(host, port)
    except OSError as error:
        raise cli.CommandError("cannot listen on %s:%s: %s" % (host, port, error.strerror or error))


def open_tls(args):
    """The TLS context from --tls-cert and --tls-key, or None; errors are one line."""
    if not args.tls_cert:
        return None
    try:
        tls = TLSContext(args.tls_cert, args.tls_key)
    except KeyPairError as error:
        raise cli.CommandError("cannot use TLS: %s" % error)
    except OSError as error:
        raise cli.CommandError("cannot use the TLS certificate %s and key %s: %s" % (
            args.tls_cert, args.tls_key, tls_reason(error)))
    if not tls.key_is_private():
        log.warning("the TLS private key %s can be read by other users; chmod 600 it", args.tls_key)
    return tls


def tls_reason(error):
    if isinstance(error, KeyPairError):
        return str(error)
    return getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)


def hangup_handler(args, log_handler, tls, notifier):
    """What SIGHUP does: reopen --log-file, reload the TLS pair; None if neither applies."""
    if not args.log_file and tls is None and notifier is None:
        return None

    def on_hangup():
        if notifier is not None:
            notifier.reloading()
        if args.log_file:
            reopen_log(log_handler)
        if tls is not None:
            try:
                tls[1].reload()
                log.info("reloaded the TLS certificate %s and key %s", args.tls_cert, args.tls_key)
            except (KeyPairError, OSError) as error:
                log.warning("cannot reload the TLS certificate %s and key %s (%s); keeping the "
                            "old pair", args.tls_cert, args.tls_key, tls_reason(error))
        if notifier is not None:
            notifier.ready()
    return on_hangup


def entry_point():
    """The ``chatnet-server`` console script."""
    sys.exit(cli.run(main, PROG))


if __name__ == "__main__":
    entry_point()
