"""``ResultInfo``: how a result image was made, built in one place.

Every result carries it as ``image.info["miragic"]`` (``image.metadata``), a plain dict so
notebooks, pickles and the history can read it. The dict's keys are public: ``as_dict`` writes
exactly the keys earlier releases wrote, and the optional markers (``emulator``, ``reused``,
``size_mismatch``, ``path``) only when they apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.jobs import Job
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.urls import strip_userinfo

#: A whole number as ASCII digits (``str.isdigit`` also accepts "²", which int() refuses).
_DIGITS = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class ResultInfo:
    """How one result was made: the request, the job, timings, and where it came from."""

    job_id: str
    prompt: str | None
    model: str | None
    width: int | None
    height: int | None
    seed: int | None
    image_url: str | None
    options: Mapping[str, bool | None] = field(default_factory=dict)
    result_url: str | None = None
    elapsed_s: float | None = None
    processing_s: float | None = None
    credits_used: float | None = None
    #: The server's own ``createdAt``, ISO-8601.
    created_at: str | None = None
    base_url: str | None = None
    #: The decoded image's own size; ``size_mismatch`` when it is not the requested one.
    image_size: tuple[int, int] | None = None
    #: Made by the built-in emulator (a placeholder image).
    emulator: bool = False
    #: Answered from the history: no job, no credit.
    reused: bool = False
    #: The user gave no seed: the client chose ``seed`` (so the picture can be made again).
    seed_chosen: bool = False
    #: Where the history saved the file.
    path: str | None = None

    @classmethod
    def of_job(
        cls,
        job: Job,
        request: GenerationRequest | None,
        *,
        base_url: str,
        elapsed: float,
        image_size: tuple[int, int],
        emulator: bool = False,
        seed_chosen: bool = False,
    ) -> ResultInfo:
        """The info of a result just downloaded (``request`` None: a job resumed by id)."""
        request = request if request is not None else request_from_job(job)
        return cls(
            job_id=job.id,
            prompt=request.prompt,
            model=request.model,
            width=request.width,
            height=request.height,
            seed=request.seed,
            image_url=_no_userinfo(request.image_url),
            options=request.describe()["options"],
            result_url=_no_userinfo(job.result_url),
            elapsed_s=round(elapsed, 3),
            processing_s=job.processing_seconds,
            credits_used=job.credits_used,
            created_at=job.created_at.isoformat() if job.created_at else None,
            base_url=base_url,
            image_size=image_size,
            emulator=emulator,
            seed_chosen=seed_chosen,
        )

    def labelled(self, *, emulator: bool = False, reused: bool = False) -> ResultInfo:
        """This info with the emulator and reuse markers set where asked (never unset)."""
        return replace(self, emulator=self.emulator or emulator, reused=self.reused or reused)

    @property
    def size_mismatch(self) -> bool:
        return self.image_size is not None and self.image_size != (self.width, self.height)

    def as_dict(self) -> dict[str, Any]:
        """``image.info["miragic"]``: the public keys, the markers only when they apply."""
        meta: dict[str, Any] = {
            "job_id": self.job_id,
            "prompt": self.prompt,
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "image_url": self.image_url,
            "options": dict(self.options),
            "result_url": self.result_url,
            "elapsed_s": self.elapsed_s,
            "processing_s": self.processing_s,
            "credits_used": self.credits_used,
            "created_at": self.created_at,
            "base_url": self.base_url,
        }
        if self.size_mismatch:
            meta["size_mismatch"] = True
        if self.image_size is not None:
            meta["image_size"] = list(self.image_size)
        if self.path is not None:
            meta["path"] = self.path
        if self.emulator:
            meta["emulator"] = True
        if self.reused:
            meta["reused"] = True
        if self.seed_chosen:
            meta["seed_chosen"] = True
        return meta


def whole_number(text: str | None) -> int | None:
    """A recorded parameter as a whole number, when it is written in ASCII digits.

    ``str.isdigit`` also accepts "²", which ``int`` refuses: a server's odd parameter must
    never break a resume.
    """
    text = (text or "").strip()
    return int(text) if _DIGITS.fullmatch(text) else None


def request_from_job(job: Job) -> GenerationRequest:
    """Rebuild the request from the parameters the server recorded (for resumed jobs)."""
    params = job.parameters
    prompt = params.get("prompt") or str(job.raw.get("prompt") or "") or "(unknown prompt)"

    def flag(name: str) -> bool | None:
        value = params.get(name, "").lower()
        return {"true": True, "false": False}.get(value)

    try:
        return GenerationRequest(
            prompt,
            model=params.get("model") or "flux",
            width=whole_number(params.get("width")) or 1024,
            height=whole_number(params.get("height")) or 1024,
            image_url=params.get("image_url") or None,
            seed=whole_number(params.get("seed")),
            enhance=flag("enhance"),
            safe=flag("safe"),
            private=flag("private"),
            nologo=flag("nologo"),
        )
    except InvalidRequestError:
        pass
    try:
        return GenerationRequest(prompt)
    except InvalidRequestError:
        return GenerationRequest("(unknown prompt)")


def _no_userinfo(url: str | None) -> str | None:
    return strip_userinfo(url) if url else None
