"""Every exception fusionrt raises on purpose is defined in fusionrt.errors and exported."""

import ast
import inspect
from pathlib import Path

import fusionrt
from fusionrt import errors

SRC = Path(fusionrt.__file__).parent


def test_exception_classes_live_in_errors_py():
    elsewhere = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases
            ):
                elsewhere.append(f"{path.relative_to(SRC)}: {node.name}")
    assert not elsewhere, elsewhere


def test_every_error_is_exported_from_the_package():
    defined = {n for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception) and c.__module__ == errors.__name__}
    assert {"EngineClosedError", "ServerError", "InputError", "FusionrtInternalError"} <= defined
    assert defined <= set(fusionrt.__all__)
    for name in defined:
        assert getattr(fusionrt, name) is getattr(errors, name)
    assert issubclass(errors.EngineClosedError, errors.FusionrtError) and issubclass(errors.ServerError, errors.FusionrtError)
