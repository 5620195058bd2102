"""``python -m chatnet.client``: chat from a terminal, or from a script.

    python -m chatnet.client [--host H] [--port P] [--user ID] [--to ID] [--plain] [--raw]
                             [--no-reconnect | --reconnect] [--bell | --no-bell] [--log FILE]
                             [--password-stdin] [--tls] [--tls-ca FILE] [--tls-fingerprint HEX]

Interactive (standard input is a terminal): asks for the ID and the password
(without echo), then opens a split screen -- messages above, a status line,
the input line below -- so incoming messages never garble what is being
typed.  The session outlives its connections: when the server goes away the
screen stays, says why, and the client logs in again (back-off with jitter;
``--no-reconnect`` turns that off); lines typed meanwhile wait and go out in
order.  ``--plain``, a dumb terminal, or a Python without ``curses`` gives
line mode instead, which redraws the prompt and the half-typed line after
every incoming line.

Scripted (standard input is not a terminal): with ``--password-stdin`` the
first line of stdin is the password; every further line is a message or a
``/command``; every line received is printed on stdout.  The client exits once
stdin has ended and the server has handled everything sent.  Scripts
reconnect only with ``--reconnect``.

Exit status (``chatnet.client.lifecycle.ExitStatus``): 0 done; 2 bad command line; 3
cannot connect; 4 wrong ID or password; 5 connection lost, or replaced by a
login elsewhere; 6 the server's certificate is not trusted; 7 (scripted) some
lines were not delivered -- no partner picked, or no such user; 130 Ctrl-C.

This module is the command line and the ways to run (interactive on a
screen, in line mode, scripted); the loop is ``chatnet.client.shell``, the
lifecycle ``chatnet.client.lifecycle``, the protocol
``chatnet.client.protocol``, the screen ``chatnet.client.screen``.
"""

import codecs
import os
import random
import sys

from .. import cli, wire
from ..net import tls
from .lifecycle import LOGIN_TIMEOUT, ClientLifecycle, ExitStatus
from .protocol import Info
from .screen import BELL_IDLE, CursesScreen, Presenter, PlainScreen
from .shell import PROG, ChatLoop, ClientExit, CursesKeyboard, PipeInput, PlainKeyboard


# ================================================================ the credentials

def ask_credentials(user, stream=sys.stderr, again=False):
    """Ask for an ID and a password on the terminal; valid ones only.

    The ID is asked for unless given; ``again`` (after a ``0``) asks for it
    anew, offering the last one, as the seed's step 5 has the client stay at
    its ID and password prompt.
    """
    while True:
        if user is None:
            user = input("ID: ").strip()
        elif again:
            user = input("ID [%s]: " % user).strip() or user
            again = False
        if not wire.is_valid_id(user.encode("utf-8", "replace")):
            print(wire.ID_RULE, file=stream)
            user = None
            continue
        try:
            password = cli.ask_password("Password for %s: " % user).encode("utf-8")
        except cli.NoTerminal:
            raise ClientExit("no terminal to ask for the password: use --password-stdin",
                             cli.USAGE_ERROR)
        if not wire.is_valid_password(password):
            print(wire.PASSWORD_RULE, file=stream)
            continue
        return user, password


# ================================================================ the ways to run

def new_session(options, user, password, interactive):
    """The one login path: interactive, scripted and reconnecting alike."""
    reconnect = options.reconnect if options.reconnect is not None else interactive
    return ClientLifecycle(user.encode("utf-8"), password, interactive, reconnect, random.Random(),
                         partner=options.to, secure=options.tls_context is not None,
                         login_timeout=options.login_timeout)


def run_interactive(options):
    """Ask for the credentials, chat; after a refused first login, ask again (seed step 5)."""
    user, again = options.user, False
    while True:
        user, password = ask_credentials(user, again=again)
        session = new_session(options, user, password, interactive=True)
        exit_ = run_screen(options, session, user)
        if exit_.status == ExitStatus.LOGIN_REFUSED and not session.logins:
            print("wrong ID or password", file=sys.stderr)
            again = True
            continue
        return _report(exit_)


def run_screen(options, session, user):
    use_curses = not options.plain and os.environ.get("TERM", "dumb") not in ("", "dumb")
    if use_curses:
        try:
            import curses
        except ImportError:
            use_curses = False
    if use_curses:
        return run_curses(options, session, user, curses)
    return run_plain(options, session, user)


def presenter_for(options, screen, user, scripted=False):
    presenter = Presenter(screen, "%s:%s" % (options.host, options.port), user, scripted=scripted,
                          raw=options.raw, bell=options.bell and not scripted, log=options.log,
                          name=PROG)
    if not getattr(screen, "utf8", True):
        import locale
        presenter.show(Info("this terminal's locale (%s) cannot show UTF-8: other characters are "
                            "shown as \\u escapes; use a UTF-8 locale (LANG=C.UTF-8) to see them"
                            % (locale.nl_langinfo(locale.CODESET) or "unknown")))
    return presenter


def run_curses(options, session, user, curses):
    import locale
    locale.setlocale(locale.LC_ALL, "")
    os.environ.setdefault("ESCDELAY", "25")

    def main(window):
        screen = CursesScreen(window, curses, utf8=screen_takes_utf8())
        with presenter_for(options, screen, user) as presenter:
            return ChatLoop(options, session, presenter, CursesKeyboard(screen)).run()

    return curses.wrapper(main)


def run_plain(options, session, user):
    import termios
    import tty
    ansi = os.environ.get("TERM", "dumb") not in ("", "dumb")
    screen = PlainScreen(sys.stdout, interactive=True, ansi=ansi, utf8=screen_takes_utf8())
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        with presenter_for(options, screen, user) as presenter:
            return ChatLoop(options, session, presenter, PlainKeyboard(screen, fd)).run()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        screen.close()


def screen_takes_utf8():
    """Can the terminal's locale show UTF-8?  If not, other characters are shown as escapes.

    Asked of the C library (which curses writes through), not of Python: in
    the C locale Python itself runs in UTF-8 mode (PEP 540), curses does not.
    """
    import locale
    try:
        locale.setlocale(locale.LC_CTYPE, "")
        return codecs.lookup(locale.nl_langinfo(locale.CODESET)).name == "utf-8"
    except (locale.Error, LookupError, AttributeError):
        return False


def run_scripted(options):
    if options.user is None:
        raise ClientExit("give --user ID when standard input is not a terminal", cli.USAGE_ERROR)
    if not wire.is_valid_id(options.user.encode("utf-8", "replace")):
        raise ClientExit("invalid ID %r: %s" % (options.user, wire.ID_RULE), cli.USAGE_ERROR)
    stdin_fd = sys.stdin.fileno()
    if options.password_stdin:
        password = read_first_line(stdin_fd)
    else:
        try:
            password = cli.ask_password("Password for %s: " % options.user).encode("utf-8")
        except (cli.NoTerminal, OSError):
            raise ClientExit("no terminal to ask for the password: use --password-stdin",
                             cli.USAGE_ERROR)
    if not wire.is_valid_password(password):
        raise ClientExit("invalid password: %s" % wire.PASSWORD_RULE, cli.USAGE_ERROR)
    session = new_session(options, options.user, password, interactive=False)
    screen = PlainScreen(sys.stdout, interactive=False)
    with presenter_for(options, screen, options.user, scripted=True) as presenter:
        return _report(ChatLoop(options, session, presenter, PipeInput(stdin_fd)).run())


def read_first_line(fd):
    """The first line of ``fd``, read byte by byte so nothing after it is taken."""
    line = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            break
        line += byte
    if not line and not byte:
        raise ClientExit("no password on standard input", cli.USAGE_ERROR)
    return bytes(line.rstrip(b"\r"))


def _report(exit_):
    if exit_.status and exit_.reason:
        print("%s: %s" % (PROG, exit_.reason), file=sys.stderr)
    return exit_.status


# ================================================================ command line

def parse_args(argv):
    parser = cli.ArgumentParser(prog=PROG, description="Chat on a chatnet server.")
    add_session_flags(parser)
    add_screen_flags(parser)
    add_tls_flags(parser)
    options = parser.parse_args(argv)
    check_tls(parser, options)
    if options.log is not None:
        try:
            options.log = open(options.log, "a", encoding="utf-8")
        except OSError as error:
            parser.error("argument --log: cannot open %s: %s" % (options.log, error.strerror or error))
    if options.to is not None and not wire.is_valid_id(options.to.encode("utf-8", "replace")):
        parser.error("argument --to: %r is not a valid ID" % options.to)
    return options


def add_session_flags(parser):
    """Where to connect, as whom, and what to do when the connection goes."""
    parser.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("--port", type=cli.port_number, default=None,
                        help="server port (default 7070; 7071 with --tls)")
    parser.add_argument("--user", metavar="ID", help="your ID (asked for if not given)")
    parser.add_argument("--to", metavar="ID", help="start chatting with ID right after logging in")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    parser.add_argument("--reconnect", dest="reconnect", action="store_const", const=True,
                        default=None, help="when the connection drops or the server is down, "
                        "retry (with back-off) and log in again; the default when interactive")
    parser.add_argument("--no-reconnect", dest="reconnect", action="store_const", const=False,
                        help="do not retry; the screen stays until you leave (/connect retries)")
    parser.add_argument("--login-timeout", metavar="SECONDS", type=cli.positive_float,
                        default=LOGIN_TIMEOUT, help="give a login the server does not answer up "
                        "after this long, as if it could not connect (default %(default).0f)")
    parser.add_argument("--keepalive", metavar="SECONDS", type=float, default=30.0,
                        help="probe an idle connection after this long, to notice a network "
                        "that went away within about twice that (default 30; 0: never)")


def add_screen_flags(parser):
    """How it looks and sounds, and what is kept."""
    parser.add_argument("--plain", action="store_true", help="line mode instead of the split screen")
    parser.add_argument("--raw", action="store_true", help="show the server's lines unchanged")
    parser.add_argument("--bell", dest="bell", action="store_true", default=True,
                        help="ring the terminal bell for a message after %d s without a key "
                        "(the default)" % BELL_IDLE)
    parser.add_argument("--no-bell", dest="bell", action="store_false", help="never ring the bell")
    parser.add_argument("--log", metavar="FILE",
                        help="append every line shown, with its date and time, to FILE")


def add_tls_flags(parser):
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, verifying the server's certificate and name")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="trust the CA (or self-signed certificate) in FILE (implies --tls)")
    parser.add_argument("--tls-fingerprint", metavar="HEX",
                        help="trust exactly the server whose public key (or certificate) has "
                        "this SHA-256 fingerprint, colons optional (implies --tls)")


def check_tls(parser, options):
    """The TLS flags made into ``options.tls_context`` (None: plaintext), and the port's default."""
    options.tls = options.tls or bool(options.tls_ca or options.tls_fingerprint)
    if options.port is None:
        options.port = 7071 if options.tls else 7070
    if options.tls_fingerprint:
        try:
            options.tls_fingerprint = tls.normalize_fingerprint(options.tls_fingerprint)
        except ValueError as error:
            parser.error("argument --tls-fingerprint: %s" % error)
    options.tls_context = None
    if options.tls:
        try:
            options.tls_context = tls.client_context(options.tls_ca, bool(options.tls_fingerprint))
        except (OSError, ValueError) as error:
            parser.error("argument --tls-ca: cannot read %s: %s" % (
                options.tls_ca, getattr(error, "strerror", None) or error))


def main(argv=None):
    options = parse_args(argv)
    try:
        if sys.stdin.isatty() and not options.password_stdin:
            return run_interactive(options)
        return run_scripted(options)
    except EOFError:
        print(file=sys.stderr)
        return 0                                 # Ctrl-D at a prompt
    except BrokenPipeError:
        # Whoever read our stdout went away (`| head`): nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def entry_point():
    """The ``chatnet-client`` console script."""
    sys.exit(cli.run(main, PROG))


if __name__ == "__main__":
    entry_point()
