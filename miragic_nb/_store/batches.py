"""Where a batch keeps its place: which job each item has, and the intents to create.

The intent to create an item's job is written (and synced) before its create request is sent,
and the job id next to it the moment the create answer is read. So after a crash a rerun
knows, item by item: a job id (resume it, or take its saved result), nothing (never sent), or
an intent without an id -- a create whose answer was lost, which may or may not have made a
job. The ledger counts the credits each kernel session spent (``%config Miragic.max_credits``).

**Budgets under races.** Checking a budget and spending from it are one transaction:
``reserve`` counts the session's spent and held credits and takes ``n`` more in the same
``BEGIN IMMEDIATE``, so two batches (threads, or processes sharing a session) can never both
see room for the same credit. Each create then turns one held credit into a ledger row
(``Reservation.commit``), and what was not used is given back (``Reservation.release``). The
credits of a process that died holding them are given back by the next ``reserve``.

**Leases.** A batch runs under a lease on its key (``lease``): a second run of the same batch
waits for it, or is refused with who holds it (pid, host, since when). A holder on this host
whose process is gone, or one on another host not renewed for ``LEASE_STALE_S``, has lost it.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType

from miragic_nb._core.errors import BatchBusyError, BudgetExceededError
from miragic_nb._core.interrupts import start_without_ctrl_c
from miragic_nb._core.request import GenerationRequest
from miragic_nb._store import store
from miragic_nb._store.history import History, reuse_key

#: This process's session in the ledger: a kernel's credits are counted from its start.
SESSION = secrets.token_hex(16)
HOST = socket.gethostname()
#: A lease holder renews its lease this often ...
LEASE_RENEW_S = 20.0
#: ... and one on another host (whose process cannot be checked) not renewed for this long
#: has lost it.
LEASE_STALE_S = 120.0
#: How often a run waiting for another's lease looks again.
_LEASE_POLL_S = 0.1


@dataclass(frozen=True)
class ItemRecord:
    """What the store knows of one item: its job id (None: a create whose answer was lost)."""

    item: int
    job_id: str | None
    intent_at: str


class BatchStore:
    """The ``batch_items`` and ``ledger`` tables of one history's database."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._database = store.Database(history.home)

    def items(self, batch_key: str) -> dict[int, ItemRecord]:
        with self._database.reading() as connection:
            rows = connection.execute(
                "SELECT item, job_id, intent_at FROM batch_items WHERE batch_key = ?",
                (batch_key,),
            ).fetchall()
        return {item: ItemRecord(item, job_id, at) for item, job_id, at in rows}

    def forget(self, batch_key: str) -> None:
        """Start the batch over (``fresh=True``); the jobs themselves stay in the history."""
        with self._database.writing() as connection:
            connection.execute("DELETE FROM batch_items WHERE batch_key = ?", (batch_key,))

    def intend(self, batch_key: str, item: int) -> None:
        """Written before the item's create request is sent."""
        at = store.now()
        with self._database.writing() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO batch_items (batch_key, item, job_id, intent_at, "
                "updated_at) VALUES (?, ?, NULL, ?, ?)",
                (batch_key, item, at, at),
            )

    def link(
        self,
        batch_key: str,
        item: int,
        job_id: str,
        *,
        spent: bool = True,
        reservation: Reservation | None = None,
    ) -> None:
        """The item's job id, once known; ``spent`` also counts its credit in the ledger (taken
        from ``reservation`` when given, in the same transaction)."""
        at = store.now()
        with self._database.writing() as connection:
            connection.execute(
                "INSERT INTO batch_items (batch_key, item, job_id, intent_at, updated_at) "
                "VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (batch_key, item) "
                "DO UPDATE SET job_id = ?3, updated_at = ?4",
                (batch_key, item, job_id, at),
            )
            if spent:
                _spend(connection, job_id, at, reservation)

    def withdraw(self, batch_key: str, item: int) -> None:
        """The create certainly made no job (a 429, a refusal): the intent is void."""
        with self._database.writing() as connection:
            connection.execute(
                "DELETE FROM batch_items WHERE batch_key = ? AND item = ? AND job_id IS NULL",
                (batch_key, item),
            )

    def adopt(
        self, batch_key: str, record: ItemRecord, request: GenerationRequest, *, base_url: str
    ) -> str | None:
        """The job an intent made, when the history has it (recorded by the engine just
        before a crash cut off the link): a job of the same request created since the
        intent that no other item of the batch has. None when there is none."""
        key = reuse_key(request, base_url=base_url)
        with self._database.writing() as connection:
            found = connection.execute(
                "SELECT job_id FROM jobs WHERE reuse_key = ? AND created_at >= ? AND job_id "
                "NOT IN (SELECT job_id FROM batch_items WHERE batch_key = ? AND job_id IS NOT "
                "NULL) ORDER BY created_at LIMIT 1",
                (key, record.intent_at, batch_key),
            ).fetchone()
            if found is None:
                return None
            connection.execute(
                "UPDATE batch_items SET job_id = ?, updated_at = ? WHERE batch_key = ? "
                "AND item = ?",
                (found[0], store.now(), batch_key, record.item),
            )
        return str(found[0])

    # -- the ledger --------------------------------------------------------------------------

    def spend(
        self, job_id: str, *, reservation: Reservation | None = None, wait: float | None = None
    ) -> None:
        """Count one credit spent by this session (a job created outside a batch), taken from
        ``reservation`` when given; ``wait`` bounds the wait for a busy store."""
        with self._database.writing(wait=wait) as connection:
            _spend(connection, job_id, store.now(), reservation)

    def spent(self, session: str = SESSION) -> int:
        """Credits this session has spent."""
        with self._database.reading() as connection:
            row = connection.execute(
                "SELECT COUNT(*) FROM ledger WHERE session = ?", (session,)
            ).fetchone()
        return int(row[0])

    def held(self, session: str = SESSION) -> int:
        """Credits this session holds for creates not yet answered (live reservations)."""
        with self._database.reading() as connection:
            row = connection.execute(
                "SELECT TOTAL(credits) FROM reservations WHERE session = ?", (session,)
            ).fetchone()
        return int(row[0])

    def reserve(self, credits: int, *, limit: int | None, session: str = SESSION) -> Reservation:
        """Hold ``credits`` for ``session``, checked against ``limit`` in the same transaction.

        Raises ``BudgetExceededError`` (``needed``: spent + held + ``credits``) when they do not
        fit. ``limit`` None holds them without a check (the ledger still counts the spend).
        """
        with self._database.writing() as connection:
            _reclaim(connection)
            spent, held = connection.execute(
                "SELECT (SELECT COUNT(*) FROM ledger WHERE session = ?1), "
                "(SELECT TOTAL(credits) FROM reservations WHERE session = ?1)",
                (session,),
            ).fetchone()
            needed = int(spent) + int(held) + credits
            if limit is not None and needed > limit:
                raise BudgetExceededError(
                    f"{int(spent)} credits spent and {int(held)} held by running jobs; "
                    f"{credits} more would pass the limit of {limit}",
                    needed=needed,
                    allowed=limit,
                )
            cursor = connection.execute(
                "INSERT INTO reservations (session, credits, pid, host, at) VALUES (?, ?, ?, ?, ?)",
                (session, credits, os.getpid(), HOST, store.now()),
            )
            assert cursor.lastrowid is not None
        return Reservation(self._database, cursor.lastrowid, credits, session)

    # -- leases ------------------------------------------------------------------------------

    def lease(self, batch_key: str, *, wait: float = 0.0) -> Lease:
        """Take the batch's lease, waiting up to ``wait`` seconds for another run to end.

        Raises ``BatchBusyError`` naming the holder when it is still held after ``wait``.
        """
        token = secrets.token_hex(16)
        give_up = time.monotonic() + max(wait, 0.0)
        while True:
            holder = self._take(batch_key, token)
            if holder is None:
                return Lease(self._database, batch_key, token)
            left = give_up - time.monotonic()
            if left <= 0:
                pid, host, since = holder
                who = "this process" if (pid, host) == (os.getpid(), HOST) else f"process {pid}"
                raise BatchBusyError(
                    f"this batch is being run by {who} on {host} since {since[:19]} UTC; "
                    "nothing was sent. Wait for that run to end (it records every item, so "
                    "running the batch again then costs nothing for what it made), or pass a "
                    "wait in seconds to queue behind it",
                    pid=pid,
                    host=host,
                    since=since,
                )
            time.sleep(min(_LEASE_POLL_S, left))

    def _take(self, batch_key: str, token: str) -> tuple[int, str, str] | None:
        """Take the lease if it is free (or its holder gone); else (pid, host, since)."""
        now = store.now()
        with self._database.writing() as connection:
            row = connection.execute(
                "SELECT pid, host, since, renewed_at FROM leases WHERE batch_key = ?",
                (batch_key,),
            ).fetchone()
            if row is not None and _holding(int(row[0]), str(row[1]), str(row[3])):
                return int(row[0]), str(row[1]), str(row[2])
            connection.execute(
                "INSERT OR REPLACE INTO leases (batch_key, token, pid, host, since, renewed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (batch_key, token, os.getpid(), HOST, now, now),
            )
        return None


class Reservation:
    """Credits held in the store for one session until each is spent or given back.

    ``commit`` (or ``BatchStore.link``/``spend`` with ``reservation=``) turns one held credit
    into a ledger row; ``release`` gives back the rest. As a context manager it releases on
    exit, so an error never leaves credits held.
    """

    def __init__(self, database: store.Database, row: int, credits: int, session: str) -> None:
        self._database = database
        self._row = row
        self._lock = threading.Lock()
        self.session = session
        #: Credits still held.
        self.held = credits

    def __repr__(self) -> str:
        return f"<Reservation of {self.held} credits>"

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def commit(self, job_id: str) -> None:
        """One credit of this reservation was spent on ``job_id``."""
        with self._database.writing() as connection:
            _spend(connection, job_id, store.now(), self)

    def release(self) -> None:
        """Give back every credit still held (idempotent)."""
        if self.held <= 0:
            return
        # The store first, then this object's lock: the order a spend takes them in.
        with self._database.writing() as connection, self._lock:
            if self.held > 0:
                connection.execute("DELETE FROM reservations WHERE id = ?", (self._row,))
                self.held = 0

    def _take_one(self, connection: sqlite3.Connection) -> None:
        with self._lock:
            if self.held <= 0:
                return  # spent past what was held (e.g. a retried create): still counted
            self.held -= 1
            if self.held:
                connection.execute(
                    "UPDATE reservations SET credits = ? WHERE id = ?", (self.held, self._row)
                )
            else:
                connection.execute("DELETE FROM reservations WHERE id = ?", (self._row,))


class Lease:
    """One run's hold on a batch: renewed in the background, released when the run ends."""

    def __init__(self, database: store.Database, batch_key: str, token: str) -> None:
        self._database = database
        self.batch_key = batch_key
        self._token = token
        self._done = threading.Event()
        start_without_ctrl_c(
            threading.Thread(target=self._renew, name="miragic-lease", daemon=True)
        )

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        with self._database.writing() as connection:
            connection.execute(
                "DELETE FROM leases WHERE batch_key = ? AND token = ?",
                (self.batch_key, self._token),
            )

    def _renew(self) -> None:
        while not self._done.wait(LEASE_RENEW_S):
            try:
                with self._database.writing() as connection:
                    connection.execute(
                        "UPDATE leases SET renewed_at = ? WHERE batch_key = ? AND token = ?",
                        (store.now(), self.batch_key, self._token),
                    )
            except Exception:  # a busy store: renewed next time
                continue


def _spend(
    connection: sqlite3.Connection, job_id: str, at: str, reservation: Reservation | None = None
) -> None:
    connection.execute(
        "INSERT INTO ledger (session, job_id, at) VALUES (?, ?, ?)",
        (SESSION if reservation is None else reservation.session, job_id, at),
    )
    if reservation is not None:
        reservation._take_one(connection)


def _holding(pid: int, host: str, renewed_at: str) -> bool:
    """Whether a lease (or reservation) holder still holds: its process is alive here, or,
    on another host, it renewed within ``LEASE_STALE_S``."""
    if host == HOST:
        return _alive(pid)
    renewed = store.parse_time(renewed_at)
    return renewed is not None and datetime.now(timezone.utc) - renewed < timedelta(
        seconds=LEASE_STALE_S
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _reclaim(connection: sqlite3.Connection) -> None:
    """Give back the credits held by processes of this host that are gone."""
    for row, pid in connection.execute(
        "SELECT id, pid FROM reservations WHERE host = ?", (HOST,)
    ).fetchall():
        if not _alive(int(pid)):
            connection.execute("DELETE FROM reservations WHERE id = ?", (row,))
