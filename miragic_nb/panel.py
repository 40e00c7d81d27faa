"""The ipywidgets panel: a small image-generation app inside a notebook cell.

``Panel()`` is a ``VBox`` of standard ipywidgets 8 controls, so it renders in JupyterLab,
Notebook 7, VS Code and Colab without a front-end build. Its public attributes are the
controls, so a notebook or a test can script it::

    panel = Panel()
    panel.prompt.value = "A lighthouse on a cliff at dusk"
    panel.generate_button.click()
    await panel.wait()
    panel.image            # the selected result, a PIL.Image.Image

Generate never blocks the kernel: each job is an asyncio task on the kernel's loop whose
blocking HTTP calls run on the engine's worker threads (``engine.py``), so every widget update
happens on the kernel's thread. Without a running loop (a plain script) Generate runs the job
to the end before returning.

The API key never enters a widget trait: saved widget state would write it into the
``.ipynb``. The panel holds only the client object, which keeps the key to itself.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
from PIL import Image

from .described_image import DescribedImage
from .engine import CancelledBeforeStart, JobHandle, JobState, Workers, on_loop
from .errors import InvalidRequestError, MiragicError, MissingAPIKeyError
from .filenames import safe_stem
from .progress import JobProgress, WidgetProgress, make_progress
from .request import IMAGE_INPUT_MODELS, MAX_SIDE, MIN_SIDE, MODELS, GenerationRequest

if TYPE_CHECKING:
    from .builtin import Settings
    from .client import Client
    from .images import GeneratedImage

log = logging.getLogger("miragic_nb")

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
#: Widest the selected result is drawn, in CSS pixels (the file keeps its full size).
RESULT_PX = 512
#: Longest side of a gallery thumbnail, in pixels.
THUMBNAIL_PX = 160
#: Seconds between redraws of a running job's elapsed time.
TICK_S = 1.0
#: Finished progress rows kept on screen (running ones always stay).
FINISHED_ROWS_SHOWN = 4
EMULATOR_NOTICE = (
    "offline emulator — placeholder images; <code>%miragic login</code> to use Miragic"
)
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
_ERROR_STYLE = "color: var(--jp-error-color1, #c62828)"
_WARN_STYLE = "color: var(--jp-warn-color1, #e65100)"
_MUTED_STYLE = "color: var(--jp-ui-font-color2, #757575)"
_OK_STYLE = "color: var(--jp-success-color1, #2e7d32)"


@dataclass(eq=False)
class PanelJob:
    """One press of Generate as the panel shows it: its progress row over the engine's handle.

    ``state`` is the handle's ``JobState``: ``queued`` → ``submitting`` → ``pending`` →
    ``downloading`` → ``completed``, or ``failed`` / ``cancelled`` / ``timed_out``. A cancelled
    or failed job keeps its ``job_id`` (when the server gave one), so ``%miragic resume
    <job_id>`` can still fetch a result that was paid for.
    """

    handle: JobHandle
    progress: JobProgress
    message: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    row: Any = field(default=None, repr=False)
    cancel_button: Any = field(default=None, repr=False)

    @property
    def request(self) -> GenerationRequest:
        assert self.handle.request is not None
        return self.handle.request

    @property
    def state(self) -> JobState:
        return self.handle.state

    @property
    def job_id(self) -> str | None:
        return self.handle.id

    @property
    def image(self) -> GeneratedImage | None:
        return self.handle.result

    @property
    def is_active(self) -> bool:
        return self.handle.is_active


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
            f"{html.escape(_excerpt(prompt, 40))}<br>"
            f"<small style='{_MUTED_STYLE}'>{html.escape(_short_caption(image))}</small></div>",
            layout=widgets.Layout(width=f"{THUMBNAIL_PX}px"),
        )
        # Icons with tooltips: three labelled buttons do not fit under a thumbnail.
        self.select_button = widgets.Button(
            icon="eye", tooltip="Show this result above", layout=_card_button()
        )
        self.use_button = widgets.Button(
            icon="arrow-right",
            tooltip="Use as input: switch to kontext with this result's URL as the input image",
            layout=_card_button(),
        )
        self.save_button = widgets.Button(
            icon="download",
            tooltip="Save the original file, with the prompt and parameters embedded",
            layout=_card_button(),
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
        return f"<ResultCard {_short_caption(self.result)}>"


class Panel(widgets.VBox):  # type: ignore[misc]
    """A form for the Miragic image API that shows progress, results and a gallery.

    ``client`` defaults to the one ``%%miragic`` would use, from the same ``settings``
    (default: the loaded extension's ``%config Miragic.*``): the configured key and base URL,
    else the built-in offline emulator (and the panel says so). Without a client the choice is
    made again at every Generate, so ``%miragic login`` after creating the panel takes effect;
    nothing is started before the first Generate.
    """

    def __init__(self, client: Client | None = None, *, settings: Settings | None = None) -> None:
        self._fixed_client = client
        self._settings = settings
        self._workers = Workers()
        self._jobs: list[PanelJob] = []
        self._results: list[GeneratedImage] = []
        self._cards: list[ResultCard] = []
        self._selected: GeneratedImage | None = None
        self._syncing_size = False
        self.is_emulator = False

        label = {"description_width": "7em"}
        self.header = widgets.HTML()
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
        side = {"min": MIN_SIDE, "max": MAX_SIDE, "step": 64}
        self.width = widgets.BoundedIntText(
            value=1024,
            description="Width",
            style={"description_width": "3.5em"},
            layout=widgets.Layout(width="11em"),
            tooltip=f"{MIN_SIDE} to {MAX_SIDE} px",
            **side,
        )
        self.height = widgets.BoundedIntText(
            value=1024,
            description="Height",
            style={"description_width": "3.5em"},
            layout=widgets.Layout(width="11em"),
            tooltip=f"{MIN_SIDE} to {MAX_SIDE} px",
            **side,
        )
        self.seed = widgets.Text(
            placeholder="random",
            description="Seed",
            tooltip="blank: a new random picture each time; a number repeats a result",
            style=label,
        )
        self.image_url = widgets.Text(
            placeholder="https://… (kontext only)",
            description="Image URL",
            style=label,
            layout=widgets.Layout(width="60%"),
        )
        self.image_url_hint = widgets.HTML()
        #: Per-field error messages, shown next to the field; keys: prompt, size, seed,
        #: image_url, model.
        self.errors: dict[str, widgets.HTML] = {
            name: widgets.HTML() for name in ("prompt", "model", "size", "seed", "image_url")
        }
        self.generate_button = widgets.Button(
            description="Generate",
            button_style="primary",
            icon="play",
            tooltip="Start a job; the kernel stays free while it runs",
        )
        self.cancel_button = widgets.Button(
            description="Cancel",
            button_style="warning",
            icon="stop",
            disabled=True,
            tooltip="Stop polling every running job of this panel",
        )
        self.status = widgets.HTML()
        self.progress_area = widgets.VBox()
        self.result_image = DescribedImage(
            format="jpeg", layout=widgets.Layout(max_width="100%", height="auto", display="none")
        )
        self.result_caption = widgets.HTML()
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
        self.gallery = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))

        self.generate_button.on_click(lambda _: self.generate())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.use_as_input_button.on_click(lambda _: self._act(self.use_as_input))
        self.save_button.on_click(lambda _: self._act(self.save))
        self.model.observe(self._on_model_change, names="value")
        self.image_url.observe(self._on_image_url_change, names="value")
        self.size_preset.observe(self._on_preset_change, names="value")
        self.width.observe(self._on_side_change, names="value")
        self.height.observe(self._on_side_change, names="value")
        for name, control in (("prompt", self.prompt), ("seed", self.seed)):
            control.observe(self._clear_error_of(name), names="value")

        super().__init__(
            children=[
                self.header,
                self.prompt,
                self.errors["prompt"],
                widgets.HBox([self.model, self.model_help]),
                self.errors["model"],
                widgets.HBox([self.size_preset, self.width, self.height]),
                self.errors["size"],
                widgets.HBox([self.seed, self.errors["seed"]]),
                widgets.HBox([self.image_url, self.image_url_hint]),
                self.errors["image_url"],
                widgets.HBox([self.generate_button, self.cancel_button]),
                self.status,
                self.progress_area,
                widgets.HBox(
                    [
                        self.result_image,
                        widgets.VBox(
                            [
                                self.result_caption,
                                widgets.HBox([self.use_as_input_button, self.save_button]),
                                self.save_path,
                            ],
                            layout=widgets.Layout(margin="0 0 0 12px", flex="1 1 16em"),
                        ),
                    ],
                    layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"),
                ),
                self.gallery,
            ],
            layout=widgets.Layout(max_width="980px"),
        )
        self._on_model_change()
        self._describe_client()

    # -- what the panel has made -----------------------------------------------------------

    @property
    def image(self) -> GeneratedImage | None:
        """The selected result (the newest unless a thumbnail was chosen), or None."""
        return self._selected

    @property
    def images(self) -> list[GeneratedImage]:
        """This panel's results, newest first."""
        return list(self._results)

    @property
    def history(self) -> list[PanelJob]:
        """Every job this panel started, newest first, including cancelled and failed ones."""
        return list(self._jobs)

    @property
    def progress(self) -> JobProgress | None:
        """The progress of the most recently started job (its ``.widget`` is the row)."""
        return self._jobs[0].progress if self._jobs else None

    @property
    def running(self) -> list[PanelJob]:
        """The jobs still queued, sending or being polled."""
        return [job for job in self._jobs if job.is_active]

    @property
    def cards(self) -> list[ResultCard]:
        """The gallery's result cards, newest first."""
        return list(self._cards)

    # -- actions ---------------------------------------------------------------------------

    def generate(self) -> PanelJob | None:
        """What the Generate button does: validate, then start a job (None if refused).

        Inside a running event loop (a notebook) the job runs as a task and this returns at
        once; without one (a plain script) it returns when the job has ended.
        """
        request = self._request_from_fields()
        if request is None:
            return None
        try:
            client = self._client()
            if not client.has_api_key:
                raise MissingAPIKeyError(
                    "this panel's client has no API key; nothing was sent. Pass "
                    "Client(api_key=...), or use Panel() to pick up MIRAGIC_API_KEY, "
                    "`%miragic login` or the offline emulator",
                    field="api_key",
                )
        except MiragicError as exc:
            self._show_status(_ERROR_STYLE, "✗ " + html.escape(_one_line(exc)))
            return None
        label = _excerpt(request.prompt, 28)
        progress = make_progress(label, widgets=True)
        assert isinstance(progress, WidgetProgress)  # ipywidgets is imported above
        job = PanelJob(handle=JobHandle(request), progress=progress)
        job.cancel_button = widgets.Button(
            description="Cancel",
            tooltip="Stop polling this job",
            layout=widgets.Layout(width="auto"),
        )
        job.cancel_button.on_click(lambda _: self.cancel(job))
        job.row = widgets.HBox([progress.widget, job.cancel_button])
        self._jobs.insert(0, job)
        self._show_rows()
        self._show_status(_MUTED_STYLE, f"Sending {html.escape(_excerpt(request.prompt, 60))}…")
        self._refresh_buttons()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self._run(client, job))  # a plain script: run to the end
        else:
            job.task = loop.create_task(self._run(client, job))
        return job

    def cancel(self, job: PanelJob | None = None) -> None:
        """Stop polling ``job`` (default: every running job). The server may still finish it."""
        targets = [job] if job is not None else self.running
        for target in targets:
            if not target.is_active:
                continue
            was_sent = target.handle.cancel()
            if target.job_id:
                target.message = _cancel_message(target.job_id)
            elif was_sent:
                target.message = (
                    "Cancelled while the job was being created; its id will show here if the "
                    "server made it (it may then still finish and use a credit)."
                )
            else:
                target.message = "Cancelled before anything was sent; no credit used."
            target.progress.fail("cancelled")
            self._show_status(_WARN_STYLE, html.escape(target.message))
            if target.task is not None:
                target.task.cancel()
        self._finish_row_changes()

    def select(self, image: GeneratedImage) -> None:
        """Show ``image`` in the result area and make it ``panel.image``."""
        self._selected = image
        self.result_image.format = (image.format or "jpeg").lower()
        self.result_image.value = image.original_bytes  # the server's bytes, not a re-encode
        self.result_image.describe(image)
        self.result_image.layout.display = None
        self.result_image.width = str(min(image.width, RESULT_PX))
        prompt = str(image.metadata.get("prompt", ""))
        self.result_caption.value = (
            f"<div style='line-height: 1.3'><b>{html.escape(prompt)}</b><br>"
            f"<small style='{_MUTED_STYLE}'>{html.escape(image.caption())}</small></div>"
        )
        self.use_as_input_button.disabled = not image.metadata.get("result_url")
        self.save_button.disabled = False
        for card in self._cards:
            card.set_selected(card.result is image)

    def use_as_input(self, image: GeneratedImage | None = None) -> None:
        """Switch to ``kontext`` with ``image``'s result URL (default: the selected result)."""
        image = image if image is not None else self._selected
        if image is None:
            raise InvalidRequestError("there is no result to use as input yet", field="image_url")
        url = image.metadata.get("result_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequestError(
                "this result has no URL the API could fetch it from", field="image_url"
            )
        self.model.value = "kontext"
        self.image_url.value = url
        self._show_status(
            _MUTED_STYLE,
            "Model set to kontext with the result as input image; edit the prompt to say what "
            "to change, then Generate.",
        )

    def save(self, image: GeneratedImage | None = None, path: str | Path | None = None) -> Path:
        """Write ``image``'s original bytes (default: the selected result) and return the path.

        ``path`` (default: the "Save to" field) may be a file or an existing folder; blank
        means ``miragic-<job id>.<ext>`` in the current directory. The prompt and parameters
        go into the file itself (a JPEG comment or PNG text chunk, as the history stores them);
        for a format without a metadata slot they go into a ``.json`` file beside it.
        """
        image = image if image is not None else self._selected
        if image is None:
            raise InvalidRequestError("there is no result to save yet")
        target = _save_path(image, path if path is not None else self.save_path.value)
        meta = _file_metadata(image)
        data, embedded = _with_metadata(image.original_bytes, meta)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        where = "embedded in the file"
        if not embedded:
            sidecar = target.with_name(target.name + ".json")
            sidecar.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
            where = f"in {sidecar.name}"
        self._show_status(
            _OK_STYLE,
            f"Saved {html.escape(str(target))} (prompt and parameters {html.escape(where)}).",
        )
        return target

    async def wait(self) -> None:
        """Wait until every job this panel started has ended and no worker is still polling."""
        while pending := [j.task for j in self._jobs if j.task is not None and not j.task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._workers.settle()

    def close(self) -> None:
        """Cancel running jobs, stop the worker threads and close every widget of the panel."""
        self.cancel()
        self._workers.shutdown()
        # Widget.close() leaves children, layouts and styles open (and registered with the
        # kernel): close everything the panel made.
        roots = [self, *self._cards, *(job.row for job in self._jobs if job.row is not None)]
        for widget in _widget_tree(roots):
            if widget is not self:
                widget.close()
        super().close()

    def __repr__(self) -> str:
        where = "built-in emulator" if self.is_emulator else "Miragic"
        return (
            f"<miragic_nb.Panel ({where}): {len(self._results)} results, "
            f"{len(self.running)} running>"
        )

    # -- running a job (on the loop's thread) -------------------------------------------------

    async def _run(self, client: Client, job: PanelJob) -> None:
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._tick(job))
        job.handle.subscribe(on_loop(loop, lambda handle: self._on_change(job)))
        client.engine.start(job.handle, workers=self._workers)
        try:
            image = await job.handle.wait_async()
        except asyncio.CancelledError:
            # We cancelled it (Cancel, or a script's loop ending); the worker stops on its own.
            if job.handle.is_active:
                job.handle.cancel()
                job.progress.fail("cancelled")
        except CancelledBeforeStart:
            pass  # cancel() has said so already
        except Exception as exc:
            if job.state is JobState.CANCELLED:
                return  # the stopped wait ends with an error; the cancel message says it all
            job.message = _one_line(exc)
            job.progress.fail(_excerpt(job.message, 80))
            self._show_status(_ERROR_STYLE, "✗ " + html.escape(job.message))
            if not isinstance(exc, MiragicError):
                log.exception("the panel's job ended with an unexpected error")
        else:
            if job.state is JobState.CANCELLED:
                return  # finished as Cancel was pressed; the user asked not to see it
            self._on_result(job, image)
        finally:
            ticker.cancel()
            self._finish_row_changes()

    async def _tick(self, job: PanelJob) -> None:
        """Keep the elapsed seconds moving between status reads (which may be seconds apart)."""
        while job.is_active:
            await asyncio.sleep(TICK_S)
            if job.state in (JobState.PENDING, JobState.DOWNLOADING):
                job.progress.set_label(job.progress.label)  # re-renders the row

    def _on_change(self, job: PanelJob) -> None:
        """A step of ``job`` (on the loop's thread): its id, a status read, a late id."""
        status = job.handle.job
        if job.state is JobState.CANCELLED:
            if job.job_id and not job.message.startswith("Cancelled: stopped"):
                job.message = _cancel_message(job.job_id)
                self._show_status(_WARN_STYLE, html.escape(job.message))
            return
        if status is None or not job.is_active:
            return
        created = job.progress.job_id is None
        job.progress.set_state(job.state, percent=job.handle.progress, job_id=job.job_id)
        if created:
            self._show_status(
                _MUTED_STYLE, f"Job {html.escape(status.id)} created; waiting for the result…"
            )
        else:
            self._show_status(
                _MUTED_STYLE, html.escape(f"{job.progress.status} · {job.progress.detail_text()}")
            )

    def _on_result(self, job: PanelJob, image: GeneratedImage) -> None:
        elapsed = image.metadata.get("elapsed_s")
        took = f" · {elapsed:.1f}s" if isinstance(elapsed, (int, float)) else ""
        job.progress.succeed(f"{image.width}×{image.height}{took}")
        self._results.insert(0, image)
        card = ResultCard(image)
        card.select_button.on_click(lambda _: self.select(image))
        card.use_button.on_click(lambda _: self._act(lambda: self.use_as_input(image)))
        card.save_button.on_click(lambda _: self._act(lambda: self.save(image)))
        self._cards.insert(0, card)
        self.gallery.children = tuple(self._cards)
        self.select(image)
        self._show_status(_OK_STYLE, "✓ Done: " + html.escape(image.caption()))

    # -- form ↔ request ----------------------------------------------------------------------

    def _request_from_fields(self) -> GenerationRequest | None:
        """The request the form describes, or None after showing what is wrong beside each field.

        Each field is checked on its own by ``GenerationRequest`` itself, so every problem is
        shown at once, with the same wording the magic and the client use.
        """
        prompt = self.prompt.value
        model = self.model.value
        url = self.image_url.value.strip() or None
        seed: Any = self.seed.value.strip() or None  # digits are accepted and converted
        checks: dict[str, Callable[[], object]] = {
            "prompt": lambda: GenerationRequest(prompt),
            "model": lambda: GenerationRequest("-", model=model),
            "size": lambda: GenerationRequest(
                "-", width=self.width.value, height=self.height.value
            ),
            "seed": lambda: GenerationRequest("-", seed=seed),
            "image_url": lambda: GenerationRequest("-", model=model, image_url=url),
        }
        problems: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
            except InvalidRequestError as exc:
                problems[name] = exc.message
        for name, box in self.errors.items():
            message = problems.get(name)
            box.value = (
                f"<span style='{_ERROR_STYLE}'>⚠ {html.escape(message)}</span>" if message else ""
            )
        if problems:
            self._show_status(
                _ERROR_STYLE,
                "Nothing was sent: fix the field"
                + ("s" if len(problems) > 1 else "")
                + " marked ⚠.",
            )
            return None
        return GenerationRequest(
            prompt,
            model=model,
            width=self.width.value,
            height=self.height.value,
            image_url=url,
            seed=seed,
        )

    def _client(self) -> Client:
        if self._fixed_client is not None:
            return self._fixed_client
        from .builtin import resolve

        resolved = resolve(self._current_settings())
        if resolved.is_emulator != self.is_emulator:
            self.is_emulator = resolved.is_emulator
            self._describe_client()
        return resolved.client

    def _current_settings(self) -> Settings:
        """The settings given, else the loaded extension's (read at every Generate)."""
        from .builtin import Settings

        if self._settings is not None:
            return self._settings
        from .magic import loaded_settings

        return loaded_settings() or Settings()

    def _describe_client(self) -> None:
        """The header: where jobs go. Decided without starting anything (no emulator)."""
        if self._fixed_client is not None:
            where = html.escape(self._fixed_client.base_url)
            self.header.value = f"<b>Miragic</b> <small style='{_MUTED_STYLE}'>{where}</small>"
            return
        from .builtin import uses_emulator

        try:
            self.is_emulator = uses_emulator(self._current_settings())
        except MiragicError as exc:
            self._show_status(_ERROR_STYLE, "✗ " + html.escape(_one_line(exc)))
        notice = (
            f" <small style='{_WARN_STYLE}'>{EMULATOR_NOTICE}</small>" if self.is_emulator else ""
        )
        self.header.value = f"<b>Miragic</b>{notice}"

    # -- keeping the form consistent ----------------------------------------------------------

    def _on_model_change(self, change: object = None) -> None:
        model = self.model.value
        text = MODELS[model].replace("--image-url", "the image URL")
        self.model_help.value = f"<small style='{_MUTED_STYLE}'>{html.escape(text)}</small>"
        self._on_image_url_change()

    def _on_image_url_change(self, change: object = None) -> None:
        takes_image = self.model.value in IMAGE_INPUT_MODELS
        has_url = bool(self.image_url.value.strip())
        # Disabled unless kontext is chosen; a URL left over from kontext stays editable so it
        # can be cleared, and is flagged.
        self.image_url.disabled = not takes_image and not has_url
        if takes_image:
            hint, style = "the picture to edit (image-to-image)", _MUTED_STYLE
        elif has_url:
            hint = (
                f"⚠ only kontext takes an input image: choose kontext or clear this "
                f"field ({self.model.value} would refuse it)"
            )
            style = _WARN_STYLE
        else:
            hint, style = "only for kontext (image-to-image)", _MUTED_STYLE
        self.image_url_hint.value = f"<small style='{style}'>{html.escape(hint)}</small>"
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

    # -- small view helpers -------------------------------------------------------------------

    def _show_status(self, style: str, escaped_html: str) -> None:
        self.status.value = f"<span style='{style}'>{escaped_html}</span>"

    def _show_rows(self) -> None:
        running = [job.row for job in self._jobs if job.is_active]
        finished = [job.row for job in self._jobs if not job.is_active][:FINISHED_ROWS_SHOWN]
        self.progress_area.children = tuple(running + finished)

    def _finish_row_changes(self) -> None:
        for job in self._jobs:
            if not job.is_active and job.cancel_button is not None:
                job.cancel_button.layout.display = "none"
        self._show_rows()
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        self.cancel_button.disabled = not self.running

    def _act(self, action: Callable[[], object]) -> None:
        """Run a button's action; a refusal becomes the status line instead of a traceback."""
        try:
            action()
        except (MiragicError, OSError) as exc:
            self._show_status(_ERROR_STYLE, "✗ " + html.escape(_one_line(exc)))


# -- helpers ------------------------------------------------------------------------------------


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_PX) -> bytes:
    """A small JPEG of ``image`` for the gallery (made once per result)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def _widget_tree(roots: list[widgets.Widget]) -> list[widgets.Widget]:
    """Every widget reachable from ``roots`` through trait values (children, layout, style)."""
    found: dict[int, widgets.Widget] = {}
    stack = list(roots)
    while stack:
        widget = stack.pop()
        if id(widget) in found:
            continue
        found[id(widget)] = widget
        for value in widget.trait_values().values():
            items = value if isinstance(value, (list, tuple)) else (value,)
            stack.extend(item for item in items if isinstance(item, widgets.Widget))
    return list(found.values())


def _card_button() -> widgets.Layout:
    return widgets.Layout(width="auto", flex="1 1 auto", margin="2px")


def _preset_size(option: str) -> tuple[int, int] | None:
    name = option.split(" · ", 1)[0]
    return SIZE_PRESETS.get(name)


def _short_description(text: str) -> str:
    """``"fast drafts: lower latency, ..."`` → ``"fast drafts"`` for the dropdown's labels."""
    for separator in (";", ":", " and "):
        text = text.split(separator, 1)[0]
    return text.strip()


def _short_caption(image: GeneratedImage) -> str:
    meta = image.metadata
    seed = meta.get("seed")
    return f"{meta.get('model', '?')} {image.width}×{image.height}" + (
        f" · seed {seed}" if seed is not None else ""
    )


def _excerpt(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _one_line(exc: BaseException) -> str:
    """An error as one short line of text (the client has already cut response bodies short).

    Markup in it is kept as text, to be escaped, not stripped: it may be what went wrong.
    """
    return _excerpt(str(exc), 240) or type(exc).__name__


def _cancel_message(job_id: str) -> str:
    return (
        f"Cancelled: stopped polling job {job_id}. The server may still finish it and charge "
        f"a credit; `%miragic resume {job_id}` fetches the result."
    )


def _save_path(image: GeneratedImage, given: str | Path) -> Path:
    extension = _EXTENSIONS.get(image.mimetype or "", "jpg")
    # The job id comes from the server: only a sanitised form may become a file name.
    job_id = safe_stem(str(image.metadata.get("job_id") or "image"))
    default_name = f"miragic-{job_id}.{extension}"
    text = str(given).strip()
    if not text:
        return Path.cwd() / default_name
    path = Path(text).expanduser()
    if path.is_dir():
        return path / default_name
    return path if path.suffix else path.with_name(f"{path.name}.{extension}")


def _file_metadata(image: GeneratedImage) -> dict[str, Any]:
    """What a saved file records about itself; not the result URL (signed and temporary)."""
    meta = image.metadata
    keys = ("job_id", "prompt", "model", "width", "height", "seed", "image_url", "options")
    saved = {key: meta.get(key) for key in keys}
    saved["base_url"] = meta.get("base_url")
    saved["created_at"] = meta.get("created_at")
    saved["generator"] = "miragic-nb"
    return saved


def _with_metadata(data: bytes, meta: dict[str, Any]) -> tuple[bytes, bool]:
    """``data`` with ``meta`` embedded the way the history embeds it; False if it could not be."""
    from .history import embed_metadata, read_embedded_metadata

    embedded = embed_metadata(data, meta)
    return embedded, read_embedded_metadata(embedded) is not None
