"""``python -m chatnet.client``: chat from a terminal, or from a script.

    python -m chatnet.client [--host H] [--port P] [--user ID] [--to ID]
                             [--plain] [--raw] [--reconnect] [--password-stdin]

Interactive (standard input is a terminal): asks for the ID and the password
(without echo), logs in, then opens a split screen -- messages above, a status
line, the input line below -- so incoming messages never garble what is being
typed.  ``--plain``, a dumb terminal, or a Python without ``curses`` gives line
mode instead, which redraws the prompt and the half-typed line after every
incoming line.

Scripted (standard input is not a terminal): with ``--password-stdin`` the
first line of stdin is the password; every further line is a message or a
``/command``; every line received is printed on stdout.  The client exits once
stdin has ended and the server has handled everything sent.

Exit status: 0 done; 2 bad command line; 3 cannot connect; 4 wrong ID or
password; 5 connection lost, or replaced by a login elsewhere; 130 Ctrl-C.

This module is the client's I/O shell: a ``selectors`` loop over the server
socket and the keyboard (or stdin), in the manner of the server's reactor.
What the server's lines mean is ``chatnet.client_core``'s business; how things
look is ``chatnet.screen``'s.
"""

import codecs
import collections
import errno
import getpass
import os
import ssl
import random
import selectors
import socket
import sys
import time

from . import cli, tls, wire
from .client_core import (
    ClientCore, Info, LoggedIn, LoginRefused, Message, PartnerChanged, Phase, Problem,
    QuitRequested, Replaced, SendBytes, ServerLine,
)
from .screen import HEADING, PlainScreen, format_effect

PROG = cli.program_name("chatnet.client", "chatnet-client")

CANNOT_CONNECT = 3
LOGIN_REFUSED = 4
CONNECTION_LOST = 5
TLS_FAILED = 6

# What a selector key's data names: the one connection, and the keyboard.
SERVER, KEYBOARD = "server", "keyboard"

CONNECT_TIMEOUT = 10.0
FIRST_RETRY = 1.0            # reconnect backoff: 1 s, doubling ...
LAST_RETRY = 60.0            # ... up to a minute, each with +-20 % jitter
LINGER = 5.0                 # scripted: how long to wait for the server after stdin ends
RECV_SIZE = 65536


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
    """Keys from curses; the screen's line editor turns them into lines."""

    def __init__(self, screen, fd=0):
        self.screen = screen
        self.fd = fd

    def read_lines(self):
        lines = []
        while True:
            try:
                key = self.screen.window.get_wch()
            except self.screen.curses.error:
                return lines                               # no more keys for now
            if key == "\x04" and not self.screen.editor.chars:
                return lines + [None]                      # Ctrl-D on an empty line: leave
            line = self.screen.handle_key(key)
            if line is not None:
                lines.append(line)


class PlainKeyboard(object):
    """Keys from a terminal in cbreak mode, edited with the screen's line editor."""

    ESCAPES = {"[A": "previous", "[B": "next", "[C": "right", "[D": "left",
               "[H": "home", "[F": "end", "[3~": "delete", "OH": "home", "OF": "end"}

    def __init__(self, screen, fd=0):
        self.screen = screen
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._escape = None           # the part of an escape sequence read so far

    def read_lines(self):
        data = os.read(self.fd, 4096)
        if not data:
            return [None]
        lines = []
        editor = self.screen.editor
        for char in self._decoder.decode(data):
            if self._escape is not None:
                self._escape += char
                name = self.ESCAPES.get(self._escape)
                if name is not None or len(self._escape) >= 3 or char.isalpha() or char == "~":
                    self._escape = None
                    if name is not None:
                        getattr(editor, name)()
                continue
            if char == "\x1b":
                self._escape = ""
            elif char in "\r\n":
                self.screen.forget_input_line()
                lines.append(editor.submit())
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


# ================================================================ the loop

class ChatLoop(object):
    """The client's selectors loop: one server connection, one input source, timers."""

    def __init__(self, options, screen, keyboard, scripted):
        self.options = options
        self.host, self.port = options.host, options.port
        self.user_id, self.password = options.user_id, options.password
        self.screen = screen
        self.keyboard = keyboard
        self.scripted = scripted
        self.selector = selectors.DefaultSelector()
        self.sock = None
        self.core = None
        self.connecting = False
        self.handshaking = False                   # TLS: between the TCP connect and the login
        self.outgoing = bytearray()
        self.waiting_lines = collections.deque()   # typed before the login was answered
        self.input_ended = False
        self.quitting = False
        self.replaced = False
        self.status = None                         # the exit status, once known
        self.reason = None                         # the one-line reason for a failure
        self.partner_wanted = options.to           # chosen again after a reconnect
        self.partner = PartnerChanged(None, None)  # for the status line
        self.connect_deadline = None
        self.retry_delay = FIRST_RETRY
        self.retry_at = None
        self.linger_until = None
        self.shown_away_heading = False
        self.logins = 0
        self.connection_state = "connecting"
        if keyboard is not None:
            try:
                self.selector.register(keyboard.fd, selectors.EVENT_READ, KEYBOARD)
            except (PermissionError, ValueError):
                # A regular file on stdin: epoll cannot watch it, and it never blocks.
                self._read_whole_input()

    # ---------------------------------------------------------------- running

    def adopt(self, sock, core, effects):
        """Take over a connection that is already logged in (the interactive login)."""
        self._attach(sock)
        self.core = core
        self._apply(effects)

    def run(self):
        if self.sock is None:
            self._connect()
        while self.status is None:
            for key, mask in self.selector.select(self._timeout()):
                self._dispatch(key.data, mask)
                if self.status is not None:
                    break
            self._run_timers()
            if hasattr(self.screen, "check_size"):
                self.screen.check_size(sys.__stdout__.fileno())
        self._close_socket()
        self.selector.close()
        return self.status

    def _timeout(self):
        deadlines = [when for when in (self.retry_at, self.linger_until, self.connect_deadline)
                     if when is not None]
        timeout = 0.5 if hasattr(self.screen, "check_size") else None
        if deadlines:
            until = max(0.0, min(deadlines) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout

    def _run_timers(self):
        now = time.monotonic()
        if self.connect_deadline is not None and now >= self.connect_deadline:
            self._close_socket()
            self._connection_failed("cannot connect to %s:%s: timed out" % (self.host, self.port))
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self._connect()
        if self.linger_until is not None and now >= self.linger_until:
            self._finish(0)

    def _finish(self, status, reason=None):
        if self.status is None:
            self.status, self.reason = status, reason

    # ---------------------------------------------------------------- connecting

    def _connect(self):
        self._set_connection_state("connecting")
        try:
            family, kind, protocol, _, address = socket.getaddrinfo(
                self.host, self.port, 0, socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, protocol)
        except OSError as error:
            self._connection_failed("cannot connect to %s:%s: %s" % (
                self.host, self.port, error.strerror or error))
            return
        sock.setblocking(False)
        result = sock.connect_ex(address)
        if result not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self._connection_failed("cannot connect to %s:%s: %s" % (
                self.host, self.port, os.strerror(result)))
            return
        self.connecting = True
        self.retry_at = None
        self._attach(sock)
        self.connect_deadline = time.monotonic() + CONNECT_TIMEOUT

    def _attach(self, sock):
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.sock = sock
        self.outgoing = bytearray()
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, SERVER)

    def _connected(self):
        self.connect_deadline = None
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._close_socket()
            self._connection_failed("cannot connect to %s:%s: %s" % (
                self.host, self.port, os.strerror(error)))
            return
        self.connecting = False
        if self.options.tls_context is not None:
            self.selector.unregister(self.sock)
            self.sock = tls.SecureSocket(self.sock, self.options.tls_context, self.host)
            self.selector.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                   SERVER)
            self.handshaking = True
            self._set_connection_state("TLS handshake")
            self._handshake_step()
            return
        self._start_login()

    def _handshake_step(self):
        try:
            self.sock.handshake()
        except BlockingIOError:
            self._flush()
            return
        except OSError as error:
            self._close_socket()
            self._finish(TLS_FAILED, tls_failure(error, self.options))
            return
        self.handshaking = False
        problem = pin_problem(self.sock, self.options)
        if problem is not None:
            self._close_socket()
            self._finish(TLS_FAILED, problem)
            return
        self._start_login()

    def _start_login(self):
        self.core = ClientCore(self.user_id, self.password,
                               bare_line_picks_partner=not self.scripted)
        self._set_connection_state("logging in")
        self._apply(self.core.start())

    def _connection_failed(self, reason):
        if self.options.reconnect and self.logins:
            self._schedule_retry(reason)
        else:
            self._finish(CANNOT_CONNECT, reason)

    def _schedule_retry(self, reason):
        delay = self.retry_delay * random.uniform(0.8, 1.2)
        self.retry_delay = min(self.retry_delay * 2, LAST_RETRY)
        self.retry_at = time.monotonic() + delay
        self._set_connection_state("reconnecting in %.0f s" % delay)
        self._show(Info("%s; reconnecting in %.0f s" % (reason, delay)))

    # ---------------------------------------------------------------- the socket

    def _dispatch(self, target, mask):
        """The one dispatch: a key's data says what the event is for (README, "Reading the code")."""
        if target is SERVER:
            self._socket_ready(mask)
        elif target is KEYBOARD:
            self._input_ready(mask)

    def _socket_ready(self, mask):
        if self.connecting:
            if mask & selectors.EVENT_WRITE:
                self._connected()
            return
        if self.handshaking:
            self._handshake_step()
            return
        if mask & selectors.EVENT_READ:
            self._receive()
        if self.sock is not None and mask & selectors.EVENT_WRITE:
            self._flush()

    def _receive(self):
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lost("connection lost: %s" % (error.strerror or error))
            return
        if not data:
            self._lost("the server closed the connection")
            return
        self._apply(self.core.receive(data, time.monotonic()))

    def _send(self, data):
        # Only when every effect of an input is applied may a script be
        # "done sending": a long line is several SendBytes in a row, and a
        # half-close after the first would cut the rest off.
        self.outgoing += data
        self._flush(may_be_done=False)

    def _flush(self, may_be_done=True):
        if self.sock is None or self.connecting:
            return
        secure = isinstance(self.sock, tls.SecureSocket)
        if secure:
            try:
                self.sock.flush()
            except OSError as error:
                self._lost("connection lost: %s" % (error.strerror or error))
                return
        if self.outgoing and not self.handshaking:
            try:
                sent = self.sock.send(self.outgoing)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._lost("connection lost: %s" % (error.strerror or error))
                return
            del self.outgoing[:sent]
        waiting = self.outgoing or (secure and self.sock.pending)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0)
        self.selector.modify(self.sock, events, SERVER)
        if may_be_done:
            self._maybe_done_sending()

    def _lost(self, reason):
        self._close_socket()
        if self.core is not None:
            self._apply(self.core.closed())
        if self.quitting or (self.input_ended and self.linger_until is not None
                             and not self.outgoing):
            self._finish(0)
        elif self.replaced:
            self._finish(CONNECTION_LOST, "logged in from another place")
        elif self.core is not None and self.core.phase is Phase.LOGGING_IN and not self.logins:
            self._finish(CONNECTION_LOST, reason + " before the login was answered")
        elif self.options.reconnect and self.logins:
            self._schedule_retry(reason)
        else:
            self._finish(CONNECTION_LOST, reason)

    def _close_socket(self):
        if self.sock is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
            self.sock = None
            self.connecting = self.handshaking = False
            self.connect_deadline = None
            self._set_connection_state("disconnected")

    # ---------------------------------------------------------------- the keyboard

    def _input_ready(self, mask):
        lines = self.keyboard.read_lines()
        if lines is None:
            lines = [None]
        for line in lines:
            if line is None:
                self._input_end()
                return
            self._typed(line)

    def _read_whole_input(self):
        while True:
            lines = self.keyboard.read_lines()
            if lines is None:
                break
            self.waiting_lines.extend(lines)
        self.keyboard = None
        self.input_ended = True

    def _input_end(self):
        try:
            self.selector.unregister(self.keyboard.fd)
        except (KeyError, ValueError):
            pass
        self.input_ended = True
        if not self.scripted:
            self._quit()
        else:
            self._maybe_done_sending()

    def _typed(self, line):
        if self.core is None or self.core.phase is not Phase.CHATTING:
            if self.scripted:
                self.waiting_lines.append(line)
            else:
                self._show(Problem("not connected; your line was not sent"))
            return
        self._apply(self.core.typed(line, time.monotonic()))

    def _maybe_done_sending(self):
        """Scripted: once stdin has ended and all is sent, half-close and wait for the server."""
        if (not self.scripted or not self.input_ended or self.waiting_lines or self.outgoing
                or self.sock is None or self.connecting or self.handshaking
                or getattr(self.sock, "pending", False) or self.linger_until is not None
                or self.core is None or self.core.phase is not Phase.CHATTING):
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)     # the server answers what it has, then closes
        except OSError:
            pass
        self.linger_until = time.monotonic() + LINGER

    def _quit(self):
        self.quitting = True
        if self.sock is not None and self.outgoing and not self.connecting:
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(2.0)
                self.sock.sendall(self.outgoing)
            except OSError:
                pass
        self._finish(0)

    # ---------------------------------------------------------------- effects

    def _apply(self, effects):
        logged_in = False
        for effect in effects:
            kind = type(effect)
            if kind is SendBytes:
                self._send(effect.data)
            elif kind is LoggedIn:
                self._note_login(effect)
                logged_in = True
            elif kind is LoginRefused:
                self._finish(LOGIN_REFUSED, "wrong ID or password")
            elif kind is PartnerChanged:
                if effect.partner is not None:
                    self.partner_wanted = effect.partner
                self.partner = effect
                self._update_status()
            elif kind is Replaced:
                self.replaced = True
                self._show(effect)
            elif kind is QuitRequested:
                self._quit()
            elif kind is ServerLine:
                if self.options.raw:
                    self._show_raw(effect.line)
            elif not self.options.raw:
                self._show(effect)
        if logged_in:
            # After the stored messages that came with the "1", not before them.
            self._after_login()

    def _note_login(self, effect):
        self.logins += 1
        self.retry_delay = FIRST_RETRY
        self.shown_away_heading = False
        self._set_connection_state("connected (TLS)" if self.options.tls_context else "connected")
        if not self.options.raw:
            self._show(effect)

    def _after_login(self):
        if self.partner_wanted:
            self._apply(self.core.choose(self.partner_wanted))
        elif not self.scripted:
            self._show(Info("who do you want to talk to? type an ID (/help for commands)"))
        while self.waiting_lines and self.core.phase is Phase.CHATTING:
            self._typed(self.waiting_lines.popleft())
        self._maybe_done_sending()

    def _show(self, effect):
        if self.scripted and type(effect) is Message and effect.mine:
            return                                # scripts see what they receive, not what they sent
        if type(effect) is Message and effect.stored and not self.shown_away_heading:
            self.shown_away_heading = True
            self.screen.show(HEADING, "--- while you were away ---")
        shown = format_effect(effect)
        if shown is None:
            return
        if self.scripted and type(effect) is Problem:
            print("%s: %s" % (PROG, effect.text), file=sys.stderr)
            return
        self.screen.show(*shown)

    def _show_raw(self, line):
        if self.scripted:
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.buffer.flush()
        else:
            from .screen import MESSAGE, clean
            self.screen.show(MESSAGE, clean(line.decode("utf-8", "replace")))

    def _set_connection_state(self, state):
        self.connection_state = state
        self._update_status()

    def _update_status(self):
        self.screen.set_status("%s:%s" % (self.host, self.port), self.user_id.decode(),
                               self.partner.partner, self.partner.state, self.connection_state)


# ================================================================ logging in by hand

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


def log_in_interactively(options):
    """Ask, connect, send the frame; ask again after ``0`` (seed step 5).

    Returns ``(socket, core, effects)`` with the core logged in; the effects
    (stored messages that came right behind the ``1``) are for the screen.
    """
    # Connect first, as ssh does: a server that is down is reported before
    # anyone types a password.  If the server's login timeout runs out while
    # the person types, the verdict below finds the connection closed and a
    # new one is made.
    sock = connect_blocking(options)
    user = options.user
    failed = False
    while True:
        user, password = ask_credentials(user, again=failed)
        core = ClientCore(user.encode(), password, bare_line_picks_partner=True)
        result = wait_for_verdict(sock, core)
        if result is None:                     # the server closed: try again on a new connection
            sock.close()
            sock = connect_blocking(options)
            result = wait_for_verdict(sock, core)
            if result is None:
                raise ClientExit("the server closed the connection during the login", CONNECTION_LOST)
        if result is not False:
            options.user_id, options.password = user.encode(), password
            return sock, core, result
        print("wrong ID or password", file=sys.stderr)
        failed = True


def connect_blocking(options):
    host, port = options.host, options.port
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as error:
        raise ClientExit("cannot connect to %s:%s: %s" % (host, port, error.strerror or error),
                         CANNOT_CONNECT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if options.tls_context is None:
        return sock
    secure = tls.SecureSocket(sock, options.tls_context, host)
    try:
        secure.handshake()
    except socket.timeout:
        sock.close()
        raise ClientExit("the server did not finish the TLS handshake", CANNOT_CONNECT)
    except OSError as error:
        sock.close()
        raise ClientExit(tls_failure(error, options), TLS_FAILED)
    problem = pin_problem(secure, options)
    if problem is not None:
        sock.close()
        raise ClientExit(problem, TLS_FAILED)
    return secure


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


def wait_for_verdict(sock, core):
    """Send the frame, read until ``1`` or ``0``: the effects so far, False, or None if closed."""
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.sendall(core.frame)
        effects = []
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                return None
            effects.extend(core.receive(data, time.monotonic()))
            if any(type(effect) is LoginRefused for effect in effects):
                return False
            if any(type(effect) is LoggedIn for effect in effects):
                # Stored messages follow the 1 at once; give them a moment to come along.
                sock.settimeout(0.2)
                try:
                    more = sock.recv(RECV_SIZE)
                    if more:
                        effects.extend(core.receive(more, time.monotonic()))
                except socket.timeout:
                    pass
                return effects
    except socket.timeout:
        raise ClientExit("the server did not answer the login", CONNECTION_LOST)
    except OSError as error:
        return None if error.errno in (errno.ECONNRESET, errno.EPIPE) else _raise_lost(error)


def _raise_lost(error):
    raise ClientExit("connection lost: %s" % (error.strerror or error), CONNECTION_LOST)


# ================================================================ the two ways to run

def run_interactive(options):
    sock, core, effects = log_in_interactively(options)
    use_curses = not options.plain and os.environ.get("TERM", "dumb") not in ("", "dumb")
    if use_curses:
        try:
            import curses
        except ImportError:
            use_curses = False
    if use_curses:
        return run_curses(options, sock, core, effects, curses)
    return run_plain(options, sock, core, effects)


def run_curses(options, sock, core, effects, curses):
    import locale
    from .screen import CursesScreen
    locale.setlocale(locale.LC_ALL, "")
    os.environ.setdefault("ESCDELAY", "25")

    def main(window):
        screen = CursesScreen(window, curses)
        loop = ChatLoop(options, screen, CursesKeyboard(screen), scripted=False)
        loop.adopt(sock, core, effects)
        return loop.run(), loop.reason

    status, reason = curses.wrapper(main)
    return _report(status, reason)


def run_plain(options, sock, core, effects):
    import termios
    import tty
    ansi = os.environ.get("TERM", "dumb") not in ("", "dumb")
    screen = PlainScreen(sys.stdout, interactive=True, ansi=ansi)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        loop = ChatLoop(options, screen, PlainKeyboard(screen, fd), scripted=False)
        loop.adopt(sock, core, effects)
        status = loop.run()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        screen.close()
    return _report(status, loop.reason)


def run_scripted(options):
    if options.user is None:
        raise ClientExit("give --user ID when standard input is not a terminal", cli.USAGE_ERROR)
    user_id = options.user.encode("utf-8", "replace")
    if not wire.is_valid_id(user_id):
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
    options.user_id, options.password = user_id, password
    screen = PlainScreen(sys.stdout, interactive=False)
    loop = ChatLoop(options, screen, PipeInput(stdin_fd), scripted=True)
    return _report(loop.run(), loop.reason)


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


def _report(status, reason):
    if status and reason:
        print("%s: %s" % (PROG, reason), file=sys.stderr)
    return status


# ================================================================ command line

def parse_args(argv):
    parser = cli.ArgumentParser(prog=PROG, description="Chat on a chatnet server.")
    parser.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("--port", type=cli.port_number, default=None,
                        help="server port (default 7070; 7071 with --tls)")
    parser.add_argument("--user", metavar="ID", help="your ID (asked for if not given)")
    parser.add_argument("--to", metavar="ID", help="start chatting with ID right after logging in")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    parser.add_argument("--plain", action="store_true", help="line mode instead of the split screen")
    parser.add_argument("--raw", action="store_true", help="show the server's lines unchanged")
    parser.add_argument("--reconnect", action="store_true",
                        help="when the connection drops, reconnect (with backoff) and log in again")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, verifying the server's certificate and name")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="trust the CA (or self-signed certificate) in FILE (implies --tls)")
    parser.add_argument("--tls-fingerprint", metavar="HEX",
                        help="trust exactly the certificate with this SHA-256 fingerprint, "
                        "as openssl x509 -fingerprint -sha256 prints it (implies --tls)")
    options = parser.parse_args(argv)
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
    if options.to is not None and not wire.is_valid_id(options.to.encode("utf-8", "replace")):
        parser.error("argument --to: %r is not a valid ID" % options.to)
    return options


def main(argv=None):
    options = parse_args(argv)
    options.user_id = options.password = None
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
