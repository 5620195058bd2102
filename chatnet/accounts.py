"""``python -m chatnet.accounts``: register and manage accounts (seeds/PROTOCOL.md section 7).

    python -m chatnet.accounts --db PATH add ID [--password-stdin]
    python -m chatnet.accounts --db PATH passwd ID [--password-stdin]
    python -m chatnet.accounts --db PATH remove ID
    python -m chatnet.accounts --db PATH list [--long]
    python -m chatnet.accounts --db PATH import FILE|-
    python -m chatnet.accounts --db PATH backup DEST
    python -m chatnet.accounts --db PATH check

It works on the same file as a running server, which sees every change at the
next login or ``chatwith/``.  This module is glue: checking what the user typed
and calling ``chatnet.durable.storage`` and ``chatnet.durable.passwords``.  Errors end with one
line on stderr and status 1 (2 for a bad command line); ``import`` adds every
account of its file or none.
"""

import os
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor

from . import cli, wire
from .durable import passwords
from .durable.storage import Storage, StorageError

PROG = cli.program_name("chatnet.accounts", "chatnet-accounts")

#: Seconds to wait for a write lock held by another program (a running
#: server holds one only for a moment; a stuck program longer).
BUSY_TIMEOUT = 10.0

ID_RULE, PASSWORD_RULE = wire.ID_RULE, wire.PASSWORD_RULE

#: The commands that only read: they open the file read-only, so they work on a
#: file system the kernel remounted read-only -- when a backup matters most.
READING = ("list", "backup", "check")


def parse_args(argv):
    parser = cli.ArgumentParser(prog=PROG, description="Manage the accounts of a chatnet database.")
    parser.add_argument("--db", metavar="PATH", default="chatnet.db",
                        help="the server's database (default chatnet.db)")
    parser.add_argument("--busy-timeout", type=cli.non_negative_float, default=BUSY_TIMEOUT,
                        metavar="SECONDS", help="how long to wait for a lock another program holds "
                        "on the database (default %(default)s)")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    verbs.required = True
    for verb, text in (("add", "register an account"), ("passwd", "change an account's password")):
        sub = verbs.add_parser(verb, help=text, description=text)
        sub.add_argument("id", metavar="ID", help="the account's ID (1 to 7 of A-Z a-z 0-9 . _ -)")
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of standard input")
    sub = verbs.add_parser("remove", help="delete an account and its stored messages")
    sub.add_argument("id", metavar="ID", help="the account's ID")
    sub = verbs.add_parser("list", help="print every account ID")
    sub.add_argument("--long", action="store_true",
                     help="also print when it was created and how many messages wait for it")
    sub = verbs.add_parser("import", help="register many accounts from ID:PASSWORD lines",
                           description="Register every account listed as ID:PASSWORD lines "
                                       "(split at the first ':'; blank lines skipped). "
                                       "Nothing is added when any line is bad.")
    sub.add_argument("file", metavar="FILE", help="the file, or - for standard input")
    sub = verbs.add_parser("backup", help="copy the database consistently, even while a server runs")
    sub.add_argument("destination", metavar="DEST", help="a new file for the copy")
    verbs.add_parser("check", help="check the database's integrity and print a one-line verdict")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    command = {"add": add, "passwd": change_password, "remove": remove, "list": list_accounts,
               "import": import_accounts, "backup": backup, "check": check}[args.verb]
    if args.verb not in ("add", "import") and not os.path.exists(args.db):
        raise cli.CommandError("there is no database at %s (check --db; 'add' or 'import' "
                               "make a new one)" % args.db)
    if args.verb not in READING:
        refuse_root_on_anothers_database(args.db)
    try:
        storage = Storage(args.db, busy_timeout_ms=int(args.busy_timeout * 1000),
                          read_only=args.verb in READING)
    except StorageError as error:
        raise cli.CommandError(str(error))
    try:
        return command(storage, args) or 0
    except StorageError as error:
        raise cli.CommandError(str(error))
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            raise cli.CommandError("the database is busy (another program holds a lock), try again")
        raise cli.CommandError("cannot use database %s: %s" % (args.db, error))
    finally:
        try:
            storage.close()
        except sqlite3.Error:
            pass            # a lock still held elsewhere: nothing was left to commit


def refuse_root_on_anothers_database(path):
    """Root writing to a service's database would leave files of root's behind.

    SQLite makes the ``-wal`` and ``-shm`` files as whoever writes first; owned
    by root, they lock the service's own user out at its next start.  So
    root is told to run the command as the file's owner instead.
    """
    if os.geteuid() != 0 or not os.path.exists(path):
        return
    owner = os.stat(path).st_uid
    if owner == 0:
        return
    try:
        import pwd
        name = pwd.getpwuid(owner).pw_name
    except (ImportError, KeyError):
        name = "#%d" % owner
    raise cli.CommandError("%s belongs to %s: run this as that user, so the database's files "
                           "stay its (runuser -u %s -- python3 -m chatnet.accounts ...)"
                           % (path, name, name))


# ---------------------------------------------------------------- verbs

def add(storage, args):
    user_id = checked_id(args.id)
    if storage.existing_ids([user_id]):
        raise cli.CommandError("account %s already exists" % user_id)
    password = read_password(args.password_stdin, "Password for %s: " % user_id)
    storage.add_accounts([(user_id, passwords.hash_password(password))])
    print("added %s" % user_id)


def change_password(storage, args):
    user_id = checked_id(args.id)
    if not storage.existing_ids([user_id]):
        raise cli.CommandError("no account %s" % user_id)
    password = read_password(args.password_stdin, "New password for %s: " % user_id)
    storage.set_password(user_id, passwords.hash_password(password))
    print("changed the password of %s" % user_id)


def remove(storage, args):
    user_id = checked_id(args.id)
    storage.remove_account(user_id)
    print("removed %s" % user_id)


def list_accounts(storage, args):
    for user_id, created_at, stored in storage.accounts():
        if args.long:
            print("%-7s  created %s  %d stored message%s" % (
                user_id, created_at, stored, "" if stored == 1 else "s"))
        else:
            print(user_id)


def import_accounts(storage, args):
    name = "standard input" if args.file == "-" else args.file
    entries = parse_import(read_import_file(args.file), name)
    existing = storage.existing_ids(user_id for user_id, _, _ in entries)
    for user_id, _, line_number in entries:
        if user_id in existing:
            raise cli.CommandError("%s, line %d: account %s already exists (nothing was imported)"
                                   % (name, line_number, user_id))
    # PBKDF2 releases the GIL: hash on every CPU we may use.
    with ThreadPoolExecutor(max_workers=passwords.usable_cpus()) as pool:
        records = list(pool.map(passwords.hash_password, [password for _, password, _ in entries]))
    storage.add_accounts(zip([user_id for user_id, _, _ in entries], records))
    print("imported %d account%s" % (len(entries), "" if len(entries) == 1 else "s"))


def backup(storage, args):
    storage.backup(args.destination)
    print("backed up %s to %s" % (args.db, args.destination))


def check(storage, args):
    problems, accounts, stored = storage.integrity()
    if problems:
        raise cli.CommandError("%s is damaged: %s" % (args.db, problems[0]))
    print("%s: ok (%d account%s, %d stored message%s)" % (
        args.db, accounts, "" if accounts == 1 else "s", stored, "" if stored == 1 else "s"))


# ---------------------------------------------------------------- input

def checked_id(text):
    user_id = text.encode("utf-8", "surrogateescape")
    if not wire.is_valid_id(user_id):
        raise cli.CommandError("invalid ID %r: %s" % (text, ID_RULE))
    return text


def checked_password(password):
    if not wire.is_valid_password(password):
        raise cli.CommandError("invalid password: " + PASSWORD_RULE)
    return password


def read_password(from_stdin, prompt):
    """The new password as bytes: the first line of stdin, or typed twice on the terminal."""
    if from_stdin:
        line = sys.stdin.buffer.readline()
        if not line:
            raise cli.CommandError("no password on standard input")
        return checked_password(line.rstrip(b"\n").rstrip(b"\r"))
    if not sys.stdin.isatty():
        raise cli.CommandError("standard input is not a terminal: use --password-stdin")
    try:
        first = cli.ask_password(prompt)
        second = cli.ask_password("Again: ")
    except cli.NoTerminal:
        raise cli.CommandError("no terminal to ask for the password: use --password-stdin")
    if first != second:
        raise cli.CommandError("the two passwords differ")
    return checked_password(first.encode("utf-8"))


def read_import_file(path):
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise cli.CommandError("cannot read %s: %s" % (path, error.strerror or error))


def parse_import(data, name):
    """``[(id, password bytes, line number)]`` from ``ID:PASSWORD`` lines, or CommandError."""
    entries, first_seen = [], {}
    for line_number, line in enumerate(data.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        raw_id, colon, password = line.partition(b":")
        where = "%s, line %d" % (name, line_number)
        if not colon:
            raise cli.CommandError("%s: expected ID:PASSWORD (nothing was imported)" % where)
        if not wire.is_valid_id(raw_id):
            raise cli.CommandError("%s: invalid ID %r: %s (nothing was imported)"
                                   % (where, raw_id.decode("utf-8", "replace"), ID_RULE))
        if not wire.is_valid_password(password):
            raise cli.CommandError("%s: invalid password for %s: %s (nothing was imported)"
                                   % (where, raw_id.decode("ascii"), PASSWORD_RULE))
        user_id = raw_id.decode("ascii")
        if user_id in first_seen:
            raise cli.CommandError("%s: %s is listed twice (first on line %d; nothing was imported)"
                                   % (where, user_id, first_seen[user_id]))
        first_seen[user_id] = line_number
        entries.append((user_id, password, line_number))
    return entries


def entry_point():
    """The ``chatnet-accounts`` console script."""
    sys.exit(cli.run(main, PROG))


if __name__ == "__main__":
    entry_point()
