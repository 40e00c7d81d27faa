"""An ipywidgets ``Image`` that says how its picture was made, in the saved widget state.

The panel's pictures are widgets, not display outputs: a saved notebook keeps them in its
widget state, where there is no output metadata. This widget carries the same description
(``provenance.provenance``) as an extra synced trait, ``miragic``, saved with the picture's
bytes. The front end's standard ``ImageModel`` keeps unknown state keys, so no JavaScript is
needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as widgets
from traitlets import Dict

from miragic_nb._core.provenance import provenance

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage


class DescribedImage(widgets.Image):  # type: ignore[misc]
    """``widgets.Image`` plus ``miragic``: how the picture shown was made (empty until then)."""

    miragic = Dict().tag(sync=True)

    def describe(self, image: GeneratedImage) -> None:
        self.miragic = provenance(image.metadata)
