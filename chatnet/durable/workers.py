"""Work that must not run on the loop's thread: password checks, lookups, database writes.

It owns the worker threads, their read-only database connections, and the
queues between them and the loop.  It must not make a protocol decision or
touch a client socket: it computes answers and hands them back to the loop as
inputs for the core (``LoginChecked``, ``AccountLookedUp``), through a queue
and the loop's wake-up socket (``wake``).

Password checks: fair, bounded, cancelled when nobody waits
-----------------------------------------------------------
A password check costs a KDF run (``chatnet.durable.passwords``), on purpose.  So
the checks are scheduled here, on the loop's side, and only as many are
handed to the threads as there are threads:

* **fair**: waiting checks are kept per client address, and the addresses
  take turns (round robin), so one address -- or a thousand connections from
  it -- cannot take the pool from everybody else: its next check waits until
  every other address with one waiting has had its turn;
* **cancelled**: when a connection closes, its waiting check is dropped at
  once and costs nothing; one already running finishes, and its answer is
  ignored by the core;
* **bounded**: each connection has at most one check at a time (the core
  waits for the answer), so waiting checks are bounded by the connection
  limits, in total and per address; the threads are handed two jobs each at
  most, so the order is decided here, not in their queue.

Lookups (``chatwith/``) run on one thread of their own, in order, so a slow
disk delays the person who asked, never the loop.

Database writes (``StorageWriter``) run on one more thread, which owns the
write transaction: each loop pass hands it one ``Batch`` (that pass's stored
messages and the delivered rows to delete) and it commits it as one
transaction -- group commit -- while the loop goes on.  The loop's
``DurabilityCork`` (``chatnet.durable.cork``) holds back the output that must wait
for that commit, and only that.
"""

import collections
import logging
import os
import queue
import sqlite3
import threading
from typing import NamedTuple

from . import passwords
from ..core.events import AccountLookedUp, AccountsRemoved, LoginChecked

log = logging.getLogger("chatnet.server")


class _Job(object):
    """One password check: who asked, from where, and for what."""

    __slots__ = ("conn", "host", "user_id", "password", "cancelled")

    def __init__(self, conn, host, user_id, password):
        self.conn = conn
        self.host = host
        self.user_id = user_id
        self.password = password
        self.cancelled = False


class FairQueue(object):
    """Waiting password checks, one FIFO per address, addresses served in turn.

    Pure bookkeeping for the loop's thread: ``push``, ``cancel`` and ``pop``
    are O(1) (a cancelled job is skipped when its turn comes).
    """

    def __init__(self):
        self._by_host = {}                       # host -> deque of jobs
        self._turns = collections.deque()        # hosts with waiting jobs, in turn order
        self._by_conn = {}                       # conn -> its waiting job

    def __len__(self):
        return len(self._by_conn)

    def push(self, job):
        self._by_conn[job.conn] = job
        jobs = self._by_host.get(job.host)
        if jobs is None:
            jobs = self._by_host[job.host] = collections.deque()
            self._turns.append(job.host)
        jobs.append(job)

    def cancel(self, conn):
        """Drop ``conn``'s waiting job, if it has one; True if it had."""
        job = self._by_conn.pop(conn, None)
        if job is None:
            return False
        job.cancelled = True
        return True

    def pop(self):
        """The next job to run: the next address's oldest live job, or None."""
        turns = self._turns
        while turns:
            host = turns.popleft()
            jobs = self._by_host[host]
            while jobs and jobs[0].cancelled:
                jobs.popleft()
            if not jobs:
                del self._by_host[host]
                continue
            job = jobs.popleft()
            if jobs:
                turns.append(host)               # its next job waits for the next round
            else:
                del self._by_host[host]
            del self._by_conn[job.conn]
            return job
        return None


class PasswordChecks(object):
    """Runs password checks on worker threads, fairly; see the module docstring."""

    def __init__(self, open_reader, wake, workers):
        self._wake = wake
        self._waiting = FairQueue()
        self._running = 0
        self._workers = workers
        self._done = collections.deque()         # (job, ok, registered) from the threads
        self._tasks = queue.SimpleQueue()
        # Each thread's database reader is opened now, before clients can
        # take every descriptor the process has.
        self._threads = [threading.Thread(target=self._work, args=(open_reader(),),
                                          name="chatnet-kdf-%d" % number, daemon=True)
                         for number in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, conn, host, user_id, password):
        self._waiting.push(_Job(conn, host, user_id, password))
        self._start_some()

    def cancel(self, conn):
        """The connection closed: its waiting check is dropped unrun."""
        self._waiting.cancel(conn)

    def waiting(self):
        """How many checks wait for a thread (for tests and logs)."""
        return len(self._waiting)

    def results(self):
        """The finished checks as ``LoginChecked`` inputs (call from the loop's thread)."""
        done = self._done
        while done:
            job, ok, registered = done.popleft()
            self._running -= 1
            self._start_some()
            yield LoginChecked(job.conn, job.user_id, ok, registered)

    def shutdown(self):
        for _ in self._threads:
            self._tasks.put(None)

    def _start_some(self):
        # One job waiting per thread besides the one it runs: a thread that
        # finishes starts the next at once, without waiting for the loop.
        while self._running < 2 * self._workers:
            job = self._waiting.pop()
            if job is None:
                return
            self._running += 1
            self._tasks.put(job)

    def _work(self, reader):
        _yield_to_the_loop()
        while True:
            job = self._tasks.get()
            if job is None:
                break
            try:
                record = reader.password_record(job.user_id.decode("ascii"))
                # A missing account costs a KDF run too, so timing does not tell.
                ok = passwords.verify_password(record or passwords.DUMMY_RECORD, job.password)
                registered = record is not None
            except Exception as error:          # a broken record or database: a failed login
                log.warning("password check for %r failed: %s", job.user_id, error)
                ok = registered = False
            self._done.append((job, ok and registered, registered))
            self._wake()
        reader.close()


class StoredCount(NamedTuple):
    """Rows in the stores, counted on the lookup thread (for the metrics)."""
    rows: int


class _LookUp(NamedTuple):            # is this account registered, how full is its store?
    conn: int
    user_id: bytes
    asker: bytes                      # ... and is the asker's account still there?


class _CheckAccounts(NamedTuple):     # were any of these accounts removed?
    user_ids: tuple


class _CountStored(NamedTuple):       # how many rows are stored?
    pass


class Lookups(object):
    """Answers ``LookUpAccount`` on a thread of its own, in the order asked.

    Three kinds of task share the thread (and so its order): ``_LookUp``,
    ``_CheckAccounts`` and ``_CountStored``.
    """

    def __init__(self, open_reader, wake):
        self._wake = wake
        self._done = collections.deque()
        self._tasks = queue.SimpleQueue()
        self._seen_version = None      # PRAGMA data_version at the last accounts check
        self._thread = threading.Thread(target=self._work, args=(open_reader(),),
                                        name="chatnet-lookups", daemon=True)
        self._thread.start()

    def submit(self, conn, user_id, asker=b""):
        self._tasks.put(_LookUp(conn, user_id, asker))

    def check_accounts(self, user_ids):
        """Answer ``AccountsRemoved`` if any of ``user_ids`` (bytes) was removed since last time.

        Cheap when nothing changed: SQLite's ``data_version`` is read first,
        and the accounts are looked at only when another connection committed.
        """
        self._tasks.put(_CheckAccounts(tuple(user_ids)))

    def results(self):
        done = self._done
        while done:
            yield done.popleft()

    def shutdown(self):
        self._tasks.put(None)

    def _work(self, reader):
        while True:
            task = self._tasks.get()
            if task is None:
                break
            if type(task) is _CheckAccounts:
                self._check_accounts(reader, task.user_ids)
            elif type(task) is _CountStored:
                self._count_stored(reader)
            else:
                self._look_up(reader, task)
        reader.close()

    def _look_up(self, reader, task):
        try:
            if task.asker and reader.missing_ids([task.asker.decode("ascii")]):
                # Removed since it logged in: the removal comes first, and no answer
                # follows it (the core closes the asker's session).
                self._done.append(AccountsRemoved((task.asker,)))
            registered, stored, generation = reader.look_up(task.user_id.decode("ascii"))
            failed = False
        except Exception as error:
            log.warning("cannot look up an account in the database: %s", error)
            registered, stored, generation, failed = False, 0, "", True
        self._done.append(AccountLookedUp(task.conn, task.user_id, registered, stored, generation,
                                          failed))
        self._wake()

    def count_stored(self):
        """Answer ``StoredCount`` with the rows in the stores."""
        self._tasks.put(_CountStored())

    def _count_stored(self, reader):
        try:
            rows = reader.stored_count()
        except Exception as error:
            log.warning("cannot count the stored messages: %s", error)
            return
        self._done.append(StoredCount(rows))
        self._wake()

    def _check_accounts(self, reader, user_ids):
        try:
            version = reader.data_version()
            if version == self._seen_version:
                return
            self._seen_version = version
            gone = reader.missing_ids(user_id.decode("ascii") for user_id in user_ids)
        except Exception as error:
            log.warning("cannot check the accounts in the database: %s", error)
            return
        if gone:
            self._done.append(AccountsRemoved(tuple(sorted(user.encode("ascii") for user in gone))))
            self._wake()


def _yield_to_the_loop():
    """Run this worker thread at a lower priority than the loop (Linux: per-thread nice).

    On a single core a password check would otherwise take turns with the
    loop; at nice +10 the loop gets the CPU whenever it has work, so people
    chatting do not wait for a burst of logins.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):       # not Linux, or not allowed: no matter
        pass


class Batch(object):
    """One pass's writes for the storage thread: stores and deletes, one transaction.

    ``stores`` are ``(StoreMessage, position)`` pairs (the position is the
    loop's, for a failure notice); after the write, ``error`` is set when the
    transaction failed as a whole, and ``refused`` lists the stores that
    failed alone (their recipient was removed meanwhile).
    """

    __slots__ = ("number", "stores", "deletes", "error", "refused")

    def __init__(self, number, stores, deletes):
        self.number = number
        self.stores = stores
        self.deletes = deletes
        self.error = None
        self.refused = []


class StorageWriter(object):
    """The one thread that writes the database: a batch at a time, in order, each one commit.

    A slow or frozen disk, or a lock another program holds, stalls this
    thread and the senders whose stores wait for it -- never the loop.
    """

    def __init__(self, storage, wake):
        self._storage = storage
        self._wake = wake
        self._done = collections.deque()
        self._tasks = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="chatnet-storage", daemon=True)
        self._thread.start()

    def submit(self, batch):
        self._tasks.put(batch)

    def results(self):
        """The written batches, in order (call from the loop's thread)."""
        done = self._done
        while done:
            yield done.popleft()

    def stop(self, timeout):
        """Finish what was submitted (at most ``timeout`` seconds); True if it did."""
        self._tasks.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self):
        while True:
            batch = self._tasks.get()
            if batch is None:
                break
            self._write(batch)
            self._done.append(batch)
            self._wake()

    def _write(self, batch):
        storage = self._storage
        try:
            for index, (action, _) in enumerate(batch.stores):
                try:
                    storage.store_message(action.recipient.decode("ascii"),
                                          action.sender.decode("ascii"), action.text)
                except sqlite3.IntegrityError:
                    batch.refused.append(index)       # this one alone: its recipient is gone
            if batch.deletes:
                storage.delete_stored(batch.deletes)
            storage.commit()
        except sqlite3.Error as error:
            batch.error = error
            try:
                storage.rollback()
            except sqlite3.Error:
                pass
