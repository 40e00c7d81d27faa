"""Every picture can be made again: without a seed, the client picks one, sends it and says so.

Against the emulator, which records the form it received: the seed shown is the one sent.
"""

from __future__ import annotations

from miragic_nb._core.request import MAX_SEED
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator

CREATE = "/api/v1/image/generate"


def _sent_seeds(emulator: Emulator) -> list[str | None]:
    return [r.form.get("seed") for r in emulator.requests if r.method == "POST"]


def test_an_unseeded_job_is_sent_with_a_seed_the_client_chose(
    client: Client, emulator: Emulator
) -> None:
    image = client.generate("a fox", width=256, height=256)
    meta = image.info["miragic"]
    (sent,) = _sent_seeds(emulator)
    assert sent is not None
    assert meta["seed"] == int(sent)
    assert 0 <= meta["seed"] <= MAX_SEED
    assert meta["seed_chosen"] is True
    assert f"seed {meta['seed']} (random)" in image.caption()


def test_unseeded_jobs_are_never_reused_and_a_chosen_seed_makes_the_picture_again(
    client: Client, emulator: Emulator
) -> None:
    first = client.generate("a fox", width=256, height=256)
    second = client.generate("a fox", width=256, height=256)
    assert emulator.count("POST", CREATE) == 2  # unseeded: a new picture each time
    assert first.info["miragic"]["seed"] != second.info["miragic"]["seed"]
    # The seed the caption showed, given back, is the same request: reused, no new credit.
    again = client.generate("a fox", width=256, height=256, seed=first.info["miragic"]["seed"])
    assert emulator.count("POST", CREATE) == 2
    assert again.info["miragic"]["reused"] is True
    assert again.tobytes() == first.tobytes()  # the same pixels (the file carries metadata)
    assert "seed_chosen" not in again.info["miragic"]


def test_a_seed_the_user_gave_is_sent_as_given_and_not_marked_chosen(
    client: Client, emulator: Emulator
) -> None:
    image = client.generate("a fox", width=256, height=256, seed=42)
    assert _sent_seeds(emulator) == ["42"]
    assert image.info["miragic"]["seed"] == 42
    assert "seed_chosen" not in image.info["miragic"]
    assert "(random)" not in image.caption()
