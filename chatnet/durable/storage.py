"""The database: accounts and the undelivered-message stores, in one SQLite file.

This module owns the schema, the transactions and the durability settings.  It
must not know about connections, sessions or the protocol's rules: the core
decides *what* to store and deliver, the reactor decides *when*, and this
module only does what it is told, durably.

Durability
----------
* WAL journal and ``synchronous=FULL``: a committed store survives a crash of
  the server process (``kill -9``) and, if the disk honours fsync, a power cut.
* Writes are grouped: the storage thread (``chatnet.workers.StorageWriter``)
  writes each loop pass's stores and deletes and calls ``commit()`` once for
  them, and the loop's cork (``chatnet.durable.cork``) holds the senders' replies
  until then.  So a stored message is on disk before its sender sees any
  later reply.  A ``Storage`` is used from one thread at a time: the writer
  while the server runs; readers (``Reader``) have connections of their own.
* ``busy_timeout`` lets ``python -m chatnet.accounts`` write to the file
  while the server runs; the server keeps its transactions short.

The file is created with mode 0600: it holds password hashes.

IDs are ``str`` here (they are ASCII by the protocol); message texts are
``bytes`` on the way in and out, kept as UTF-8 ``TEXT`` so the file is
readable with the ``sqlite3`` shell.
"""

import errno
import itertools
import logging
import os
import sqlite3
import sys

log = logging.getLogger("chatnet.storage")

#: The database's schema version (``PRAGMA user_version``), and how a database
#: of each older version becomes the next: one step per version, each in one
#: transaction with its version bump, so an upgrade stopped half-way (a full
#: disk, ``kill -9``) leaves the file at a version it can go on from.  A new
#: database takes every step.  A newer version than this code knows is refused,
#: untouched (README: "Upgrading and downgrading").
SCHEMA_VERSION = 2

#: SQLite's ``application_id`` for chatnet's files ("chat"): since schema 2 the
#: file says whose it is, and another program's database is told by it.
APPLICATION_ID = 0x63686174

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id          TEXT PRIMARY KEY,
    password    TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS stored_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- delivery order
    recipient   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    sender      TEXT NOT NULL,
    text        TEXT NOT NULL,
    stored_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE INDEX IF NOT EXISTS stored_messages_by_recipient
    ON stored_messages (recipient, id);
"""

MIGRATIONS = {
    0: _SCHEMA,                                            # the tables (2026-11)
    1: "PRAGMA application_id = %d;" % APPLICATION_ID,     # the file says it is chatnet's (2026-12)
}

MEMORY = ":memory:"


class StorageError(Exception):
    """The database cannot be used; the message says why, in one line."""


class AccountExists(StorageError):
    pass


class NoSuchAccount(StorageError):
    pass


class Storage(object):
    """One SQLite connection, used from one thread."""

    def __init__(self, path, synchronous="FULL", busy_timeout_ms=5000, read_only=False):
        """``read_only``: only read (``accounts list``, ``check``, ``backup``), which works on
        a file system mounted read-only too; otherwise writing is checked at once."""
        self.path = path
        self.read_only = read_only
        self._lock_fd = None
        self._lock_name = None         # the path's name lock (_PathLock), while a server holds it
        self._guard_fds = []           # locks held on the path after the file was replaced
        try:
            if path == MEMORY:
                # A named shared-cache database, so that a ``Reader`` on
                # another thread sees the same one (it lives while we do).
                path = self.path = _memory_name()
            elif os.path.isdir(path):
                raise StorageError("cannot use database %s: it is a folder; name the database "
                                   "file, e.g. %s" % (path, os.path.join(path, "chatnet.db")))
            elif not read_only:
                if _on_read_only_file_system(path):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
                _create_private(path)
            self._db = _connect(path) if not read_only else _connect_read_only(path)
            self._db.execute("PRAGMA busy_timeout = %d" % busy_timeout_ms)
            self._refuse_another_programs_database()
            if read_only:
                self._check_schema_version()
            else:
                if not _is_memory(path):
                    self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = %s" % synchronous)
                self._db.execute("PRAGMA foreign_keys = ON")
                self._create_schema()
                # SQLite opens a file it cannot write read-only without a word: find out now.
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
                self._db.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as error:
            raise StorageError("cannot use database %s: %s" % (
                path, _permission_problem(path, read_only) or _reason(error)))
        #: True while a write transaction is open (commit() or rollback() ends it).
        self.in_transaction = False

    def _refuse_another_programs_database(self):
        """Some other program's SQLite file: adding our tables (or WAL) would alter it."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        application = self._db.execute("PRAGMA application_id").fetchone()[0]
        if application not in (0, APPLICATION_ID) or version == 0 and self._db.execute(
                "SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise sqlite3.DatabaseError("it is not a chatnet database (it holds another "
                                        "program's tables); nothing was changed")

    def _check_schema_version(self):
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                "made by a newer chatnet (schema %d; this one knows up to %d) and left "
                "untouched: run that version or newer, or restore the backup made before "
                "upgrading" % (version, SCHEMA_VERSION))
        return version

    def _create_schema(self):
        """Make a new database's tables, or upgrade an older one, step by step (``MIGRATIONS``)."""
        version = self._check_schema_version()
        if version == 0 and not _is_memory(self.path):
            _make_private(self.path)          # an empty file someone made: ours, and 0600 now
        while version < SCHEMA_VERSION:
            self._db.executescript("BEGIN IMMEDIATE;" + MIGRATIONS[version]
                                   + "PRAGMA user_version = %d; COMMIT;" % (version + 1))
            if version:
                log.info("upgraded the database %s from schema %d to %d",
                         self.path, version, version + 1)
            version += 1

    # ---------------------------------------------------------------- transactions

    def _write(self, sql, parameters=(), many=False):
        """Run a write inside the open group transaction (opening it if needed).

        ``many``: ``parameters`` is a sequence of parameter tuples (executemany).
        """
        if not self.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self.in_transaction = True
        if many:
            return self._db.executemany(sql, parameters)
        return self._db.execute(sql, parameters)

    def commit(self):
        """Make every write since the last commit durable.  Cheap when there were none.

        If COMMIT fails the transaction is still open: ``rollback`` ends it.
        """
        if self.in_transaction:
            self._db.execute("COMMIT")
            self.in_transaction = False

    def rollback(self):
        """Abandon the open transaction, if any (SQLite may have ended it already)."""
        self.in_transaction = False
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def close(self):
        """Commit, fold the WAL back into the file, and close.

        A checkpoint that fails (a full or read-only disk) loses nothing: the
        WAL holds every committed write and SQLite folds it in at the next
        open.  So it is a warning, not an error.
        """
        try:
            self.commit()
            if not _is_memory(self.path) and not self.read_only:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as error:
                    log.warning("cannot checkpoint %s at close (%s); its WAL file keeps every "
                                "committed write and is folded in at the next start", self.path, error)
        finally:
            self._db.close()
            for fd in [self._lock_fd] + self._guard_fds:
                if fd is not None:
                    os.close(fd)
            self._lock_fd, self._guard_fds = None, []
            if self._lock_name is not None:
                self._lock_name.close()
                self._lock_name = None

    def backup(self, destination):
        """Copy the database to ``destination`` (a new file, mode 0600), consistently.

        SQLite's online backup API: the copy is one committed state, taken
        while a server keeps writing.
        """
        try:
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise StorageError("%s exists already; choose a new file for the backup" % destination)
        except OSError as error:
            raise StorageError("cannot create %s: %s" % (destination, _reason(error)))
        os.close(fd)
        target = sqlite3.connect(destination)
        try:
            self._db.backup(target)
        finally:
            target.close()

    def integrity(self):
        """``(problems, accounts, stored messages)``: SQLite's integrity check, and the counts."""
        problems = [row[0] for row in self._db.execute("PRAGMA integrity_check")]
        accounts = self.account_count()
        stored = self._db.execute("SELECT count(*) FROM stored_messages").fetchone()[0]
        return ([] if problems == ["ok"] else problems), accounts, stored

    def lock_for_server(self):
        """Make sure no other chatnet server uses this path; raise StorageError if one does.

        Two servers on one file would each believe they know who is online and
        how full every store is.  Two locks, held until ``close``:

        * an ``flock`` on the database file, which SQLite's own (POSIX) locks
          do not see;
        * on Linux, a name: an abstract Unix socket named after the file's
          path.  The file can be deleted and a new one made at the same path
          (``rm chat.db*`` and ``accounts add``) before the running server
          notices; the name stays taken until that server's process ends, and
          the one that finds it taken learns its pid (``SO_PEERCRED``).
        """
        if _is_memory(self.path):
            return
        self._lock_name = _PathLock.take(self.path)
        import fcntl
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError("database %s is in use by another chatnet server" % self.path)
        self._lock_fd = fd

    def file_in_place(self):
        """False once the database file was deleted or replaced under us.

        Compares the file at ``path`` with the one the lock holds open.  SQLite
        would go on writing into the deleted file, and everything written
        would be lost at the stop.
        """
        if self._lock_fd is None:
            return True
        try:
            at_path = os.stat(self.path)
        except OSError:
            return False
        held = os.fstat(self._lock_fd)
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    def guard_path(self):
        """Hold the lock on whatever is at ``path`` now (an empty file if nothing is).

        After the file was deleted, a second server could otherwise start on
        the same path while this one still runs: the lock stays meaningful.
        Returns False when the path could not be guarded.
        """
        import fcntl
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._guard_fds.append(fd)
        return True

    # ---------------------------------------------------------------- accounts

    def add_accounts(self, accounts):
        """Register ``(id, password_record)`` pairs: all of them, or none.

        Raises ``AccountExists`` naming the first ID already registered.
        """
        self.commit()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for user_id, record in accounts:
                try:
                    self._db.execute("INSERT INTO accounts (id, password, created_at)"
                                     " VALUES (?, ?, %s)" % _NOW_MS, (user_id, record))
                except sqlite3.IntegrityError:
                    raise AccountExists("account %s already exists" % user_id)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def remove_account(self, user_id):
        """Delete an account and its stored messages."""
        self.commit()
        cursor = self._db.execute("DELETE FROM accounts WHERE id = ?", (user_id,))
        if cursor.rowcount == 0:
            raise NoSuchAccount("no account %s" % user_id)

    def set_password(self, user_id, record):
        self.commit()
        cursor = self._db.execute("UPDATE accounts SET password = ? WHERE id = ?", (record, user_id))
        if cursor.rowcount == 0:
            raise NoSuchAccount("no account %s" % user_id)

    def accounts(self):
        """``(id, created_at, stored message count)`` for every account, by ID."""
        return self._db.execute(
            "SELECT a.id, a.created_at,"
            " (SELECT count(*) FROM stored_messages s WHERE s.recipient = a.id)"
            " FROM accounts a ORDER BY a.id").fetchall()

    def account_count(self):
        return self._db.execute("SELECT count(*) FROM accounts").fetchone()[0]

    def existing_ids(self, user_ids):
        """The subset of ``user_ids`` that are registered."""
        return _existing_ids(self._db, user_ids)

    def password_record(self, user_id):
        """The stored-password record of ``user_id``, or None."""
        return _password_record(self._db, user_id)

    def look_up(self, user_id):
        """``(registered, stored message count, generation)`` for ``user_id``; see ``Reader``."""
        return _look_up(self._db, user_id)

    def open_reader(self):
        """A read-only ``Reader`` of this database, for another thread."""
        return Reader(self.path)

    # ---------------------------------------------------------------- stores

    def store_message(self, recipient, sender, text):
        """Append ``text`` (UTF-8 bytes) to ``recipient``'s store; returns its row id."""
        cursor = self._write(
            "INSERT INTO stored_messages (recipient, sender, text) VALUES (?, ?, ?)",
            (recipient, sender, text.decode("utf-8")))
        return cursor.lastrowid

    def stored_messages(self, recipient, after_row=0, limit=-1):
        """``(row id, sender, text bytes)`` of ``recipient``'s store, oldest first.

        Only rows after ``after_row``, at most ``limit`` of them (-1: all).
        """
        return _stored_messages(self._db, recipient, after_row, limit)

    def delete_stored(self, row_ids):
        """Remove delivered messages (inside the group transaction)."""
        self._write("DELETE FROM stored_messages WHERE id = ?",
                    [(row_id,) for row_id in row_ids], many=True)


class Reader(object):
    """A read-only connection of its own, for a worker thread (lookups, password records).

    In WAL mode readers never wait for the writer, and a slow disk stalls only
    the thread that reads.  It sees what is committed; the reactor asks it only
    after the pass's commit, so nothing stored or delivered before the
    question is missing from the answer.
    """

    def __init__(self, path, busy_timeout_ms=5000):
        self._db = _connect(path)
        self._db.execute("PRAGMA busy_timeout = %d" % busy_timeout_ms)
        self._db.execute("PRAGMA query_only = 1")
        # Point reads by key: a small page cache will do (the OS caches the file).
        self._db.execute("PRAGMA cache_size = -256")
        if _is_memory(path):
            self._db.execute("PRAGMA read_uncommitted = 1")   # shared cache: never wait on the writer
        # Read once now: SQLite opens the WAL and shared-memory files at the
        # first read, and they must be open before clients take every descriptor.
        self._db.execute("SELECT count(*) FROM accounts").fetchone()

    def password_record(self, user_id):
        """The stored-password record of ``user_id``, or None."""
        return _password_record(self._db, user_id)

    def look_up(self, user_id):
        """``(registered, stored message count, generation)`` for ``user_id``."""
        return _look_up(self._db, user_id)

    def data_version(self):
        """Changes whenever another connection committed (SQLite's ``PRAGMA data_version``)."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def stored_count(self):
        return self._db.execute("SELECT count(*) FROM stored_messages").fetchone()[0]

    def missing_ids(self, user_ids):
        """The IDs in ``user_ids`` (str) that are not registered."""
        user_ids = set(user_ids)
        return user_ids - _existing_ids(self._db, user_ids)

    def stored_messages(self, recipient, after_row=0, limit=-1):
        """Like ``Storage.stored_messages``: what is committed."""
        return _stored_messages(self._db, recipient, after_row, limit)

    def recipients(self):
        """The IDs (str) whose stores hold a message now (one walk of the store's index)."""
        return {row[0] for row in self._db.execute(
            "SELECT DISTINCT recipient FROM stored_messages")}

    def close(self):
        self._db.close()


def _existing_ids(db, user_ids):
    """Which of ``user_ids`` are registered (asked 500 at a time: SQLite's parameter limit)."""
    found = set()
    user_ids = list(user_ids)
    for start in range(0, len(user_ids), 500):
        chunk = user_ids[start:start + 500]
        rows = db.execute("SELECT id FROM accounts WHERE id IN (%s)" % ",".join("?" * len(chunk)),
                          chunk)
        found.update(row[0] for row in rows)
    return found


def _password_record(db, user_id):
    row = db.execute("SELECT password FROM accounts WHERE id = ?", (user_id,)).fetchone()
    return row[0] if row else None


def _stored_messages(db, recipient, after_row, limit):
    rows = db.execute(
        "SELECT id, sender, text FROM stored_messages WHERE recipient = ? AND id > ?"
        " ORDER BY id LIMIT ?", (recipient, after_row, limit)).fetchall()
    return [(row_id, sender, text.encode("utf-8")) for row_id, sender, text in rows]


def _look_up(db, user_id):
    """Whether ``user_id`` is registered, its store's size, and which account it is.

    The generation (its creation time, to the millisecond) tells an account
    from one of the same ID removed and added again, whose store started empty.
    """
    row = db.execute("SELECT created_at, (SELECT count(*) FROM stored_messages WHERE recipient = ?)"
                     " FROM accounts WHERE id = ?", (user_id, user_id)).fetchone()
    if row is None:
        return False, 0, ""
    return True, row[1], row[0]


#: SQL for the current time with milliseconds (an account's generation).
_NOW_MS = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

_memory_databases = itertools.count(1)


def _memory_name():
    return "file:chatnet-memory-%d-%d?mode=memory&cache=shared" % (os.getpid(), next(_memory_databases))


def _is_memory(path):
    return path == MEMORY or path.startswith("file:chatnet-memory-")


def _connect(path):
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           uri=path.startswith("file:"))


def _make_private(path):
    """Readable by its owner only (a new database in a file made with the default mode)."""
    try:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
    except OSError:
        pass                           # not ours to change: SQLite will say what it can do


def _create_private(path):
    """Create the database file readable by its owner only, if it is missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class _PathLock(object):
    """A name for a database path that one process at a time can hold: an abstract Unix socket.

    Linux only (elsewhere ``take`` returns None and the file's ``flock`` is
    the lock).  The socket listens, so a second server can ask who holds it.
    """

    @staticmethod
    def take(path):
        import hashlib
        import socket
        if not sys.platform.startswith("linux"):
            return None
        folder, name = os.path.split(os.path.abspath(path))
        where = os.path.join(os.path.realpath(folder), name).encode("utf-8", "surrogateescape")
        address = b"\0chatnet-db-" + hashlib.sha256(where).hexdigest().encode("ascii")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise StorageError("database %s is in use by another chatnet server%s"
                               % (path, _holder(address)))
        sock.listen(1)
        return sock


def _holder(address):
    """" (pid N)" of the process holding the name ``address``, or "" if it cannot be told."""
    import socket
    import struct
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(address)
            pid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       struct.calcsize("3i")))[0]
    except (OSError, AttributeError):
        return ""
    return " (pid %d)" % pid


def _connect_read_only(path):
    """A connection that never writes, even SQLite's own files: on a read-only file system
    a WAL database is read with its -wal (and -shm) as they are."""
    from urllib.parse import quote
    uri = "file:%s?mode=ro" % quote(os.path.abspath(path))
    if _on_read_only_file_system(path):
        uri += "&immutable=1" if not os.path.exists(path + "-wal") else ""
    return sqlite3.connect(uri, isolation_level=None, check_same_thread=False, uri=True)


def _on_read_only_file_system(path):
    try:
        return bool(os.statvfs(os.path.dirname(os.path.abspath(path))).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _permission_problem(path, read_only=False):
    """Why the file cannot be used, in words -- a read-only file system, or "permission
    denied" naming who we are and whose the file is -- or None.

    SQLite says only "unable to open database file" or "attempt to write a
    readonly database"; the usual causes are a file system the kernel
    remounted read-only after an error, and, under a service manager, a file
    or folder that belongs to another user.
    """
    if _is_memory(path):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if not read_only and _on_read_only_file_system(path):
        return ("read-only file system: %s is on a file system mounted read-only (the kernel "
                "does that after a disk error: see dmesg); reading still works (accounts list, "
                "check, backup)" % path)
    wanted = os.R_OK if read_only else os.R_OK | os.W_OK
    if os.path.exists(path) and not os.access(path, wanted):
        return "permission denied: running as %s, and %s belongs to %s (mode %03o)" % (
            _user(os.geteuid()), path, _user(os.stat(path).st_uid), os.stat(path).st_mode & 0o777)
    if not read_only and os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
        return ("permission denied: running as %s, and cannot write in %s, which belongs "
                "to %s (SQLite makes its -wal and -shm files there)"
                % (_user(os.geteuid()), folder, _user(os.stat(folder).st_uid)))
    return None


def _user(uid):
    try:
        import pwd
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except (ImportError, KeyError):
        return "uid %d" % uid


def _reason(error):
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        text = "the database is busy (another program holds a lock), try again"
    return text
