"""Batches (``Client.generate_many``) over a real emulator on loopback: order, partial failure,
resume without paying twice, dry runs and budgets that send nothing, and 429 storms that never
make a job twice."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from miragic_nb import UncertainJobError
from miragic_nb._core.errors import BudgetExceededError, InvalidRequestError, JobFailedError
from miragic_nb._engine.batch import Batch, BatchResult, Plan, item_seed
from miragic_nb._store.batches import BatchStore
from miragic_nb._store.history import History
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator, RateLimit
from tests.conftest import FAST_POLLS, eventually

CREATE = "/api/v1/image/generate"
SMALL = {"width": 256, "height": 256}


def _client(emulator: Emulator, home: Path) -> Client:
    return Client(
        emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, timeout=30, history=History(home)
    )


def _items(count: int, word: str = "tile") -> list[dict[str, object]]:
    return [{"prompt": f"{word} {n}", **SMALL} for n in range(count)]


def _run(client: Client, items: list[dict[str, object]], **options: object) -> BatchResult:
    result = client.generate_many(items, **options)  # type: ignore[arg-type]
    assert isinstance(result, BatchResult)
    return result


def _stored(client: Client, items: list[dict[str, object]]) -> tuple[str, BatchStore]:
    """The batch's key and its store, as a rerun of ``items`` finds them."""
    plan = client.generate_many(items, dry_run=True)  # type: ignore[arg-type]
    assert isinstance(plan, Plan)
    assert client.history is not None
    return plan.batch_key, BatchStore(client.history)


def test_results_are_aligned_with_the_items(emulator: Emulator, tmp_path: Path) -> None:
    items = _items(6)
    with _client(emulator, tmp_path) as client:
        result = _run(client, items, concurrency=3)
    assert len(result) == 6
    assert result.errors == {}
    assert [image.metadata["prompt"] for image in result if image] == [i["prompt"] for i in items]
    assert (result.created, result.reused, result.resumed) == (6, 0, 0)
    assert emulator.count("POST", CREATE) == 6


def test_a_bad_item_is_refused_by_index_before_any_request(
    emulator: Emulator, tmp_path: Path
) -> None:
    items: list[object] = ["fine", {"prompt": "also fine"}, {"prompt": "x", "width": 7}]
    with _client(emulator, tmp_path) as client:
        with pytest.raises(InvalidRequestError, match=r"item 2: .*width"):
            client.generate_many(items)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match=r"item 0: it has no 'prompt'"):
            client.generate_many([{"model": "flux"}])
    assert emulator.requests == []


def test_one_failed_item_never_stops_the_others_and_a_rerun_retries_only_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.faults.configure(force_failure=True, failure_match="doomed")
    items = _items(4)
    items[2]["prompt"] = "doomed tile"
    with _client(emulator, tmp_path) as client:
        first = _run(client, items, concurrency=2)
        assert first[2] is None
        assert isinstance(first.errors[2], JobFailedError)
        assert all(first[i] is not None for i in (0, 1, 3))
        emulator.faults.configure(force_failure=False)
        plan = client.generate_many(items, dry_run=True)
        assert isinstance(plan, Plan)
        assert (plan.from_store, plan.to_create, plan.credits) == ((0, 1, 3), (2,), 1)
        second = _run(client, items, concurrency=2)
    assert second.errors == {}
    assert (second.created, second.reused) == (1, 3)
    assert emulator.count("POST", CREATE) == 5


def test_a_rerun_takes_finished_items_from_the_store_and_resumes_open_jobs_by_id(
    emulator: Emulator, tmp_path: Path
) -> None:
    items = _items(3)
    with _client(emulator, tmp_path) as client:
        batch_key, store = _stored(client, items)
        # As if a crash came after item 1's create was answered and recorded.
        job = client.submit(str(items[1]["prompt"]), **SMALL)  # type: ignore[arg-type]
        store.link(batch_key, 1, job.id)
        result = _run(client, items)
    assert result.errors == {}
    assert (result.created, result.resumed) == (2, 1)
    assert result[1] is not None
    assert result[1].metadata["job_id"] == job.id
    assert emulator.count("POST", CREATE) == 3


def test_fresh_starts_over(emulator: Emulator, tmp_path: Path) -> None:
    items = _items(2)
    with _client(emulator, tmp_path) as client:
        _run(client, items)
        again = _run(client, items, fresh=True)
    assert (again.created, again.reused) == (2, 0)
    assert emulator.count("POST", CREATE) == 4


def test_an_intent_without_an_answer_is_reported_never_repaid_silently(
    emulator: Emulator, tmp_path: Path
) -> None:
    items = _items(3)
    with _client(emulator, tmp_path) as client:
        batch_key, store = _stored(client, items)
        # As if killed while item 0's create was on the wire: the intent, no id, no job.
        store.intend(batch_key, 0)
        plan = client.generate_many(items, dry_run=True)
        assert isinstance(plan, Plan)
        assert (plan.uncertain, plan.to_create) == ((0,), (1, 2))
        result = _run(client, items)
        assert result.uncertain == [0]
        assert isinstance(result.errors[0], UncertainJobError)
        assert emulator.count("POST", CREATE) == 2
        retried = _run(client, items, retry_uncertain=True)
    assert retried.errors == {}
    assert retried.created == 1
    assert emulator.count("POST", CREATE) == 3


def test_an_intent_whose_job_the_engine_recorded_is_adopted(
    emulator: Emulator, tmp_path: Path
) -> None:
    items = _items(2)
    with _client(emulator, tmp_path) as client:
        batch_key, store = _stored(client, items)
        # Killed after the engine recorded the job id, before the batch linked it.
        store.intend(batch_key, 1)
        # The request the batch's engine sent: an unseeded item goes with the batch's seed.
        seed = item_seed(batch_key, 1)
        job = client.submit(str(items[1]["prompt"]), seed=seed, **SMALL)  # type: ignore[arg-type]
        plan = client.generate_many(items, dry_run=True)
        assert isinstance(plan, Plan)
        assert (plan.uncertain, plan.to_resume, plan.to_create) == ((), (1,), (0,))
        result = _run(client, items)
    assert result[1] is not None
    assert result[1].metadata["job_id"] == job.id
    assert emulator.count("POST", CREATE) == 2


def test_a_dry_run_and_a_budget_send_nothing(emulator: Emulator, tmp_path: Path) -> None:
    items = _items(5)
    with _client(emulator, tmp_path) as client:
        plan = client.generate_many(items, dry_run=True)
        assert isinstance(plan, Plan)
        assert (plan.items, plan.credits) == (5, 5)
        with pytest.raises(BudgetExceededError, match=r"would create 5 jobs .* max_credits is 4"):
            client.generate_many(items, max_credits=4)
    assert emulator.requests == []
    with _client(emulator, tmp_path) as client:
        assert _run(client, items, max_credits=5).errors == {}


def test_a_429_storm_is_paced_and_no_job_is_made_twice(emulator: Emulator, tmp_path: Path) -> None:
    emulator.limits.create = RateLimit(20, burst=2)
    items = _items(24)
    with _client(emulator, tmp_path) as client:
        result = _run(client, items, concurrency=8)
    assert result.errors == {}
    assert result.created == 24
    # The batch itself saw the 429s (urllib3 did not retry them behind its back).
    assert result.rate_limited == emulator.throttled("create") > 0
    created = [r for r in emulator.requests if r.method == "POST" and r.status == 200]
    assert len(created) == 24
    prompts = Counter(job.prompt for job in emulator.jobs.values())
    assert set(prompts.values()) == {1}


def test_auto_concurrency_sees_429s_too(emulator: Emulator, tmp_path: Path) -> None:
    emulator.limits.create = RateLimit(30, burst=1)
    items = _items(12)
    with _client(emulator, tmp_path) as client:
        result = _run(client, items)
    assert result.errors == {}
    assert len(emulator.jobs) == 12
    assert result.rate_limited == emulator.throttled("create")


def test_progress_reports_counts(emulator: Emulator, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    with _client(emulator, tmp_path) as client:
        _run(client, _items(3), on_progress=lambda c: seen.append((c.done, c.total)))
    assert seen[-1] == (3, 3)


def test_a_bad_concurrency_is_refused(emulator: Emulator, tmp_path: Path) -> None:
    with _client(emulator, tmp_path) as client:
        for bad in (0, -1, "fast", True):
            with pytest.raises(InvalidRequestError, match="concurrency"):
                client.generate_many(["x"], concurrency=bad)  # type: ignore[arg-type]
    assert emulator.requests == []


def test_a_stopped_batch_sends_no_further_create_and_a_rerun_resumes_its_jobs(
    tmp_path: Path,
) -> None:
    items = _items(6, "slow")
    with Emulator(api_key="test-key-0123456789", job_seconds=4.0) as emulator:
        with _client(emulator, tmp_path) as client:
            batch = Batch(client.engine, items, concurrency=2)
            plan = batch.plan()
            outcome: list[BatchResult] = []
            runner = threading.Thread(target=lambda: outcome.append(batch.run(plan)))
            runner.start()
            assert eventually(lambda: len(emulator.jobs) == 2)
            batch.cancel()
            runner.join(10)
            assert not runner.is_alive()
            (stopped,) = outcome
            assert len(stopped.errors) == 6
            assert emulator.count("POST", CREATE) == 2  # no create after the stop
            rerun = client.generate_many(items, dry_run=True)  # type: ignore[arg-type]
            assert isinstance(rerun, Plan)
            assert (len(rerun.to_resume), len(rerun.to_create)) == (2, 4)
