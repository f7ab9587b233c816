"""Every reach past faust's or aiokafka's public API is in ``streams/workarounds.py`` (its docstring
says why each exists and what removes it), so a library upgrade is checked, and a fixed defect deleted,
in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import streams.workarounds as workarounds

ROOT = Path(__file__).resolve().parents[1]


def _private_attributes(path: Path) -> set[tuple[str, int]]:
    """``(name, line)`` of every ``x._name`` access where ``x`` is not ``self``/``cls``."""
    out: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            out.add((node.attr, node.lineno))
    return out


def _own_private_names() -> set[str]:
    """Private names the project itself defines (attributes it assigns, functions, classes)."""
    names: set[str] = set()
    for path in [*ROOT.glob("bidder/**/*.py"), *ROOT.glob("streams/**/*.py")]:
        if path.name == "workarounds.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def test_no_library_private_attribute_outside_the_workarounds_module() -> None:
    own = _own_private_names()
    found = {f"{path.relative_to(ROOT)}:{line} {name}"
             for path in ROOT.glob("streams/**/*.py") if path.name != "workarounds.py"
             for name, line in _private_attributes(path) if name not in own}
    assert found == set(), "move these into streams/workarounds.py with the reason: " + ", ".join(sorted(found))


def test_the_scan_sees_a_library_private_attribute() -> None:
    # the scan itself: the workarounds module does reach into the libraries, and is found doing so
    names = {name for name, _ in _private_attributes(Path(workarounds.__file__))} - _own_private_names()
    assert {"_ensure_producer", "_read_offset", "_committed_offset", "_coordinator", "_client"} <= names


def test_every_workaround_is_in_the_table() -> None:
    doc = workarounds.__doc__ or ""
    for name in workarounds.__all__:
        if name != "EXIT_RESTART":
            assert name in doc, name
