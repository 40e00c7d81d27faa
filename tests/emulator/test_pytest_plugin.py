"""The pytest plugin, seen from a user's test suite: pytester runs a user's test files in a
fresh pytest process with no conftest and no import of the plugin, only the installed package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_import_cost import HEAVY, modules_after

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

USER_TESTS = """
import socket
from urllib.parse import urlsplit

import pytest

from miragic_nb import JobFailedError
from miragic_nb.emulator import Fault

SEEN = []


def test_generate(miragic_client, miragic_emulator, tmp_path):
    SEEN.append(miragic_emulator)
    image = miragic_client.generate("a red bicycle", seed=7, width=256, height=256)
    assert image.size == (256, 256)
    assert image.metadata["seed"] == 7
    assert miragic_client.base_url == miragic_emulator.url
    # The history is the test's own, inside tmp_path.
    assert miragic_client.history.home == tmp_path / "miragic-home"
    assert miragic_client.history.get(image.metadata["job_id"]).status == "COMPLETED"


def test_status_errors_are_retried(miragic_client, miragic_emulator):
    miragic_emulator.faults.push("status", Fault.http(503), times=2)
    miragic_client.generate("a blue kite", width=256, height=256)
    assert miragic_emulator.count("GET", "/api/v1/image/jobs/", status=503) == 2


def test_job_failure_reaches_the_client(miragic_client, miragic_emulator):
    miragic_emulator.faults.configure(force_failure=True, failure_message="NSFW content detected")
    with pytest.raises(JobFailedError, match="NSFW content detected"):
        miragic_client.generate("a green lamp", width=256, height=256)


def test_the_emulator_was_stopped_after_its_test():
    (emulator,) = SEEN
    assert not emulator.running
    port = urlsplit(emulator.url).port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_env_points_new_clients_at_the_emulator(miragic_env):
    import miragic_nb

    image = miragic_nb.generate("a yellow door", width=256, height=256)
    assert image.metadata["base_url"] == miragic_env.url
    assert miragic_env.count("POST", "/api/v1/image/generate") == 1
"""


def test_a_users_tests_get_the_fixtures_from_the_installed_package(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    # No conftest, no pytest_plugins, no import of miragic_nb.pytest_plugin in the user's file.
    assert [path.name for path in pytester.path.iterdir()] == ["test_user.py"]
    # In file order: one test checks what an earlier one left (the emulator stopped), and
    # pytest-randomly, installed here, would otherwise shuffle them (so they failed one run
    # in two, whenever the check came first).
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-v")
    result.assert_outcomes(passed=5)


def test_a_fault_that_fails_the_users_test_fails_it(pytester: pytest.Pytester) -> None:
    # The fixtures do not swallow what the emulator does: an unexpected failure is a failure.
    pytester.makepyfile(
        test_user="""
        from miragic_nb.emulator import Fault

        def test_generate(miragic_client, miragic_emulator):
            miragic_emulator.faults.push("create", Fault.unsuccessful("Insufficient credits"))
            miragic_client.generate("a red bicycle", width=256, height=256)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Insufficient credits*"])


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    loaded = modules_after("import miragic_nb.pytest_plugin")
    assert "miragic_nb" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))


def test_the_readmes_example_passes(pytester: pytest.Pytester) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Testing your own code") :]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None, "the README's testing section has no Python example"
    pytester.makepyfile(test_readme=example.group(1))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=example.group(1).count("\ndef test_"))


def test_the_testing_pages_example_passes(pytester: pytest.Pytester) -> None:
    page = (ROOT / "docs" / "testing-with-miragic.md").read_text(encoding="utf-8")
    code, tests = re.findall(r"```python\n(.*?)```", page, re.DOTALL)[:2]
    package = pytester.mkpydir("mypackage")
    (package / "thumbnails.py").write_text(code, encoding="utf-8")
    pytester.makepyfile(test_thumbnails=tests)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=tests.count("\ndef test_"))
