"""The panel's results: the selected one drawn large with its actions, and the gallery of cards.

Each ``ResultCard`` is a thumbnail, a caption and three actions (show it, use it as input, save
it); ``SelectedResult`` draws the chosen result from the server's own bytes, not a re-encode.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import ipywidgets as widgets
from PIL import Image

from miragic_nb._panel.style import MUTED_STYLE, excerpt
from miragic_nb._views.described_image import DescribedImage

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage

#: Widest the selected result is drawn, in CSS pixels (the file keeps its full size).
RESULT_PX = 512
#: Longest side of a gallery thumbnail, in pixels.
THUMBNAIL_PX = 160

#: What a result's action does when its button is pressed.
ResultAction = Callable[["GeneratedImage"], None]


class ResultCard(widgets.VBox):  # type: ignore[misc]
    """One result in the gallery: a thumbnail, a caption and its actions."""

    def __init__(self, image: GeneratedImage) -> None:
        self.result = image
        self.thumbnail = DescribedImage(
            value=thumbnail_jpeg(image),
            format="jpeg",
            layout=widgets.Layout(max_width=f"{THUMBNAIL_PX}px", height="auto"),
        )
        self.thumbnail.describe(image)
        meta = image.metadata
        prompt = str(meta.get("prompt", ""))
        self.caption = widgets.HTML(
            f"<div style='line-height: 1.3' title='{html.escape(prompt, quote=True)}'>"
            f"{html.escape(excerpt(prompt, 40))}<br>"
            f"<small style='{MUTED_STYLE}'>{html.escape(short_caption(image))}</small></div>",
            layout=widgets.Layout(width=f"{THUMBNAIL_PX}px"),
        )
        # Icons with tooltips: three labelled buttons do not fit under a thumbnail.
        self.select_button = _card_button("eye", "Show this result above")
        self.use_button = _card_button(
            "arrow-right",
            "Use as input: switch to kontext with this result's URL as the input image",
        )
        self.save_button = _card_button(
            "download", "Save the original file, with the prompt and parameters embedded"
        )
        super().__init__(
            children=[
                self.thumbnail,
                self.caption,
                widgets.HBox(
                    [self.select_button, self.use_button, self.save_button],
                    layout=widgets.Layout(width=f"{THUMBNAIL_PX}px"),
                ),
            ],
            layout=widgets.Layout(margin="4px", padding="4px", border="1px solid transparent"),
        )

    def set_selected(self, selected: bool) -> None:
        selected_border = "2px solid var(--jp-brand-color1, #1976d2)"
        self.layout.border = selected_border if selected else "1px solid transparent"

    def __repr__(self) -> str:
        return f"<ResultCard {short_caption(self.result)}>"


class Gallery(widgets.HBox):  # type: ignore[misc]
    """Every result's card, newest first, wrapping onto as many rows as it needs."""

    def __init__(self) -> None:
        self.cards: list[ResultCard] = []
        super().__init__(layout=widgets.Layout(flex_flow="row wrap"))

    def add(
        self, image: GeneratedImage, *, select: ResultAction, use: ResultAction, save: ResultAction
    ) -> None:
        """Put ``image``'s card first; its buttons call ``select``, ``use`` and ``save``."""
        card = ResultCard(image)
        for button, action in (
            (card.select_button, select),
            (card.use_button, use),
            (card.save_button, save),
        ):
            button.on_click(lambda _, action=action: action(image))
        self.cards.insert(0, card)
        self.children = tuple(self.cards)

    def mark_selected(self, image: GeneratedImage) -> None:
        for card in self.cards:
            card.set_selected(card.result is image)


class SelectedResult(widgets.HBox):  # type: ignore[misc]
    """The selected result drawn large, its caption, Use as input, Save and where to save."""

    def __init__(self) -> None:
        self.image = DescribedImage(
            format="jpeg", layout=widgets.Layout(max_width="100%", height="auto", display="none")
        )
        self.caption = widgets.HTML()
        self.use_as_input_button = widgets.Button(
            description="Use as input",
            icon="arrow-right",
            disabled=True,
            layout=widgets.Layout(width="auto"),
            tooltip="Switch to kontext with this result's URL as the input image",
        )
        self.save_path = widgets.Text(
            placeholder="file or folder (default: miragic-<job>.<ext> here)",
            description="Save to",
            style={"description_width": "4em"},
            layout=widgets.Layout(width="100%"),
        )
        self.save_button = widgets.Button(
            description="Save",
            icon="download",
            disabled=True,
            tooltip="Write the original file, with the prompt and parameters as metadata",
        )
        super().__init__(
            [
                self.image,
                widgets.VBox(
                    [
                        self.caption,
                        widgets.HBox([self.use_as_input_button, self.save_button]),
                        self.save_path,
                    ],
                    layout=widgets.Layout(margin="0 0 0 12px", flex="1 1 16em"),
                ),
            ],
            layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"),
        )

    def show(self, image: GeneratedImage) -> None:
        self.image.format = (image.format or "jpeg").lower()
        self.image.value = image.original_bytes  # the server's bytes, not a re-encode
        self.image.describe(image)
        self.image.layout.display = None
        self.image.width = str(min(image.width, RESULT_PX))
        prompt = str(image.metadata.get("prompt", ""))
        self.caption.value = (
            f"<div style='line-height: 1.3'><b>{html.escape(prompt)}</b><br>"
            f"<small style='{MUTED_STYLE}'>{html.escape(image.caption())}</small></div>"
        )
        self.use_as_input_button.disabled = not image.metadata.get("result_url")
        self.save_button.disabled = False


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_PX) -> bytes:
    """A small JPEG of ``image`` for the gallery (made once per result)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def short_caption(image: GeneratedImage) -> str:
    meta = image.metadata
    seed = meta.get("seed")
    return f"{meta.get('model', '?')} {image.width}×{image.height}" + (
        f" · seed {seed}" if seed is not None else ""
    )


def _card_button(icon: str, tooltip: str) -> widgets.Button:
    return widgets.Button(
        icon=icon,
        tooltip=tooltip,
        layout=widgets.Layout(width="auto", flex="1 1 auto", margin="2px"),
    )
