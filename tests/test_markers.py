"""The markers `make test-fast` selects on: every test listed as slow exists (a renamed test
would silently join the fast subset), browser tests are the ones taking a browser fixture."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.markers import SLOW, is_slow

ROOT = Path(__file__).resolve().parents[1]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_slow_entry_names_a_test_that_exists():
    missing = []
    for entry in sorted(SLOW):
        file, _, name = entry.partition("::")
        path = ROOT / file
        if not path.is_file() or (name and name not in _test_names(path)):
            missing.append(entry)
    assert not missing, f"helpers.markers.SLOW lists tests that do not exist: {missing}"


def test_is_slow_matches_parametrisations_and_files():
    test = next(e for e in sorted(SLOW) if "::" in e)
    assert is_slow(test) and is_slow(test + "[1-2]") and not is_slow(test + "_other")
    file = test.split("::")[0]
    assert is_slow(f"{file}::whatever") == (file in SLOW)
    assert not is_slow("tests/no/such_file.py::test_nothing")


def test_this_sessions_tests_carry_their_markers(request):
    """Every test collected in this session: `browser` exactly when it takes a browser fixture,
    `notebook` exactly under tests/notebooks/, `slow` when SLOW lists it (a test may also carry
    @pytest.mark.slow itself)."""
    wrong = []
    for item in request.session.items:
        want = {
            "browser": bool({"browser", "page"} & set(getattr(item, "fixturenames", ()))),
            "notebook": "notebooks" in item.path.parts,
        }
        got = {name: item.get_closest_marker(name) is not None for name in want}
        if is_slow(item.nodeid):
            want["slow"], got["slow"] = True, item.get_closest_marker("slow") is not None
        if got != want:
            wrong.append(f"{item.nodeid}: {got}, expected {want}")
    assert request.node in request.session.items and not wrong, wrong
