"""Where a batch keeps its place: which job each item has, and the intents to create.

The intent to create an item's job is written (and synced) before its create request is sent,
and the job id next to it the moment the create answer is read. So after a crash a rerun
knows, item by item: a job id (resume it, or take its saved result), nothing (never sent), or
an intent without an id -- a create whose answer was lost, which may or may not have made a
job. The ledger counts the credits each kernel session spent (``%config Miragic.max_credits``).
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

from miragic_nb._core.request import GenerationRequest
from miragic_nb._store import store
from miragic_nb._store.history import History, reuse_key

#: This process's session in the ledger: a kernel's credits are counted from its start.
SESSION = secrets.token_hex(16)


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

    def link(self, batch_key: str, item: int, job_id: str, *, spent: bool = True) -> None:
        """The item's job id, once known; ``spent`` also counts its credit in the ledger."""
        at = store.now()
        with self._database.writing() as connection:
            connection.execute(
                "INSERT INTO batch_items (batch_key, item, job_id, intent_at, updated_at) "
                "VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (batch_key, item) "
                "DO UPDATE SET job_id = ?3, updated_at = ?4",
                (batch_key, item, job_id, at),
            )
            if spent:
                _spend(connection, job_id, at)

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

    def spend(self, job_id: str) -> None:
        """Count one credit spent by this session (a job created outside a batch)."""
        with self._database.writing() as connection:
            _spend(connection, job_id, store.now())

    def spent(self, session: str = SESSION) -> int:
        """Credits this session has spent."""
        with self._database.reading() as connection:
            row = connection.execute(
                "SELECT COUNT(*) FROM ledger WHERE session = ?", (session,)
            ).fetchone()
        return int(row[0])


def _spend(connection: sqlite3.Connection, job_id: str, at: str) -> None:
    connection.execute(
        "INSERT INTO ledger (session, job_id, at) VALUES (?, ?, ?)", (SESSION, job_id, at)
    )
