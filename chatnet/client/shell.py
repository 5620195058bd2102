"""The client's I/O shell: a ``selectors`` loop over the server connection and the keyboard.

``ChatLoop`` waits, reads (the server or the keyboard), hands what happened
to the session (``chatnet.client.lifecycle``, pure, time passed in) and
carries out the effects it returns -- ``_apply`` is the one place effects
become I/O, in the manner of the server's loop.  The connection
(``chatnet.client.connection``) owns the one socket, its send queue and its
TLS layer; the keyboards and ``PipeInput`` are the input sources.

When to connect, retry, half-close or exit is ``chatnet.client.lifecycle``'s
decision; what the server's lines mean is ``chatnet.client.protocol``'s; how
things look is ``chatnet.client.screen``'s.  This module must not decide any
of those.  The command line and the ways to run are ``chatnet.client.main``.
"""

import codecs
import os
import selectors
import ssl
import time

from .. import cli
from ..net import tls
from .connection import LayeredServerConnection, ServerConnection, tls_layer
from .protocol import SendBytes
from .screen import EscapeSequence
from .lifecycle import Connect, Disconnect, Exit, HalfClose

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
        if options.tls_context is None:
            self.server = ServerConnection(options.host, options.port, options.keepalive)
        else:
            self.server = LayeredServerConnection(
                options.host, options.port, options.keepalive,
                tls_layer(options.tls_context, options.host))
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
                acked = self.server.acked() if self.server.sock is not None else None
                self._apply(self.session.timer(now, acked))

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
        if ready and self.options.tls_context is not None:
            problem = pin_problem(self.server.peer_certificate(), self.options)
            if problem is not None:
                self._close()
                self._apply(self.session.tls_refused(problem))
                return
        if ready:
            self._apply(self.session.connected(time.monotonic()))
            if self.server.state is ServerConnection.OPEN:
                self._receive()          # what came with the handshake's last flight (TLS)
        self._update_interest()

    def _receive(self):
        try:
            data = self.server.recv()
        except OSError as error:
            self._lost("connection lost: %s" % (error.strerror or error))
            return
        if data is None:
            return
        if data:
            self._apply(self.session.received(data, time.monotonic()))
        if not data or self.server.at_end and self.server.sock is not None:
            self._lost("the server closed the connection")

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
    """The one line for a failed handshake: why, and the key fingerprint that would pin the server."""
    text = str(error)
    if not isinstance(getattr(error, "__cause__", None), ssl.SSLCertVerificationError):
        hint = (" (is that port plaintext? chatnet's TLS port is 7071 by default; without --tls "
                "the client speaks in clear)" if "WRONG_VERSION_NUMBER" in text else "")
        return "TLS with %s:%s failed: %s%s" % (options.host, options.port, text, hint)
    seen = tls.fetch_fingerprint(options.host, options.port)
    return ("cannot verify the certificate of %s:%s (%s)%s" % (
        options.host, options.port, text.split(": ", 1)[-1],
        "; its public key's SHA-256 fingerprint is %s -- if you trust it (ask its operator), "
        "connect with --tls-fingerprint %s" % (seen, seen) if seen else ""))


def pin_problem(certificate, options):
    """With --tls-fingerprint: why the server's certificate (DER) does not match the pin, or None.

    A pin is the public key's SHA-256 (it survives renewals that keep the
    key) or the certificate's; either matches.
    """
    if not options.tls_fingerprint or tls.pin_matches(certificate, options.tls_fingerprint):
        return None
    seen = tls.key_fingerprint(certificate)
    return ("the server's key changed: %s:%s now shows a key whose SHA-256 fingerprint is %s, "
            "not the pinned one. Either its operator made a new key, or someone is "
            "intercepting the connection -- ask the operator before you trust it; if the new "
            "key is right, connect with --tls-fingerprint %s"
            % (options.host, options.port, seen, seen))
