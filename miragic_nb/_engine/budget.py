"""The session's credit budget (``%config Miragic.max_credits = N``), kept in the ledger.

Every job the engine creates in this process is counted in the store's ledger
(``_store.batches``), whichever face asked for it: a cell, the panel, ``generate``,
``agenerate``, a batch. The engine asks ``refusal`` before each create, so the cap holds for
every face; a cell or a batch that could take the session past it is refused whole, before
any request (``check_session``). Jobs on the built-in emulator cost nothing and are not counted.
"""

from __future__ import annotations

import threading

from miragic_nb._core.errors import BudgetExceededError
from miragic_nb._store.batches import BatchStore
from miragic_nb._store.history import History

_lock = threading.Lock()
_limit: int | None = None


def set_session_limit(limit: int | None) -> None:
    """The credits this process may spend (None: no limit); the session sets it from
    ``%config Miragic.max_credits``."""
    global _limit
    with _lock:
        _limit = limit


def session_limit() -> int | None:
    """The credits this process may spend, if a limit is set."""
    with _lock:
        return _limit


def check_session(history: History | None, *, planned: int, max_credits: int | None) -> None:
    """Refuse (one line, nothing sent) ``planned`` more jobs past the session's budget."""
    error = _over(history, planned=planned, max_credits=max_credits)
    if error is not None:
        raise error


def refusal(history: History | None, *, emulator: bool) -> BudgetExceededError | None:
    """The error one more job would end in under the session's budget; None when it may go."""
    if emulator:
        return None
    return _over(history, planned=1, max_credits=session_limit())


def spend(history: History | None, job_id: str, *, emulator: bool) -> None:
    """Count a created job's credit in the ledger (the emulator's cost nothing)."""
    if history is not None and not emulator:
        BatchStore(history).spend(job_id)


def _over(
    history: History | None, *, planned: int, max_credits: int | None
) -> BudgetExceededError | None:
    if max_credits is None:
        return None
    spent = 0 if history is None else BatchStore(history).spent()
    if spent + planned <= max_credits:
        return None
    return BudgetExceededError(
        f"session budget reached: {spent} of Miragic.max_credits = {max_credits} credits "
        f"spent, and this needs up to {planned} more; nothing was sent "
        f"(raise it with %config Miragic.max_credits = {spent + planned})",
        needed=spent + planned,
        allowed=max_credits,
    )
