"""GenerationRequest: every validation rule, and the form fields it sends."""

from __future__ import annotations

import pytest

from miragic_nb import InvalidRequestError
from miragic_nb._core.request import MODELS, GenerationRequest


def test_defaults_and_form_fields() -> None:
    request = GenerationRequest("  A lighthouse at dusk \n")
    assert request.prompt == "A lighthouse at dusk"
    assert request.form_fields() == {
        "prompt": "A lighthouse at dusk",
        "model": "flux",
        "width": "1024",
        "height": "1024",
    }


def test_optional_fields_are_sent_only_when_set() -> None:
    request = GenerationRequest(
        "x",
        model="kontext",
        image_url="https://example.com/a.jpg",
        seed=0,
        safe=True,
        nologo=False,
    )
    fields = request.form_fields()
    assert fields["image_url"] == "https://example.com/a.jpg"
    assert fields["seed"] == "0"
    assert fields["safe"] == "true"
    assert fields["nologo"] == "false"
    assert "enhance" not in fields
    assert "private" not in fields


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", None, 42])
def test_empty_or_non_text_prompt(prompt: object) -> None:
    with pytest.raises(InvalidRequestError, match="prompt must be a non-empty string"):
        GenerationRequest(prompt)  # type: ignore[arg-type]


def test_unknown_model_lists_the_four() -> None:
    with pytest.raises(InvalidRequestError) as info:
        GenerationRequest("x", model="dalle")
    message = str(info.value)
    assert "'dalle'" in message
    for name in MODELS:
        assert name in message
    assert info.value.field == "model"
    assert isinstance(info.value, ValueError)


def test_model_is_case_insensitive() -> None:
    assert GenerationRequest("x", model=" Turbo ").model == "turbo"


@pytest.mark.parametrize("side", ["width", "height"])
@pytest.mark.parametrize("value", [255, 2049, 0, -1, 10_000])
def test_size_out_of_range_states_the_range(side: str, value: int) -> None:
    with pytest.raises(InvalidRequestError, match="256 to 2048") as info:
        GenerationRequest("x", **{side: value})
    assert info.value.field == side


@pytest.mark.parametrize("value", [512.5, "wide", None, True, [512]])
def test_size_not_an_integer(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="must be an integer from 256 to 2048"):
        GenerationRequest("x", width=value)  # type: ignore[arg-type]


def test_size_bounds_are_inclusive_and_numeric_strings_accepted() -> None:
    request = GenerationRequest("x", width=256, height="2048")  # type: ignore[arg-type]
    assert (request.width, request.height) == (256, 2048)


@pytest.mark.parametrize("model", ["flux", "turbo", "gptimage"])
def test_image_url_needs_kontext(model: str) -> None:
    with pytest.raises(InvalidRequestError, match="only with model 'kontext'"):
        GenerationRequest("x", model=model, image_url="https://example.com/a.jpg")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "example.com/a.jpg", "https://", ""]
)
def test_image_url_must_be_http(url: str) -> None:
    with pytest.raises(InvalidRequestError, match="must be an http"):
        GenerationRequest("x", model="kontext", image_url=url)


@pytest.mark.parametrize("seed", [-1, "-3", 1.5, "abc", True])
def test_seed_must_be_non_negative_integer(seed: object) -> None:
    with pytest.raises(InvalidRequestError, match="seed must be a non-negative integer"):
        GenerationRequest("x", seed=seed)  # type: ignore[arg-type]


def test_flags_must_be_booleans() -> None:
    with pytest.raises(InvalidRequestError, match="enhance must be True, False or None"):
        GenerationRequest("x", enhance="yes")  # type: ignore[arg-type]
