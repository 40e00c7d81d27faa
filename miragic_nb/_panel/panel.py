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

The panel composes its parts, one module each: the form (``panel_form.py``), the job rows
(``panel_jobs.py``), the selected result and the gallery's cards (``panel_gallery.py``) and
saving (``panel_saving.py``); it chooses the client and wires the parts' buttons to its actions.

The API key never enters a widget trait: saved widget state would write it into the
``.ipynb``. The panel holds only the client object, which keeps the key to itself.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as widgets

from miragic_nb._core.errors import InvalidRequestError, MiragicError, MissingAPIKeyError
from miragic_nb._core.states import JobState
from miragic_nb._engine.engine import Workers, on_loop
from miragic_nb._engine.group import MAGIC
from miragic_nb._panel.form import IMAGE_FIELD, SIZE_PRESETS, PanelForm, in_field_words
from miragic_nb._panel.gallery import Gallery, ResultCard, SelectedResult, thumbnail_jpeg
from miragic_nb._panel.jobs import JobRows, PanelJob, cancel_message
from miragic_nb._panel.saving import save_result
from miragic_nb._panel.style import (
    ERROR_STYLE,
    MUTED_STYLE,
    OK_STYLE,
    WARN_STYLE,
    excerpt,
    one_line,
    styled,
)
from miragic_nb._views.progress import JobProgress

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage
    from miragic_nb._core.request import GenerationRequest
    from miragic_nb.client import Client
    from miragic_nb.session import Settings

__all__ = ["EMULATOR_NOTICE", "SIZE_PRESETS", "Panel", "PanelJob", "ResultCard", "thumbnail_jpeg"]

log = logging.getLogger("miragic_nb")

EMULATOR_NOTICE = (
    "offline emulator — placeholder images; <code>%miragic login</code> to use Miragic"
)


class Panel(widgets.VBox):  # type: ignore[misc]
    """A form for the Miragic image API that shows progress, results and a gallery.

    ``client`` defaults to the one ``%%miragic`` would use, from the same ``settings``
    (default: the loaded extension's ``%config Miragic.*``): the configured key and base URL,
    else the built-in offline emulator (and the panel says so). Without a client the choice is
    made again at every Generate, so ``%miragic login`` after creating the panel takes effect;
    nothing is started before the first Generate.

    ``save_dir`` confines Save to one folder (the app's): the "Save to" field is switched off
    and its value never read, since a widget's value is whatever the front end last sent.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        settings: Settings | None = None,
        save_dir: str | Path | None = None,
    ) -> None:
        self._fixed_client = client
        self._save_dir = Path(save_dir) if save_dir is not None else None
        self._settings = settings
        self._workers = Workers()
        self._results: list[GeneratedImage] = []
        self._selected: GeneratedImage | None = None
        self.is_emulator = False

        self.header = widgets.HTML()
        self.form = PanelForm()
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
        self.progress_area = JobRows()
        self.result_area = SelectedResult()
        self.gallery = Gallery()
        self._name_the_controls()
        if self._save_dir is not None:
            self.save_path.disabled = True
            self.save_path.placeholder = "saved in the panel's save folder"

        self.generate_button.on_click(lambda _: self.generate())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.use_as_input_button.on_click(lambda _: self._act(self.use_as_input))
        self.save_button.on_click(lambda _: self._act(self.save, beside=self.save_message))
        super().__init__(
            children=[
                self.header,
                self.form,
                widgets.HBox([self.generate_button, self.cancel_button]),
                self.status,
                self.progress_area,
                self.result_area,
                self.gallery,
            ],
            layout=widgets.Layout(max_width="980px"),
        )
        self._describe_client()

    def _name_the_controls(self) -> None:
        """The parts' controls as the panel's own attributes, which notebooks and tests script."""
        form, result = self.form, self.result_area
        self.prompt, self.model, self.model_help = form.prompt, form.model, form.model_help
        self.size_preset, self.width, self.height = form.size_preset, form.width, form.height
        self.seed = form.seed
        self.image_url, self.image_url_hint = form.image_url, form.image_url_hint
        self.image_preview, self.image_note = form.image_preview, form.image_note
        #: Per-field error messages, shown next to the field; keys: prompt, size, seed,
        #: image_url, model.
        self.errors = form.errors
        self.result_image, self.result_caption = result.image, result.caption
        self.use_as_input_button, self.save_button = result.use_as_input_button, result.save_button
        self.save_path, self.save_message = result.save_path, result.save_message

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
        return list(self.progress_area.jobs)

    @property
    def progress(self) -> JobProgress | None:
        """The progress of the most recently started job (its ``.widget`` is the row)."""
        jobs = self.progress_area.jobs
        return jobs[0].progress if jobs else None

    @property
    def running(self) -> list[PanelJob]:
        """The jobs still queued, sending or being polled."""
        return self.progress_area.running

    @property
    def cards(self) -> list[ResultCard]:
        """The gallery's result cards, newest first."""
        return list(self.gallery.cards)

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
            if request.image_url is not None:
                url = client.resolve_image_url(self.form.image_input())
                request = replace(request, image_url=url)
        except MiragicError as exc:
            if isinstance(exc, InvalidRequestError) and exc.field == "image_url":
                self._show_field_problems({"image_url": in_field_words(exc.message)})
            else:
                self._show_error(exc)
            return None
        job = PanelJob.with_row(
            request, on_cancel=self.cancel, engine=client.engine, workers=self._workers
        )
        self.progress_area.add(job)
        self._show_status(MUTED_STYLE, f"Sending {html.escape(excerpt(request.prompt, 60))}…")
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
            if target.is_active:
                target.cancel()
                self._show_status(WARN_STYLE, html.escape(target.message))
        self._finish_row_changes()

    def select(self, image: GeneratedImage) -> None:
        """Show ``image`` in the result area and make it ``panel.image``."""
        self._selected = image
        self.result_area.show(image)
        self.gallery.mark_selected(image)

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
        self.form.use_as_input(image, url)
        self._show_status(
            MUTED_STYLE,
            f"Model set to kontext with the result in the {IMAGE_FIELD} field; edit the prompt "
            "to say what to change, then Generate.",
        )

    def save(self, image: GeneratedImage | None = None, path: str | Path | None = None) -> Path:
        """Write ``image``'s original bytes (default: the selected result) and return the path.

        ``path`` (default: the "Save to" field) may be a file or a folder (one that exists, or
        any path ending in ``/``, created if missing); blank means ``miragic-<job id>.<ext>``
        in the current directory (with ``save_dir``: relative to it, and refused if it leads
        outside; the field is not read). The prompt and parameters go into the file itself (a
        JPEG comment or PNG text chunk, as the history stores them); for a format without a
        metadata slot they go into a ``.json`` file beside it. Where the file went is said
        beside the Save button that was pressed.
        """
        image = image if image is not None else self._selected
        if image is None:
            raise InvalidRequestError("there is no result to save yet")
        if self._save_dir is not None:
            # The field is off in the page, but its value is whatever the browser last sent.
            saved = save_result(image, path if path is not None else "", folder=self._save_dir)
        else:
            saved = save_result(image, path if path is not None else self.save_path.value)
        self._save_message_of(image).value = styled(
            OK_STYLE,
            f"Saved {html.escape(saved.shown)} "
            f"(prompt and parameters {html.escape(saved.metadata_where)}).",
        )
        return saved.path

    async def wait(self) -> None:
        """Wait until every job this panel started has ended and no worker is still polling."""
        jobs = self.progress_area.jobs
        while pending := [j.task for j in jobs if j.task is not None and not j.task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._workers.settle()

    def close(self) -> None:
        """Cancel running jobs, stop the worker threads and close every widget of the panel."""
        self.cancel()
        self._workers.shutdown()
        # Widget.close() leaves children, layouts and styles open (and registered with the
        # kernel): close everything the panel made, rows no longer shown included.
        rows = [job.row for job in self.progress_area.jobs if job.row is not None]
        for widget in _widget_tree([self, *self.gallery.cards, *rows]):
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
        """Run the job's group on this loop; show how it ended (the group decides)."""
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(job.tick())
        # On the handles, forwarded to the loop: a job id that arrives after a Cancel still
        # reaches the row.
        job.group.on_handles(on_loop(loop, lambda handle: self._on_change(job)))
        try:
            await job.group.run_async()
        except asyncio.CancelledError:
            # Cancel, or a script's loop ending: the group stopped; cancel() said so already.
            if job.handle.is_active:
                job.handle.cancel()
                job.progress.stop(JobState.CANCELLED.words)
            return
        finally:
            ticker.cancel()
            self._finish_row_changes()
        self._show_end(job)

    def _show_end(self, job: PanelJob) -> None:
        end = job.member.end
        if end is None or job.state is JobState.CANCELLED:
            return  # cancelled (even if it finished as Cancel was pressed): said already
        if end.result is not None:
            self._on_result(job, end.result)
        elif end.is_failure:
            job.message = one_line(end.error) if end.error is not None else end.text(MAGIC)
            job.progress.fail(excerpt(job.message, 80))
            self._show_status(ERROR_STYLE, "✗ " + html.escape(job.message))
            if end.error is not None and not isinstance(end.error, MiragicError):
                log.error("the panel's job ended with an unexpected error: %r", end.error)
        else:  # timed out, interrupted: still on the server, and not a failure
            job.message = f"{end.state.words.capitalize()}: {end.detail(MAGIC)}"
            job.progress.stop(end.state.words, excerpt(end.detail(MAGIC), 80))
            self._show_status(WARN_STYLE, html.escape(job.message))
        self._finish_row_changes()

    def _on_change(self, job: PanelJob) -> None:
        """A step of ``job`` (on the loop's thread): its id, a status read, a late id."""
        status = job.handle.job
        if job.state is JobState.CANCELLED:
            if job.job_id and not job.message.startswith("Cancelled: stopped"):
                job.message = cancel_message(job.job_id)
                self._show_status(WARN_STYLE, html.escape(job.message))
            return
        if status is None or not job.is_active:
            return
        created = job.progress.job_id is None
        job.progress.set_state(job.state, percent=job.handle.progress, job_id=job.job_id)
        if created:
            self._show_status(
                MUTED_STYLE, f"Job {html.escape(status.id)} created; waiting for the result…"
            )
        else:
            self._show_status(
                MUTED_STYLE, html.escape(f"{job.progress.status} · {job.progress.detail_text()}")
            )

    def _on_result(self, job: PanelJob, image: GeneratedImage) -> None:
        elapsed = image.metadata.get("elapsed_s")
        took = f" · {elapsed:.1f}s" if isinstance(elapsed, (int, float)) else ""
        job.progress.succeed(f"{image.width}×{image.height}{took}")
        self._results.insert(0, image)
        self.gallery.add(
            image,
            select=self.select,
            use=lambda chosen: self._act(lambda: self.use_as_input(chosen)),
            save=lambda chosen: self._act(
                lambda: self.save(chosen), beside=self._save_message_of(chosen)
            ),
        )
        self.select(image)
        self._show_status(OK_STYLE, "✓ Done: " + html.escape(image.caption()))

    # -- form → request ---------------------------------------------------------------------

    def _request_from_fields(self) -> GenerationRequest | None:
        """The request the form describes, or None after showing what is wrong beside each field.

        Each field is checked on its own by ``GenerationRequest`` itself, so every problem is
        shown at once, with the same wording the magic and the client use.
        """
        read = self.form.read()
        self._show_field_problems(read if isinstance(read, dict) else {})
        return None if isinstance(read, dict) else read

    def _show_field_problems(self, problems: dict[str, str]) -> None:
        """Each field's problem beside it (the others cleared), and what to do in the status."""
        self.form.show_problems(problems)
        if problems:
            self._show_status(
                ERROR_STYLE,
                "Nothing was sent: fix the field"
                + ("s" if len(problems) > 1 else "")
                + " marked ⚠.",
            )

    # -- which client ------------------------------------------------------------------------

    def _client(self) -> Client:
        if self._fixed_client is not None:
            return self._fixed_client
        from miragic_nb.session import resolve

        resolved = resolve(self._current_settings())
        if resolved.is_emulator != self.is_emulator:
            self.is_emulator = resolved.is_emulator
            self._describe_client()
        return resolved.client

    def _current_settings(self) -> Settings:
        """The settings given, else the loaded extension's (read at every Generate)."""

        if self._settings is not None:
            return self._settings
        from miragic_nb.session import current_settings

        return current_settings()

    def _describe_client(self) -> None:
        """The header: where jobs go. Decided without starting anything (no emulator)."""
        if self._fixed_client is not None:
            where = html.escape(self._fixed_client.base_url)
            self.header.value = f"<b>Miragic</b> <small style='{MUTED_STYLE}'>{where}</small>"
            return
        from miragic_nb.session import uses_emulator

        try:
            self.is_emulator = uses_emulator(self._current_settings())
        except MiragicError as exc:
            self._show_error(exc)
        notice = (
            f" <small style='{WARN_STYLE}'>{EMULATOR_NOTICE}</small>" if self.is_emulator else ""
        )
        self.header.value = f"<b>Miragic</b>{notice}"

    # -- small view helpers -------------------------------------------------------------------

    def _show_status(self, style: str, escaped_html: str) -> None:
        self.status.value = styled(style, escaped_html)

    def _show_error(self, exc: BaseException) -> None:
        self._show_status(ERROR_STYLE, "✗ " + html.escape(one_line(exc)))

    def _finish_row_changes(self) -> None:
        self.progress_area.refresh()
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        self.cancel_button.disabled = not self.running

    def _save_message_of(self, image: GeneratedImage) -> widgets.HTML:
        card = None if image is self._selected else self.gallery.card_of(image)
        return self.save_message if card is None else card.save_message

    def _act(self, action: Callable[[], object], *, beside: widgets.HTML | None = None) -> None:
        """Run a button's action; a refusal becomes the status line (or the line ``beside``
        the button) instead of a traceback."""
        try:
            action()
        except (MiragicError, OSError) as exc:
            if beside is None:
                self._show_error(exc)
            else:
                beside.value = styled(ERROR_STYLE, "✗ " + html.escape(one_line(exc)))


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
