"""What every chatnet command line shares: one-line errors and the program name.

It holds no command's own logic; each command's module does.

A bad flag, a bad argument or an unusable file ends a chatnet command with one
line on stderr and a non-zero status -- never a usage dump, never a
traceback.  Status 2 means "you called it wrong", 1 "it did not work", 130
"interrupted".
"""

import argparse
import os
import sys

USAGE_ERROR = 2
FAILURE = 1
INTERRUPTED = 130


def program_name(module, script):
    """``python -m chatnet.x`` when run with -m, else the console script's name."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0 in ("", "-c") or argv0.endswith(".py"):
        return "python -m " + module
    return script


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error reported in one line, and ``--version`` on every command."""

    def __init__(self, *args, **kwargs):
        argparse.ArgumentParser.__init__(self, *args, **kwargs)
        from . import __version__
        self.add_argument("--version", action="version", version="%(prog)s " + __version__,
                          help="print the version and exit")

    def error(self, message):
        self.exit(USAGE_ERROR, "%s: error: %s (see --help)\n" % (self.prog, message))


class CommandError(Exception):
    """Raised by a command to stop with a one-line message and ``status``."""

    def __init__(self, message, status=FAILURE):
        Exception.__init__(self, message)
        self.status = status


def run(main, prog, argv=None):
    """Call ``main(argv)``; turn CommandError and Ctrl-C into one line and a status."""
    try:
        return main(argv)
    except CommandError as error:
        print("%s: error: %s" % (prog, error), file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print("%s: interrupted" % prog, file=sys.stderr)
        return INTERRUPTED


class NoTerminal(Exception):
    """There is no terminal to ask a password at."""


def ask_password(prompt):
    """``getpass`` at the controlling terminal; ``NoTerminal`` without one.

    Without a terminal, ``getpass`` would warn ("GetPassWarning: Can not
    control echo") and read the password from standard input, echoed: the
    caller says "use --password-stdin" in one line instead.
    """
    import getpass
    import os
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise NoTerminal()
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise NoTerminal()


def positive_int(text):
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, not %s" % text)
    return value


def positive_float(text):
    value = _number(float, text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds above 0, not %s" % text)
    return value


def non_negative_float(text):
    value = _number(float, text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more, not %s" % text)
    return value


def port_number(text):
    value = _number(int, text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is 0 to 65535, not %s" % text)
    return value


def _number(kind, text):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text)
