"""The house's shape, enforced: no import cycle inside the package, and a pinned public surface.

The layer contracts themselves are import-linter's (``.importlinter``, run by the test command).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

import miragic_nb

#: What ``import miragic_nb`` offers users; a change here is a change of the public API.
PUBLIC = {
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "BatchCounts",
    "BatchResult",
    "BudgetExceededError",
    "Client",
    "DownloadError",
    "GeneratedImage",
    "GenerationRequest",
    "History",
    "HistoryCorruptError",
    "HistoryError",
    "HistoryTooNewError",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "JobState",
    "JobTimeoutError",
    "MiragicError",
    "MissingAPIKeyError",
    "Panel",
    "Plan",
    "RateLimitError",
    "UncertainJobError",
    "default_client",
    "generate",
    "history",
    "set_uploader",
}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module, or a module
    importing itself (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(graph.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(iter(children), None)  # type: ignore[call-overload]
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": ["c"], "c": []}) == []
    assert cycles({"a": ["a"]}) == [["a"]]


@pytest.mark.devtools
def test_no_runtime_import_cycle_inside_the_package() -> None:
    import grimp  # import-linter's graph library: in the dev install only

    # Function-level imports count too: a cycle that only bites later is still a cycle.
    graph = grimp.build_graph("miragic_nb", exclude_type_checking_imports=True)
    edges = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    assert cycles(edges) == []


def test_the_public_surface_is_pinned() -> None:
    assert set(miragic_nb.__all__) == PUBLIC
    assert len(miragic_nb.__all__) <= 40
    for name in PUBLIC:
        assert getattr(miragic_nb, name) is not None, name


def test_at_most_twelve_modules_stand_directly_in_the_package() -> None:
    from pathlib import Path

    top = Path(miragic_nb.__file__).parent
    modules = sorted(path.name for path in top.glob("*.py"))
    assert len(modules) <= 12, modules


@pytest.mark.parametrize("name", ["Client", "JobState", "BatchResult", "Plan"])
def test_public_names_load_lazily_and_then_stay(name: str) -> None:
    value = getattr(miragic_nb, name)
    assert getattr(miragic_nb, name) is value
    assert vars(miragic_nb)[name] is value
