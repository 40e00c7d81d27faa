"""The suite leaves the machine as it found it: every per-user folder is a temporary one.

tests/conftest.py moves HOME, IPYTHONDIR, the Jupyter folders, the XDG folders and npm's cache
into a temporary tree before anything is imported; what the tests start inherits that. Here the
test process and a real kernel started as the kernel tests start theirs report where IPython's
history, Jupyter's trust database and the rest would be written. (CI checks the outcome too: it
runs the suite with HOME an empty folder and fails if anything appears in it.)
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
from pathlib import Path

from jupyter_client.manager import KernelManager

from tests.conftest import SANDBOX, SANDBOX_VARIABLE, SANDBOXED

#: Run in a process: where each per-user folder it would write into is, as JSON.
WHERE = """
import json, os
from pathlib import Path
from IPython.paths import get_ipython_dir
from jupyter_core.paths import jupyter_config_dir, jupyter_data_dir, jupyter_runtime_dir
from platformdirs import user_cache_dir, user_config_dir, user_data_dir, user_runtime_dir
where = {name: os.environ.get(name, "") for name in NAMES}
where.update(
    home=str(Path.home()),
    ipython=get_ipython_dir(),
    jupyter_config=jupyter_config_dir(),
    jupyter_data=jupyter_data_dir(),
    jupyter_runtime=jupyter_runtime_dir(),
    platform_cache=user_cache_dir("miragic-probe"),
    platform_config=user_config_dir("miragic-probe"),
    platform_data=user_data_dir("miragic-probe"),
    platform_runtime=user_runtime_dir("miragic-probe"),
)
ip = globals().get("get_ipython", lambda: None)()
if ip is not None:
    where["ipython_history"] = str(ip.history_manager.hist_file)
print(json.dumps(where))
"""


def probe() -> str:
    return f"NAMES = {sorted(SANDBOXED)!r}\n{WHERE}"


def assert_all_inside(where: dict[str, str], root: Path) -> None:
    outside = {
        name: path
        for name, path in where.items()
        if not Path(path).resolve().is_relative_to(root.resolve())
    }
    assert outside == {}, f"outside the sandbox {root}: {outside}"


def test_the_session_runs_in_a_temporary_home() -> None:
    root = Path(os.environ[SANDBOX_VARIABLE])
    assert root.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert SANDBOX.resolve().is_relative_to(root.resolve())  # an xdist worker: a subfolder
    where: dict[str, str] = {}
    namespace = {"print": lambda text: where.update(json.loads(text))}
    exec(probe(), namespace)  # the same probe as in the kernel, in this process
    assert set(where) >= set(SANDBOXED) | {"home", "ipython", "jupyter_data"}
    assert_all_inside(where, SANDBOX)


def test_a_kernel_the_tests_start_writes_its_history_into_the_sandbox(tmp_path: Path) -> None:
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=dict(os.environ), cwd=str(tmp_path))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        msg_id = client.execute(probe())
        printed = ""
        while True:
            try:
                message = client.get_iopub_msg(timeout=60)
            except queue.Empty:
                raise AssertionError(f"no kernel output for 60s; printed {printed!r}") from None
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "error":
                raise AssertionError("\n".join(message["content"]["traceback"]))
            if message["msg_type"] == "stream":
                printed += message["content"]["text"]
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    where = json.loads(printed)
    assert "ipython_history" in where  # a real IPython kernel, with a history on disk
    assert_all_inside(where, SANDBOX)
    # ... and it did write there: the history a developer would find with the up arrow.
    assert Path(where["ipython_history"]).exists()
