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

Exit status (``chatnet.session.ExitStatus``): 0 done; 2 bad command line; 3
cannot connect; 4 wrong ID or password; 5 connection lost, or replaced by a
login elsewhere; 6 the server's certificate is not trusted; 7 (scripted) some
lines were not delivered -- no partner picked, or no such user; 130 Ctrl-C.

This module is the client's I/O shell and nothing more: a ``selectors`` loop
over the server connection and the keyboard (or stdin), in the manner of the
server's reactor.  When to connect, retry, half-close or exit is
``chatnet.session``'s decision (pure, time passed in); what the server's
lines mean is ``chatnet.client_core``'s; how things look is
``chatnet.screen``'s.  This module must not decide any of those.
"""

import codecs
import errno
import getpass
import os
import random
import selectors
import socket
import ssl
import sys
import time

from .. import cli, wire
from ..net import tcp, tls
from ..net.acks import bytes_acked
from .protocol import Info, SendBytes
from .screen import BELL_IDLE, CursesScreen, EscapeSequence, Presenter, PlainScreen
from .lifecycle import (
    ClientSession, Connect, Disconnect, Exit, ExitStatus, HalfClose,
)

PROG = cli.program_name("chatnet.client", "chatnet-client")

# What a selector key's data names: the one connection, and the keyboard.
SERVER, KEYBOARD = "server", "keyboard"

RECV_SIZE = 65536
QUIT_FLUSH = 2.0             # leaving: how long to try to hand the last bytes to the kernel


class ClientExit(cli.CommandError):
    """Stop the client with a one-line message and a status."""


# ================================================================ input sources

class PipeInput(object):
    """Lines from a pipe or file (scripted use)."""

    def __init__(self, fd):
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""

    def read_lines(self):
        """The lines that arrived, or None at end of input."""
        data = os.read(self.fd, RECV_SIZE)
        if not data:
            return None if not self._partial else self._finish()
        text = self._partial + self._decoder.decode(data)
        lines = text.split("\n")
        self._partial = lines.pop()
        return [line.rstrip("\r") for line in lines]

    def _finish(self):
        last, self._partial = self._partial, ""
        return [last.rstrip("\r")]


class CursesKeyboard(object):
    """Keys from curses; the screen's line editor turns them into lines.

    Where the C library's locale is not UTF-8, curses cannot decode what the
    terminal sends: then bytes are read one by one (``getch``) and decoded
    here, so Korean typed on a UTF-8 terminal still arrives whole.
    """

    def __init__(self, screen, fd=0):
        self.screen = screen
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def read_lines(self):
        lines = []
        while True:
            key = self._next_key()
            if key is None:
                return lines                               # no more keys for now
            if key == "\x04" and not self.screen.editor.chars:
                return lines + [None]                      # Ctrl-D on an empty line: leave
            line = self.screen.handle_key(key)
            if line is not None:
                lines.append(line)

    def _next_key(self):
        window, curses = self.screen.window, self.screen.curses
        if self.screen.utf8:
            try:
                return window.get_wch()
            except curses.error:
                return None
        while True:
            code = window.getch()
            if code == -1:
                return None
            if code > 0xFF:
                return code                                # a key curses named: KEY_LEFT ...
            text = self._decoder.decode(bytes([code]))
            if text:
                return text


class PlainKeyboard(object):
    """Keys from a terminal in cbreak mode, edited with the screen's line editor."""

    def __init__(self, screen, fd=0):
        self.screen = screen
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._escape = EscapeSequence()

    def read_lines(self):
        data = os.read(self.fd, 4096)
        if not data:
            return [None]
        lines = []
        editor = self.screen.editor
        for char in self._decoder.decode(data):
            taken, name = self._escape.feed(char)
            if taken:
                if name is not None:
                    getattr(editor, name)()
            elif char in "\r\n":
                self.screen.forget_input_line()
                lines.append(editor.submit())
            elif char == "\t":
                if not editor.chars:
                    lines.append("/to")                        # answer whoever wrote last
                else:
                    editor.complete(self.screen.known_ids)
            elif char in "\x7f\x08":
                editor.backspace()
            elif char == "\x04":
                if not editor.chars:
                    return lines + [None]
                editor.delete()
            elif char == "\x15":
                editor.kill_to_start()
            elif char == "\x17":
                editor.kill_word()
            elif char == "\x01":
                editor.home()
            elif char == "\x05":
                editor.end()
            else:
                editor.insert(char)
        self.screen.redraw_input()
        return lines


# ================================================================ the connection

class ServerConnection(object):
    """The client's one connection: its socket, its TLS layer, its send queue.

    The client's counterpart of the server's transport, small because there is
    one: ``open`` starts a nonblocking connect, ``advance`` carries it (and
    the TLS handshake) forward when the socket is ready, ``write`` queues and
    sends, ``flush`` sends what the kernel would not take before.  Errors are
    raised as ``OSError`` for the loop to hand to the session in words.
    """

    CONNECTING, HANDSHAKING, OPEN = "connecting", "handshaking", "open"

    def __init__(self, host, port, tls_context, keepalive):
        self.host, self.port, self.tls_context = host, port, tls_context
        self.keepalive = keepalive       # seconds idle before probing whether the server is there
        self.sock = None
        self.fd = None
        self.state = None
        self.outgoing = bytearray()
        self.written = 0                 # plaintext bytes handed to the kernel (or the TLS layer)
        self._records = []               # TLS: (plaintext end, ciphertext end) of each send

    def open(self):
        family, kind, protocol, _, address = socket.getaddrinfo(
            self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
        sock.setblocking(False)
        result = sock.connect_ex(address)
        if result not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            raise OSError(result, os.strerror(result))
        self.sock, self.fd, self.state = sock, sock.fileno(), self.CONNECTING
        self.outgoing = bytearray()
        self.written, self._records = 0, []

    def advance(self):
        """The socket is ready while connecting or shaking hands: True once open."""
        if self.state is self.CONNECTING:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            tcp.no_delay(self.sock)
            tcp.keep_alive(self.sock, self.keepalive)   # a network that vanished is noticed
            if self.tls_context is None:
                self.state = self.OPEN
                return True
            self.sock = tls.SecureSocket(self.sock, self.tls_context, self.host)
            self.state = self.HANDSHAKING
        try:
            self.sock.handshake()
        except BlockingIOError:
            self.sock.flush()
            return False
        self.state = self.OPEN
        return True

    def recv(self):
        """Bytes from the server, ``b""`` at its end; BlockingIOError when there are none yet."""
        return self.sock.recv(RECV_SIZE)

    def write(self, data):
        self.outgoing += data

    def flush(self):
        """Send what waits, as much as the kernel takes now."""
        if isinstance(self.sock, tls.SecureSocket):
            self.sock.flush()
            if self.sock.pending:
                return
        if self.outgoing:
            try:
                sent = self.sock.send(self.outgoing)
            except (BlockingIOError, InterruptedError):
                return
            del self.outgoing[:sent]
            self.written += sent
            if isinstance(self.sock, tls.SecureSocket):
                self._records.append((self.written, self.sock.produced))

    def acked(self):
        """How many plaintext bytes the server's TCP acknowledged (chatnet.acks).

        Where the kernel cannot tell, what it was handed counts.  On TLS the
        count is of records: a send whose records were not all acknowledged
        is not.
        """
        wire_acked = bytes_acked(self.raw_socket())
        if wire_acked is None:
            return self.written
        if not isinstance(self.sock, tls.SecureSocket):
            return wire_acked
        records = self._records
        taken = 0
        while taken < len(records) and records[taken][1] <= wire_acked:
            taken += 1
        if not taken:
            return 0 if not records or records[0][1] > wire_acked else records[0][0]
        del records[:taken - 1]                    # keep the last one acknowledged: the base
        return records[0][0]

    def raw_socket(self):
        return self.sock.raw if isinstance(self.sock, tls.SecureSocket) else self.sock

    @property
    def idle(self):
        """Nothing waits to be written."""
        return not self.outgoing and not getattr(self.sock, "pending", False)

    def wanted(self):
        """The selector events this connection needs: ``EVENT_WRITE`` only while bytes wait."""
        if self.state is self.CONNECTING:
            return selectors.EVENT_WRITE
        if self.state is self.HANDSHAKING or not self.idle:
            return selectors.EVENT_READ | selectors.EVENT_WRITE
        return selectors.EVENT_READ

    def half_close(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)     # the server answers what it has, then closes
        except OSError:
            pass

    def drain(self, timeout):
        """Leaving: hand what waits to the kernel, waiting at most ``timeout`` seconds."""
        if self.state is not self.OPEN or self.idle:
            return
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(timeout)
            if isinstance(self.sock, tls.SecureSocket):
                self.sock.flush()
            self.sock.sendall(bytes(self.outgoing))
        except OSError:
            pass

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = self.fd = self.state = None


# ================================================================ the loop

class ChatLoop(object):
    """The client's selectors loop: one server connection, one input source, the session's timers.

    It waits, reads (the server or the keyboard), hands what happened to the
    session, and carries out the effects the session returns -- the one place
    effects turn into I/O is ``_apply``.
    """

    def __init__(self, options, session, presenter, keyboard):
        self.options = options
        self.session = session
        self.presenter = presenter
        self.keyboard = keyboard
        self.server = ServerConnection(options.host, options.port, options.tls_context,
                                       options.keepalive)
        self.selector = selectors.DefaultSelector()
        self.exit = None                         # the session's Exit, once it comes
        #: The session's effects that are I/O, by type; any other is shown.
        self._carry_out = {
            SendBytes: self._write, Connect: self._open_for, Disconnect: self._close_for,
            HalfClose: self._half_close, Exit: self._exit_with,
        }
        self._registered_mask = None
        self._typed_early = []                   # a regular file on stdin, read whole
        if keyboard is not None:
            try:
                self.selector.register(keyboard.fd, selectors.EVENT_READ, KEYBOARD)
            except (PermissionError, ValueError):
                # epoll cannot watch a regular file, and it never blocks: read it now.
                self._typed_early = read_whole(keyboard)

    # ---------------------------------------------------------------- running

    def run(self):
        now = time.monotonic()
        self._apply(self.session.start(now))
        for line in self._typed_early:
            self._apply(self.session.typed(line, now) if line is not None
                        else self.session.input_ended(now))
        while self.exit is None:
            for key, mask in self.selector.select(self._timeout()):
                self._dispatch(key.data, mask)
                if self.exit is not None:
                    break
            self._run_timers()
            self.presenter.tick()
        if self.server.sock is not None:
            self.server.drain(QUIT_FLUSH)
            self._close()
        self.selector.close()
        return self.exit

    def _timeout(self):
        timeout = self.presenter.tick_interval       # a curses screen follows resizes
        deadline = self.session.deadline()
        if deadline is not None:
            until = max(0.0, deadline - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout

    def _run_timers(self):
        deadline = self.session.deadline()
        if self.exit is None and deadline is not None:
            now = time.monotonic()
            if now >= deadline:
                self._apply(self.session.timer(now))

    def _dispatch(self, target, mask):
        """The one dispatch: a key's data says what the event is for (README, "Reading the code")."""
        if target is SERVER:
            self._server_ready(mask)
        elif target is KEYBOARD:
            self._keys_ready()

    # ---------------------------------------------------------------- the server

    def _server_ready(self, mask):
        if self.server.state is not ServerConnection.OPEN:
            self._advance()
            return
        if mask & selectors.EVENT_READ:
            self._receive()
        if self.server.sock is not None and mask & selectors.EVENT_WRITE:
            self._flush()

    def _advance(self):
        where = "%s:%s" % (self.server.host, self.server.port)
        handshaking = self.server.state is ServerConnection.HANDSHAKING
        try:
            ready = self.server.advance()
        except (ssl.SSLError, tls.TLSFailed) as error:
            self._close()
            self._apply(self.session.tls_refused(tls_failure(error, self.options)))
            return
        except OSError as error:
            self._close()
            words = error.strerror or str(error)
            if handshaking:
                self._apply(self.session.lost("TLS with %s failed: %s" % (where, words),
                                              time.monotonic()))
            else:
                self._apply(self.session.connect_failed("cannot connect to %s: %s" % (where, words),
                                                        time.monotonic()))
            return
        if ready and self.server.tls_context is not None:
            problem = pin_problem(self.server.sock, self.options)
            if problem is not None:
                self._close()
                self._apply(self.session.tls_refused(problem))
                return
        if ready:
            self._apply(self.session.connected(time.monotonic()))
        self._update_interest()

    def _receive(self):
        try:
            data = self.server.recv()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lost("connection lost: %s" % (error.strerror or error))
            return
        if not data:
            self._lost("the server closed the connection")
            return
        self._apply(self.session.received(data, time.monotonic()))

    def _flush(self):
        try:
            self.server.flush()
        except OSError as error:
            self._lost("connection lost: %s" % (error.strerror or error))
            return
        self._update_interest()
        if self.server.idle:
            self._apply(self.session.flushed(time.monotonic(), self.server.acked()))

    def _lost(self, reason):
        acked = self.server.acked() if self.server.sock is not None else None
        self._close()                  # (the kernel still told what was acknowledged, above)
        self._apply(self.session.lost(reason, time.monotonic(), acked))

    def _open(self):
        try:
            self.server.open()
        except OSError as error:
            self._apply(self.session.connect_failed("cannot connect to %s:%s: %s" % (
                self.server.host, self.server.port, error.strerror or error), time.monotonic()))
            return
        self._update_interest()

    def _close(self):
        if self.server.fd is not None and self._registered_mask is not None:
            self.selector.unregister(self.server.fd)
        self._registered_mask = None
        self.server.close()

    def _update_interest(self):
        """Tell the selector what the connection waits for -- only when that changed."""
        if self.server.sock is None:
            return
        mask = self.server.wanted()
        if self._registered_mask is None:
            self.selector.register(self.server.fd, mask, SERVER)
        elif mask != self._registered_mask:
            self.selector.modify(self.server.fd, mask, SERVER)
        self._registered_mask = mask

    # ---------------------------------------------------------------- the keyboard

    def _keys_ready(self):
        lines = self.keyboard.read_lines()
        now = time.monotonic()
        self.presenter.key_pressed(now)
        for line in lines if lines is not None else [None]:
            if line is None:
                self.selector.unregister(self.keyboard.fd)
                self._apply(self.session.input_ended(now))
            else:
                self._apply(self.session.typed(line, now))
            if self.exit is not None or line is None:
                return

    # ---------------------------------------------------------------- effects

    def _apply(self, effects):
        """Carry out the session's effects, in order: the one place they become I/O."""
        wrote = False
        carry_out, show = self._carry_out, self.presenter.show
        for effect in effects:
            kind = type(effect)
            carry_out.get(kind, show)(effect)
            wrote = wrote or kind is SendBytes
        # Written once all of an input's effects are in: a long line is
        # several SendBytes, and "all written" must not come between them.
        if wrote and self.server.state is ServerConnection.OPEN:
            self._flush()

    def _write(self, effect):
        self.server.write(effect.data)

    def _open_for(self, effect):
        self._open()

    def _close_for(self, effect):
        self._close()

    def _half_close(self, effect):
        self.server.half_close()

    def _exit_with(self, effect):
        self.exit = effect


def read_whole(source):
    """Every line of a source that never blocks, then None for its end."""
    lines = []
    while True:
        more = source.read_lines()
        if more is None:
            return lines + [None]
        lines.extend(more)


# ================================================================ TLS, in words

def tls_failure(error, options):
    """The one line for a failed handshake: why, and the fingerprint that would pin the server."""
    text = str(error)
    if not isinstance(getattr(error, "__cause__", None), ssl.SSLCertVerificationError):
        return "TLS with %s:%s failed: %s" % (options.host, options.port, text)
    seen = tls.fetch_fingerprint(options.host, options.port)
    return ("cannot verify the certificate of %s:%s (%s)%s" % (
        options.host, options.port, text.split(": ", 1)[-1],
        "; its SHA-256 fingerprint is %s -- if you trust it, connect with --tls-fingerprint %s"
        % (seen, seen) if seen else ""))


def pin_problem(secure, options):
    """With --tls-fingerprint: why the server's certificate is not the pinned one, or None."""
    if not options.tls_fingerprint:
        return None
    seen = tls.fingerprint(secure.layer.peer_certificate())
    if seen.replace(":", "") == options.tls_fingerprint:
        return None
    return ("the certificate of %s:%s has the SHA-256 fingerprint %s, not the pinned one; if "
            "the server's certificate changed, connect with --tls-fingerprint %s"
            % (options.host, options.port, seen, seen))


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
        password = getpass.getpass("Password for %s: " % user).encode("utf-8")
        if not wire.is_valid_password(password):
            print(wire.PASSWORD_RULE, file=stream)
            continue
        return user, password


# ================================================================ the ways to run

def new_session(options, user, password, interactive):
    """The one login path: interactive, scripted and reconnecting alike."""
    reconnect = options.reconnect if options.reconnect is not None else interactive
    return ClientSession(user.encode("utf-8"), password, interactive, reconnect, random.Random(),
                         partner=options.to, secure=options.tls_context is not None)


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
            password = getpass.getpass("Password for %s: " % options.user).encode("utf-8")
        except (EOFError, OSError):
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
                        help="trust exactly the certificate with this SHA-256 fingerprint, "
                        "as openssl x509 -fingerprint -sha256 prints it (implies --tls)")


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
