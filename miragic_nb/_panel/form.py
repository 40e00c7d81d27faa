"""The panel's form: prompt, model, size, seed and image URL, with each field's problem beside it.

The form keeps itself consistent as the user types (a size preset follows the width and height,
the image URL field follows the model) and reads itself into a ``GenerationRequest``, checking
each field on its own so every problem shows at once, in the wording the magic and the client use.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.request import (
    IMAGE_INPUT_MODELS,
    MAX_SIDE,
    MIN_SIDE,
    MODELS,
    GenerationRequest,
)
from miragic_nb._engine.image_inputs import held_value, url_to_check
from miragic_nb._panel.style import ERROR_STYLE, MUTED_STYLE, WARN_STYLE, small

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage

#: Size presets offered next to the width and height fields ("custom" when neither matches).
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square 1:1": (1024, 1024),
    "landscape 4:3": (1152, 864),
    "portrait 3:4": (864, 1152),
    "wide 16:9": (1280, 720),
    "tall 9:16": (720, 1280),
    "small square (drafts)": (512, 512),
}
CUSTOM_SIZE = "custom"
#: The fields that can show a problem beside them.
FIELDS = ("prompt", "model", "size", "seed", "image_url")


class PanelForm(widgets.VBox):  # type: ignore[misc]
    """The request's fields, laid out one row each, with an error line per field."""

    def __init__(self) -> None:
        self._input_image: GeneratedImage | None = None
        self._syncing_size = False
        label = {"description_width": "7em"}
        self.prompt = widgets.Textarea(
            placeholder="Describe the picture, e.g. A lighthouse on a cliff at dusk",
            description="Prompt",
            rows=3,
            style=label,
            layout=widgets.Layout(width="100%"),
        )
        self.model = widgets.Dropdown(
            options=[
                (f"{name} — {_short_description(text)}", name) for name, text in MODELS.items()
            ],
            value="flux",
            description="Model",
            style=label,
            layout=widgets.Layout(width="27em"),
        )
        self.model_help = widgets.HTML()
        self.size_preset = widgets.Dropdown(
            options=[
                *(f"{name} · {w}×{h}" for name, (w, h) in SIZE_PRESETS.items()),
                CUSTOM_SIZE,
            ],
            description="Size",
            style=label,
            layout=widgets.Layout(width="auto"),
        )
        self.width = _side_field("Width")
        self.height = _side_field("Height")
        self.seed = widgets.Text(
            placeholder="random",
            description="Seed",
            tooltip="blank: a new random picture each time; a number repeats a result",
            style=label,
        )
        self.image_url = widgets.Text(
            placeholder="https://…, a job id, a file or {img} (kontext only)",
            description="Image URL",
            style=label,
            layout=widgets.Layout(width="60%"),
        )
        self.image_url_hint = widgets.HTML()
        #: Per-field error messages, shown next to the field; keys: ``FIELDS``.
        self.errors: dict[str, widgets.HTML] = {name: widgets.HTML() for name in FIELDS}

        self.model.observe(self._on_model_change, names="value")
        self.image_url.observe(self._on_image_url_change, names="value")
        self.size_preset.observe(self._on_preset_change, names="value")
        self.width.observe(self._on_side_change, names="value")
        self.height.observe(self._on_side_change, names="value")
        for name, control in (("prompt", self.prompt), ("seed", self.seed)):
            control.observe(self._clear_error_of(name), names="value")

        super().__init__(
            children=[
                self.prompt,
                self.errors["prompt"],
                widgets.HBox([self.model, self.model_help]),
                self.errors["model"],
                widgets.HBox([self.size_preset, self.width, self.height]),
                self.errors["size"],
                widgets.HBox([self.seed, self.errors["seed"]]),
                widgets.HBox([self.image_url, self.image_url_hint]),
                self.errors["image_url"],
            ]
        )
        self._on_model_change()

    def read(self) -> GenerationRequest | dict[str, str]:
        """The request the form describes, else each field's problem (field name → message)."""
        prompt = self.prompt.value
        model = self.model.value
        url = self.image_url.value.strip() or None
        checked_url = url_to_check(url)
        seed: Any = self.seed.value.strip() or None  # digits are accepted and converted
        checks: dict[str, Callable[[], object]] = {
            "prompt": lambda: GenerationRequest(prompt),
            "model": lambda: GenerationRequest("-", model=model),
            "size": lambda: GenerationRequest(
                "-", width=self.width.value, height=self.height.value
            ),
            "seed": lambda: GenerationRequest("-", seed=seed),
            "image_url": lambda: GenerationRequest("-", model=model, image_url=checked_url),
        }
        problems: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
            except InvalidRequestError as exc:
                problems[name] = exc.message
        if problems:
            return problems
        return GenerationRequest(
            prompt,
            model=model,
            width=self.width.value,
            height=self.height.value,
            image_url=checked_url,
            seed=seed,
        )

    def show_problems(self, problems: dict[str, str]) -> None:
        """Each field's problem beside it; the other fields' lines are cleared."""
        for name, box in self.errors.items():
            message = problems.get(name)
            box.value = (
                f"<span style='{ERROR_STYLE}'>⚠ {html.escape(message)}</span>" if message else ""
            )

    def use_as_input(self, image: GeneratedImage, url: str) -> None:
        """Switch to ``kontext`` with ``url`` (``image``'s result URL) as the input image."""
        self.model.value = "kontext"
        self.image_url.value = url
        # Kept so Generate sends a fresh URL if this one has expired by then.
        self._input_image = image

    def image_input(self) -> object:
        """What the Image URL field names: the result "Use as input" put there, a variable of
        the notebook (``img`` or ``{img}``), else the text (a URL, job id or file)."""
        text = self.image_url.value.strip()
        held = self._input_image
        if held is not None and text == held.metadata.get("result_url"):
            return held
        from IPython import get_ipython

        shell = get_ipython()
        return held_value(text, shell.user_ns if shell is not None else {})

    # -- keeping the form consistent ----------------------------------------------------------

    def _on_model_change(self, change: object = None) -> None:
        model = self.model.value
        text = MODELS[model].replace("--image-url", "the image URL")
        self.model_help.value = small(MUTED_STYLE, text)
        self._on_image_url_change()

    def _on_image_url_change(self, change: object = None) -> None:
        takes_image = self.model.value in IMAGE_INPUT_MODELS
        has_url = bool(self.image_url.value.strip())
        # Disabled unless kontext is chosen; a URL left over from kontext stays editable so it
        # can be cleared, and is flagged.
        self.image_url.disabled = not takes_image and not has_url
        if takes_image:
            hint, style = "the picture to edit (image-to-image)", MUTED_STYLE
        elif has_url:
            hint = (
                f"⚠ only kontext takes an input image: choose kontext or clear this "
                f"field ({self.model.value} would refuse it)"
            )
            style = WARN_STYLE
        else:
            hint, style = "only for kontext (image-to-image)", MUTED_STYLE
        self.image_url_hint.value = small(style, hint)
        self.errors["image_url"].value = ""
        self.errors["model"].value = ""

    def _on_preset_change(self, change: object = None) -> None:
        size = _preset_size(self.size_preset.value)
        if size is None or self._syncing_size:
            return
        self._syncing_size = True
        try:
            self.width.value, self.height.value = size
        finally:
            self._syncing_size = False
        self.errors["size"].value = ""

    def _on_side_change(self, change: object = None) -> None:
        self.errors["size"].value = ""
        if self._syncing_size:
            return
        size = (self.width.value, self.height.value)
        matching = [o for o in self.size_preset.options if _preset_size(o) == size]
        self._syncing_size = True
        try:
            self.size_preset.value = matching[0] if matching else CUSTOM_SIZE
        finally:
            self._syncing_size = False

    def _clear_error_of(self, name: str) -> Callable[[object], None]:
        def clear(change: object) -> None:
            self.errors[name].value = ""

        return clear


def _side_field(description: str) -> widgets.BoundedIntText:
    """The width or the height field: 1024 to start, in steps of 64 within the API's bounds."""
    return widgets.BoundedIntText(
        value=1024,
        min=MIN_SIDE,
        max=MAX_SIDE,
        step=64,
        description=description,
        style={"description_width": "3.5em"},
        layout=widgets.Layout(width="11em"),
        tooltip=f"{MIN_SIDE} to {MAX_SIDE} px",
    )


def _preset_size(option: str) -> tuple[int, int] | None:
    name = option.split(" · ", 1)[0]
    return SIZE_PRESETS.get(name)


def _short_description(text: str) -> str:
    """``"fast drafts: lower latency, ..."`` → ``"fast drafts"`` for the dropdown's labels."""
    for separator in (";", ":", " and "):
        text = text.split(separator, 1)[0]
    return text.strip()
