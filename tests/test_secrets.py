"""The API key never leaves the API's origin and never shows up anywhere a user could share.

The key is a distinctive string, so a plain substring search finds it wherever it went: in a
request to another origin, in history files, in log records, in exception messages and
tracebacks (also with captured locals, as IPython's verbose mode prints them), in a repr, in
``%miragic config``, and in an executed notebook with its saved widget state.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from miragic_nb import Client, GenerationRequest, InvalidRequestError, MiragicError
from miragic_nb._store.history import History
from miragic_nb.emulator import Emulator, Fault
from tests.conftest import FAST_POLLS

if TYPE_CHECKING:
    from miragic_nb._magic.magic import Miragic
    from tests.magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]

SECRET = "sk-live-SECRET-9f8e7d"


@pytest.fixture
def keyed() -> Iterator[Emulator]:
    """An emulator that accepts only SECRET."""
    with Emulator(api_key=SECRET, job_seconds=0.3) as emulator:
        yield emulator


@pytest.fixture
def client(keyed: Emulator) -> Iterator[Client]:
    with Client(SECRET, keyed.url, poll_schedule=FAST_POLLS, timeout=20) as made:
        yield made


def full_traceback(error: BaseException) -> str:
    """Everything a traceback can print: the plain form, then every frame's locals."""
    plain = "".join(traceback.format_exception(error))
    with_locals = traceback.TracebackException.from_exception(error, capture_locals=True)
    return plain + "".join(with_locals.format())


def _failures(keyed: Emulator, client: Client) -> Iterator[MiragicError]:
    """One error of each kind a keyed client can meet after sending the key."""
    keyed.faults.force_failure = True
    keyed.faults.failure_message = "rejected"
    with pytest.raises(MiragicError) as failed:
        client.generate("a failing job")
    yield failed.value  # JobFailedError
    keyed.faults.reset()
    keyed.faults.push("download", Fault.not_image(), times=None)
    with pytest.raises(MiragicError) as download:
        client.generate("a broken download")
    yield download.value  # DownloadError
    keyed.faults.reset()
    keyed.faults.never_finish = True
    with pytest.raises(MiragicError) as timeout:
        client.generate("a slow job", timeout=0.3)
    yield timeout.value  # JobTimeoutError
    keyed.faults.reset()
    keyed.faults.push("create", Fault.rate_limited(0.01), times=None)
    with pytest.raises(MiragicError) as limited:
        client.generate("rate limited")
    yield limited.value  # RateLimitError
    keyed.faults.reset()
    keyed.faults.push("create", Fault.http(503))
    with pytest.raises(MiragicError) as server:
        client.generate("server error")
    yield server.value  # APIError
    keyed.faults.push("create", Fault.slow(1.0))
    with Client(SECRET, keyed.url, read_timeout=0.2) as impatient:
        with pytest.raises(MiragicError) as unanswered:
            impatient.generate("no answer")
    yield unanswered.value  # APIConnectionError
    # The 401 path: our key, in our client, refused by a server that expects another.
    with Emulator(api_key="another-key") as wrong, Client(SECRET, wrong.url) as other:
        with pytest.raises(MiragicError) as refused:
            other.generate("wrong key")
    yield refused.value  # AuthenticationError


def test_key_never_reaches_another_origin(client: Client, keyed: Emulator) -> None:
    for settings in (
        {"result_url": "second_origin"},
        {"result_url": "link_only"},
        {"result_url": "absolute", "result_redirects": 3},
    ):
        keyed.faults.configure(**settings)
        client.generate("a cat", width=256, height=256)
    second = keyed.second_origin_requests
    assert len(second) >= 3
    assert all("X-API-Key" not in r.headers for r in second)
    assert all(SECRET not in repr(r) for r in second)
    # ...while every request to the API's own origin carried it.
    assert all(
        r.headers.get("X-API-Key") == SECRET for r in keyed.requests if r.path.startswith("/api/")
    )


def test_key_never_reaches_another_origin_through_a_users_own_session(keyed: Emulator) -> None:
    with requests.Session() as session:
        session.headers["User-Agent"] = "my-app/1.0"
        with Client(SECRET, keyed.url, poll_schedule=FAST_POLLS, session=session) as client:
            # The first hop of a main-origin result URL redirects to the second origin.
            keyed.faults.configure(result_url="absolute", result_redirects=3)
            client.generate("a cat", width=256, height=256)
            keyed.faults.configure(result_url="second_origin", result_redirects=0)
            client.generate("a dog", width=256, height=256)
    second = keyed.second_origin_requests
    assert len(second) >= 3
    assert all("X-API-Key" not in r.headers for r in second)
    assert all(SECRET not in repr(r) for r in second)
    api = [r for r in keyed.requests if r.path.startswith("/api/")]
    assert api
    assert all(r.headers.get("X-API-Key") == SECRET for r in api)
    assert all(r.headers.get("User-Agent") == "my-app/1.0" for r in api)  # the user's session


def test_a_session_with_its_own_auth_is_refused(keyed: Emulator) -> None:
    with requests.Session() as session:
        session.auth = ("user", "password")
        with pytest.raises(InvalidRequestError, match="already has auth"):
            Client(SECRET, keyed.url, session=session)


def test_key_is_not_in_history_files(client: Client, keyed: Emulator) -> None:
    client.generate("kept", width=256, height=256, seed=1)
    for error in _failures(keyed, client):
        assert error  # each failure also writes its record
    home = Path(os.environ["MIRAGIC_HOME"])
    files = [path for path in home.rglob("*") if path.is_file()]
    # The database with records of completed, failed, timed-out and broken jobs (checked
    # below), and a saved image.
    assert any(p.name == "history.sqlite3" for p in files)
    assert any(p.suffix == ".jpg" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert {r.status for r in History().records()} >= {"COMPLETED", "FAILED", "TIMEOUT", "ERROR"}


def test_key_is_not_in_any_log_record(
    client: Client, keyed: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root: miragic_nb, urllib3, requests, everything
    for name in ("miragic_nb", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    keyed.faults.push("status", Fault.http(500), times=2)  # logged retries
    keyed.faults.push("download", Fault.reset())
    client.generate("logged", width=256, height=256)
    errors = list(_failures(keyed, client))
    assert len(errors) == 7
    names = {record.name.split(".")[0] for record in caplog.records}
    assert {"miragic_nb", "urllib3"} <= names  # both were really captured at DEBUG
    assert any(record.levelno == logging.DEBUG for record in caplog.records)
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()
        assert SECRET not in repr(record.args)
    assert SECRET not in caplog.text


def test_key_is_not_in_errors_or_tracebacks(client: Client, keyed: Emulator) -> None:
    errors = list(_failures(keyed, client))
    kinds = {type(error).__name__ for error in errors}
    assert kinds == {
        "JobFailedError",
        "DownloadError",
        "JobTimeoutError",
        "RateLimitError",
        "APIError",
        "APIConnectionError",
        "AuthenticationError",
    }
    for error in errors:
        text = full_traceback(error)
        assert "client = Client(" in text or "self = Client(" in text  # locals were captured
        assert SECRET not in text, type(error).__name__
        assert SECRET not in str(error)
        assert SECRET not in repr(error)
        assert SECRET not in repr(vars(error))


def test_key_is_not_in_a_failed_constructor_traceback(keyed: Emulator) -> None:
    for bad in ({"base_url": "http://remote.example"}, {"timeout": -1}):
        with pytest.raises(MiragicError) as info:
            Client(SECRET, **bad)
        text = full_traceback(info.value)
        assert "api_key = Secret('********')" in text  # the argument, rebound at once
        assert SECRET not in text


def test_key_is_not_in_a_traceback_interrupted_mid_request(client: Client, keyed: Emulator) -> None:
    """Ctrl-C while a status read is on the wire: urllib3's frames hold the request headers."""
    keyed.faults.push("status", Fault.slow(2.0), times=None)
    main = threading.get_ident()
    timer = threading.Timer(0.6, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            client.generate(GenerationRequest("interrupted"))
    finally:
        timer.cancel()
        keyed.faults.reset()
    text = full_traceback(info.value)
    assert "urllib3" in text  # interrupted inside the request, where the headers are
    assert "'X-API-Key': '********'" in text
    assert SECRET not in text


def test_key_is_not_in_reprs(client: Client, keyed: Emulator) -> None:
    image = client.generate("shown", width=256, height=256)
    job = client.get_job(image.metadata["job_id"])
    session = client.api._session  # the internals a debugger or a traceback could show
    for shown in (
        client,
        vars(client),
        session.__dict__,
        session.auth,
        job,
        job.raw,
        image,
        image.info,
        image.metadata,
        History().records(),
    ):
        assert SECRET not in repr(shown)
        assert SECRET not in str(shown)


# -- the notebook faces ------------------------------------------------------------------------

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
REPO = Path(__file__).resolve().parents[1]
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"


def test_key_is_not_in_magic_config_or_cell_outputs(
    run: Runner, magic: Miragic, keyed: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    magic.base_url = keyed.url
    monkeypatch.setenv("MIRAGIC_API_KEY", SECRET)
    cells = [
        run("%miragic config"),
        run("%%miragic -W 256 -H 256\na lighthouse"),
        run(f"%miragic resume {UNKNOWN_JOB}"),  # fails: 404 from the API
        run("%miragic history"),
    ]
    monkeypatch.delenv("MIRAGIC_API_KEY")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": SECRET)
    cells += [
        run("%miragic login"),
        run("%miragic config"),
        run("%%miragic -W 256 -H 256\nlogged in"),
    ]
    magic.short_errors = False  # the full traceback of a failure, too
    cells.append(run(f"%miragic resume {UNKNOWN_JOB}"))
    text = "\n".join(cell.text + repr([o.data for o in cell.outputs]) for cell in cells)
    assert "MIRAGIC_API_KEY" in cells[0].text  # the config table was printed...
    assert "%miragic login (this session)" in cells[5].text  # ...also for the session key
    assert "Job not found" in cells[2].text
    assert "Traceback" in cells[-1].text
    assert len(keyed.jobs) == 2  # the key was really used
    assert SECRET not in text


@pytest.fixture
def kernel_env(keyed: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The key reaches the kernel only through its environment, as in real use."""
    monkeypatch.setenv("MIRAGIC_API_KEY", SECRET)
    monkeypatch.setenv("MIRAGIC_BASE_URL", keyed.url)
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path) if p))
    return keyed


@pytest.mark.timeout(240)
def test_key_is_not_in_an_executed_notebook_with_widget_state(
    kernel_env: Emulator, tmp_path: Path
) -> None:
    import base64
    import json

    import nbformat as untyped_nbformat
    from nbclient import NotebookClient

    nbformat: Any = untyped_nbformat  # an untyped module: one Any instead of many ignores

    def failing(source: str) -> Any:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["raises-exception"]
        return cell

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext miragic_nb\n%config Miragic.poll_interval = 0.05"),
        nbformat.v4.new_code_cell("%%miragic -W 256 -H 256 --seed 3\na lighthouse at dusk"),
        nbformat.v4.new_code_cell("%miragic config"),
        nbformat.v4.new_code_cell("%miragic history"),
        failing(f"%miragic resume {UNKNOWN_JOB}"),
        # IPython's verbose tracebacks print every frame's locals, the client's among them.
        failing(
            "%xmode Verbose\nimport miragic_nb\n"
            f"client = miragic_nb.Client()\nclient.get_job({UNKNOWN_JOB!r})"
        ),
        nbformat.v4.new_code_cell("panel = miragic_nb.Panel()\npanel"),
        nbformat.v4.new_code_cell(
            'panel.prompt.value = "a panel lighthouse"\n'
            "panel.generate_button.click()\n"
            "await panel.wait()\n"
            "print(panel.history[0].state)"
        ),
    ]
    NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert any("image/jpeg" in o.get("data", {}) for o in outputs)  # the magic's result
    assert "MIRAGIC_API_KEY" in json.dumps(nb.cells[2].outputs)  # the config table
    assert nb.cells[5].outputs[-1]["output_type"] == "error"
    verbose = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(nb.cells[5].outputs[-1]["traceback"]))
    assert "self = Client(" in verbose or "client = Client(" in verbose  # locals were shown
    assert nb.cells[7].outputs[0]["text"].strip() == "completed"
    # The widget state was stored, bars and images included, so the key could have been in it.
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    models = {entry["model_name"] for entry in state.values()}
    assert {"TextareaModel", "ImageModel", "FloatProgressModel", "HTMLModel"} <= models
    assert any("a panel lighthouse" in json.dumps(entry["state"]) for entry in state.values())
    buffers = [
        base64.b64decode(buffer["data"])
        for entry in state.values()
        for buffer in entry.get("buffers", [])
    ]
    assert any(blob.startswith(b"\xff\xd8\xff") for blob in buffers)  # the panel's result
    saved = tmp_path / "executed.ipynb"
    nbformat.write(nb, saved)
    assert SECRET.encode() not in saved.read_bytes()
    assert all(SECRET.encode() not in blob for blob in buffers)
    assert len(kernel_env.jobs) == 2  # the magic's job and the panel's: the key was used
