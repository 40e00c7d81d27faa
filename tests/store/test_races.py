"""Budgets and batch leases under races: real processes, one shared history, a hand-written
API that counts the creates it received.

The processes are forked from one parent, as a kernel's workers are: they share its session
(``batch_store.SESSION``), so they share its credit budget, and only the store can keep them
to it. Each child waits at a barrier, then runs its batch through the public faces.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miragic_nb._store.batches import BatchStore
from miragic_nb._store.history import History
from tests.race_servers import KEY, jobs_api

#: A forked child's outcome: (pid, error class name or "", message or number of images).
Outcome = tuple[int, str, str]

_fork = multiprocessing.get_context("fork")


def _session_batch(url: str, prompts: list[str], name: str, barrier: Any, out: Any) -> None:
    """A notebook's batch: ``%config Miragic.max_credits = 4``, then ``generate_many``."""
    from IPython.core.interactiveshell import InteractiveShell

    from miragic_nb.client import Client

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "miragic_nb")
    shell.run_line_magic("config", "Miragic.max_credits = 4")
    _report(out, barrier, lambda: Client(KEY, url).generate_many(prompts, name=name))


def _same_batch(url: str, wait: float | None, barrier: Any, out: Any) -> None:
    from miragic_nb.client import Client

    prompts = [f"the same batch {i}" for i in range(4)]
    options: dict[str, Any] = {} if wait is None else {"wait": wait}
    _report(out, barrier, lambda: Client(KEY, url).generate_many(prompts, name="twice", **options))


def _report(out: Any, barrier: Any, work: Callable[[], Any]) -> None:
    barrier.wait(30)
    try:
        result = work()
        images = sum(image is not None for image in result)
        out.put((os.getpid(), "", str(images)))
    except Exception as exc:
        out.put((os.getpid(), type(exc).__name__, f"{exc}\n{traceback.format_exc()}"))


def _race(target: Callable[..., None], runs: list[tuple[Any, ...]]) -> list[Outcome]:
    """Run ``target`` in one forked process per argument tuple, all released at once."""
    barrier = _fork.Barrier(len(runs))
    out = _fork.Queue()
    children = [_fork.Process(target=target, args=(*args, barrier, out)) for args in runs]
    for child in children:
        child.start()
    outcomes = []
    for _ in children:
        try:
            outcomes.append(out.get(timeout=90))
        except queue.Empty:
            break
    for child in children:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert len(outcomes) == len(runs), outcomes
    return outcomes


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIRAGIC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_two_batches_at_once_keep_to_the_session_budget(home: Path) -> None:
    # max_credits = 4 and two 3-item batches at once: checked one after the other, the second
    # is refused; raced, both used to pass the check and make 6 jobs.
    with jobs_api(job_seconds=0.3, create_seconds=0.3) as api:
        outcomes = _race(
            _session_batch,
            [
                (api.url, [f"first {i}" for i in range(3)], "first"),
                (api.url, [f"second {i}" for i in range(3)], "second"),
            ],
        )
        created = api.created
    assert created <= 4, (created, outcomes)
    kinds = sorted(kind for _, kind, _ in outcomes)
    assert kinds == ["", "BudgetExceededError"], outcomes
    refused = next(message for _, kind, message in outcomes if kind)
    assert "nothing was sent" in refused
    assert created == 3
    # Every credit is either spent in the ledger or given back: none is left held.
    ledger = BatchStore(History(home))
    assert ledger.held() == 0


def test_one_batch_run_twice_at_once_pays_once_and_names_the_holder(home: Path) -> None:
    # Jobs long enough that the second run asks for the lease while the first holds it.
    with jobs_api(job_seconds=2.0) as api:
        outcomes = _race(_same_batch, [(api.url, None), (api.url, None)])
        created = api.created
    assert created == 4, (created, outcomes)
    done = [outcome for outcome in outcomes if not outcome[1]]
    busy = [outcome for outcome in outcomes if outcome[1]]
    assert [message for _, _, message in done] == ["4"], outcomes
    assert [kind for _, kind, _ in busy] == ["BatchBusyError"], outcomes
    holder_pid = done[0][0]
    message = busy[0][2].splitlines()[0]
    assert f"process {holder_pid} on " in message
    assert " since " in message
    assert "nothing was sent" in message


def test_a_second_run_that_waits_gets_the_first_runs_images_for_nothing(home: Path) -> None:
    with jobs_api(job_seconds=0.5) as api:
        outcomes = _race(_same_batch, [(api.url, 60.0), (api.url, 60.0)])
        created = api.created
    assert [(kind, images) for _, kind, images in outcomes] == [("", "4"), ("", "4")], outcomes
    assert created == 4


def test_a_lease_of_a_process_that_died_is_taken_over(home: Path) -> None:
    # A run killed mid-batch leaves its lease row; the next run sees its process is gone.
    child = _fork.Process(target=_take_lease_and_die)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    store = BatchStore(History(home))
    with store.lease("name:orphan", wait=0):
        pass


def _take_lease_and_die() -> None:
    store = BatchStore(History())
    store.lease("name:orphan", wait=0)
    os._exit(0)  # no release: as if killed


def test_credits_held_by_a_process_that_died_are_given_back(home: Path) -> None:
    child = _fork.Process(target=_reserve_and_die)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    store = BatchStore(History(home))
    assert store.held() == 3
    with store.reserve(4, limit=4) as reservation:
        assert reservation.held == 4
    assert store.held() == 0


def _reserve_and_die() -> None:
    BatchStore(History()).reserve(3, limit=4)
    os._exit(0)


def _generate_twice(url: str, barrier: Any, out: Any) -> None:
    """Two threads of one process calling ``Client.generate`` under a cap of 2 credits."""
    import threading

    from miragic_nb import session
    from miragic_nb.client import Client

    session.set_credit_cap(2)
    client = Client(KEY, url)
    kinds: list[str] = []

    def one() -> None:
        try:
            client.generate("under the cap", timeout=30)
            kinds.append("")
        except Exception as exc:
            kinds.append(type(exc).__name__)

    barrier.wait(30)
    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    out.put((os.getpid(), ",".join(sorted(kinds)), ""))


def test_single_jobs_from_two_processes_keep_to_the_cap(home: Path) -> None:
    # Four generate() calls at once (two processes, two threads each), a cap of 2: the
    # engine's check and the spend are one store transaction, so exactly 2 jobs are made.
    with jobs_api(job_seconds=0.2, create_seconds=0.3) as api:
        outcomes = _race(_generate_twice, [(api.url,), (api.url,)])
        created = api.created
    kinds = sorted(kind for _, joined, _ in outcomes for kind in joined.split(","))
    assert created == 2, (created, outcomes)
    assert kinds == ["", "", "BudgetExceededError", "BudgetExceededError"], outcomes
    assert BatchStore(History(home)).held() == 0
