"""Imports go one way: no module imports a layer above it, and no two modules import each other
(directly or through others). Checked on the source with ``ast``, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import fusionrt

SRC = Path(fusionrt.__file__).parent
# Lower first. A module may import its own package and packages of a lower rank only. The runtime
# side (engine, triton) sits below export and model: it never imports torch-side code.
RANK = {
    "errors": 0, "cpu": 0, "utils": 0, "timing": 0, "prediction": 0, "threads": 0,
    "bundle": 1, "explanation": 1, "samples": 1, "preprocessing": 1,
    "engine": 2, "model": 2, "render": 2,
    "export": 3, "triton": 3,
    "bench": 4,
    "demo": 5,
    "cli": 6, "examples": 6,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the fusionrt modules it imports (package __init__ files excluded as importers)."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("fusionrt"):
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("fusionrt"))
        found[_module_name(path)] = names
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_module_imports_a_layer_above_or_beside_it():
    wrong = []
    for module, names in _imports().items():
        own = _layer(module)
        for name in names:
            other = _layer(name)
            if other is None or other == own:
                continue
            if RANK[other] >= RANK[own]:
                wrong.append(f"{module} imports {name} ({own} rank {RANK[own]}, {other} rank {RANK[other]})")
    assert not wrong, wrong


def test_no_import_cycles_between_modules():
    graph = _imports()
    modules = set(graph)
    edges = {m: {n for n in graph[m] if n in modules and n != m} for m in modules}
    cycles = []

    def visit(node, stack, on_stack, done):
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt in on_stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        on_stack.discard(stack.pop())
        done.add(node)

    done: set = set()
    for m in sorted(modules):
        if m not in done:
            visit(m, [], set(), done)
    assert not cycles, cycles


def test_every_package_has_a_rank():
    layers = {_layer(m) for m in _imports()} - {None}
    assert layers <= set(RANK), layers - set(RANK)


def test_sessions_and_compiled_models_are_made_only_by_the_loaders():
    """Every ``onnxruntime.InferenceSession`` and OpenVINO ``compile_model`` comes from
    fusionrt/engine/loaders.py, so session options and compile properties are set in one place."""
    made_elsewhere = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).as_posix() == "engine/loaders.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("InferenceSession", "compile_model"):
                    made_elsewhere.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
    assert not made_elsewhere, made_elsewhere


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_80_lines():
    long = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC).as_posix()}:{node.name}"] = lines
    assert not long, long


def _command_parsers() -> dict[str, object]:
    """``"export"``, ``"triton build"``, ... -> its argparse parser (the CLI's own tree)."""
    import argparse

    from fusionrt.cli import build_parser

    out = {}

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return out


def _documented_commands():
    """(file, line, command words, flags) of every ``fusionrt ...`` line in a code block of
    README.md and docs/*.md."""
    import re

    def flags(text):
        return re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)

    root = SRC.parents[1]
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        inside, words, continued = False, None, False
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                inside, words = not inside, None
                continue
            if not inside:
                continue
            matches = list(re.finditer(r"(?:^|[\s;&|(`$])fusionrt((?: [a-z][a-z-]*)+)(.*)", line))
            if matches:
                for match in matches:
                    words = match.group(1).split()
                    yield page.name, number, words, flags(match.group(2).split(" fusionrt ")[0])
            elif words and (continued or line.strip().startswith(("[", "--"))):  # a usage line's continuation
                yield page.name, number, words, flags(line)
            else:
                words = None
            continued = line.rstrip().endswith("\\")


def test_documented_commands_name_existing_flags():
    import re

    parsers = _command_parsers()
    assert {"export", "triton build", "triton deploy", "serve"} <= set(parsers)
    wrong, checked = [], 0
    for page, number, words, flags in _documented_commands():
        command = " ".join(words[:2]) if " ".join(words[:2]) in parsers else words[0]
        if command not in parsers:
            if words[0] in ("demo", "train", "export", "bench", "predict", "triton", "serve"):
                wrong.append(f"{page}:{number}: no command `fusionrt {' '.join(words[:2])}`")
            continue
        known = set(re.findall(r"--[a-z][a-z0-9-]*", parsers[command].format_help()))  # what --help lists
        wrong += [f"{page}:{number}: `fusionrt {command}` has no {flag}" for flag in flags if flag not in known]
        checked += 1
    assert checked >= 15 and not wrong, wrong
