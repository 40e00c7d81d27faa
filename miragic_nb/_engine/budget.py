"""The session's credit budget (``%config Miragic.max_credits = N``), kept in the ledger.

Every job the engine creates in this process is counted in the store's ledger
(``_store.batches``), whichever face asked for it: a cell, the panel, ``generate``,
``agenerate``, a batch. The engine asks ``refusal`` before each create, so the cap holds for
every face; a cell or a batch that could take the session past it is refused whole, before
any request (``check_session``). Jobs on the built-in emulator cost nothing and are not counted.

Checking and spending are one store transaction, so concurrent cells, batches, threads and
processes sharing the session cannot all pass the check for the same credit: ``reserve``
counts the spent and held credits and holds ``n`` more in one ``BEGIN IMMEDIATE``; each create
spends one held credit (the engine, through ``JobHandle.reservation`` or a reservation of its
own), and whatever is left is released when the work ends.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from miragic_nb._core.errors import BudgetExceededError

if TYPE_CHECKING:
    # The store loads with the first job, not with %load_ext (which sets the limit).
    from miragic_nb._store.batches import Reservation
    from miragic_nb._store.history import History

__all__ = [
    "Reservation",
    "check_session",
    "refusal",
    "reserve",
    "session_limit",
    "set_session_limit",
    "spend",
]

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


def reserve(history: History, credits: int, *, max_credits: int | None) -> Reservation:
    """Hold ``credits`` of the session's budget in the store, or refuse in one line (nothing
    sent). Use it as a context manager, or ``release()`` it when the work ends."""
    from miragic_nb._store.batches import BatchStore

    try:
        return BatchStore(history).reserve(credits, limit=max_credits)
    except BudgetExceededError as exc:
        used = exc.needed - credits
        raise BudgetExceededError(
            f"session budget reached: {used} of Miragic.max_credits = {max_credits} credits "
            f"spent or held by jobs on their way, and this needs up to {credits} more; nothing "
            f"was sent (raise it with %config Miragic.max_credits = {exc.needed})",
            needed=exc.needed,
            allowed=exc.allowed,
        ) from None


def spend(
    history: History | None,
    job_id: str,
    *,
    emulator: bool,
    reservation: Reservation | None = None,
    wait: float | None = None,
) -> None:
    """Count a created job's credit in the ledger (the emulator's cost nothing), taken from
    ``reservation`` when there is one; ``wait`` bounds the wait for a busy store."""
    if history is not None and not emulator:
        from miragic_nb._store.batches import BatchStore

        BatchStore(history).spend(job_id, reservation=reservation, wait=wait)


def _over(
    history: History | None, *, planned: int, max_credits: int | None
) -> BudgetExceededError | None:
    if max_credits is None:
        return None
    from miragic_nb._store.batches import BatchStore

    ledger = None if history is None else BatchStore(history)
    # Credits held by work on its way count as spent: they are about to be.
    spent = 0 if ledger is None else ledger.spent() + ledger.held()
    if spent + planned <= max_credits:
        return None
    return BudgetExceededError(
        f"session budget reached: {spent} of Miragic.max_credits = {max_credits} credits "
        f"spent, and this needs up to {planned} more; nothing was sent "
        f"(raise it with %config Miragic.max_credits = {spent + planned})",
        needed=spent + planned,
        allowed=max_credits,
    )
