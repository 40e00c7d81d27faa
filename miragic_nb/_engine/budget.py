"""The session's credit budget (``%config Miragic.max_credits = N``), kept in the ledger.

Every job a kernel session creates is counted in the store's ledger (``batch_store``), so
the count is the same whichever face created it and survives nothing but the session. A
cell or a batch that could take the session past its budget is refused before any request.
"""

from __future__ import annotations

import sys

from miragic_nb._core.errors import BudgetExceededError
from miragic_nb._engine.engine import JobHandle, Listener
from miragic_nb._store.batches import BatchStore
from miragic_nb._store.history import History


def check_session(history: History, *, planned: int, max_credits: int | None) -> None:
    """Refuse (one line, nothing sent) ``planned`` more jobs past the session's budget."""
    if max_credits is None:
        return
    spent = BatchStore(history).spent()
    if spent + planned > max_credits:
        raise BudgetExceededError(
            f"session budget reached: {spent} of Miragic.max_credits = {max_credits} credits "
            f"spent, and this needs up to {planned} more; nothing was sent "
            f"(raise it with %config Miragic.max_credits = {spent + planned})",
            needed=spent + planned,
            allowed=max_credits,
        )


def session_limit() -> int | None:
    """``Miragic.max_credits`` of the IPython shell running this code, if the extension is
    loaded there (so a batch in a notebook keeps to the same budget as its cells)."""
    ipython = sys.modules.get("IPython")  # never imported here: a script has no session budget
    shell = None if ipython is None else ipython.get_ipython()
    for configurable in getattr(shell, "configurables", []):
        if type(configurable).__name__ == "Miragic":
            limit = getattr(configurable, "max_credits", None)
            return limit if isinstance(limit, int) else None
    return None


def counting(history: History) -> Listener:
    """A handle listener that counts the job's credit in the ledger once its id is known."""
    ledger = BatchStore(history)
    counted: set[int] = set()

    def listener(handle: JobHandle) -> None:
        if handle.id is not None and handle.sent and id(handle) not in counted:
            counted.add(id(handle))
            ledger.spend(handle.id)

    return listener
