"""Protobuf text format (Triton's ``config.pbtxt``) without a protobuf dependency: a small
deterministic writer (the same message always gives byte-identical text, so generated
repositories can be golden-tested) and the reader of what it writes (:func:`read_config`), so
that code asks a parsed message for its fields instead of matching lines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator


def write_config(folder: Path, config: "Msg") -> None:
    """Write ``folder/config.pbtxt`` (the folder is created)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text("\n".join(config.lines(0)) + "\n", encoding="utf-8")


class Enum(str):
    """A protobuf enum value: written without quotes."""


class Msg:
    """An ordered protobuf message: ``Msg(("name", "x"), ("dims", [1, 2]), ("sub", Msg(...)))``.

    Repeated scalars are lists; repeated messages are lists of :class:`Msg`; map entries are
    repeated ``("field", Msg(("key", k), ("value", v)))`` pairs.
    """

    def __init__(self, *fields: tuple):
        self.fields = list(fields)

    def get(self, key: str, default: Any = None) -> Any:
        """The first value of field ``key`` (``default`` when absent)."""
        return next((v for k, v in self.fields if k == key), default)

    def find(self, key: str) -> Iterator[Any]:
        """Every value of field ``key`` in this message and the messages nested in it, depth
        first; repeated fields (lists) are yielded item by item."""
        for k, v in self.fields:
            items = v if isinstance(v, list) else [v]
            if k == key:
                yield from items
            for item in items:
                if isinstance(item, Msg):
                    yield from item.find(key)

    @property
    def is_flat(self) -> bool:
        return all(isinstance(v, Msg) and v.is_flat or not isinstance(v, (Msg, list)) for _, v in self.fields)

    @property
    def is_short_map_entry(self) -> bool:
        """``{ key: ... value: ... }`` without lists: written on one line, as in Triton's examples."""
        return [k for k, _ in self.fields] == ["key", "value"] and self.is_flat

    def inline(self) -> str:
        parts = [f"{k}: {{ {v.inline()} }}" if isinstance(v, Msg) else f"{k}: {scalar(v)}" for k, v in self.fields]
        return " ".join(parts)

    def lines(self, depth: int) -> list[str]:
        pad = "  " * depth
        out = []
        for key, value in self.fields:
            if isinstance(value, Msg) and value.is_short_map_entry:
                out.append(f"{pad}{key} {{ {value.inline()} }}")
            elif isinstance(value, Msg):
                out += [f"{pad}{key} {{", *value.lines(depth + 1), f"{pad}}}"]
            elif isinstance(value, list) and value and all(isinstance(v, Msg) for v in value):
                out.append(f"{pad}{key} [")
                for i, v in enumerate(value):
                    out += [f"{pad}  {{", *v.lines(depth + 2), f"{pad}  }}" + ("," if i < len(value) - 1 else "")]
                out.append(f"{pad}]")
            elif isinstance(value, list):
                if not value:
                    continue
                out.append(f"{pad}{key}: [ {', '.join(scalar(v) for v in value)} ]")
            else:
                out.append(f"{pad}{key}: {scalar(value)}")
        return out


def scalar(value: Any) -> str:
    """One protobuf text-format scalar: enums bare, booleans lowercase, strings JSON-quoted."""
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"no protobuf text form for {value!r}")


# Tokens of protobuf text format: strings, punctuation, and bare words (numbers, enums, names).
_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<string>"(?:[^"\\]|\\.)*")|(?P<punct>[{}\[\]:,])|(?P<word>[^\s{}\[\]:,"#]+)')


def parse(text: str, source: str = "config.pbtxt") -> Msg:
    """A protobuf text-format message -> :class:`Msg` (the inverse of ``Msg.lines`` for the
    subset it writes: scalars, nested messages, lists; ``"..."`` strings, ints, floats,
    ``true``/``false``; other bare words as :class:`Enum`).

    Raises:
        ValueError: the text is not protobuf text format (names ``source`` and the offset).
    """
    tokens = []
    for match in _TOKEN.finditer(text):
        if match.lastgroup:
            tokens.append((match.lastgroup, match.group(), match.start()))
    if sum(len(m.group()) for m in _TOKEN.finditer(text)) != len(text):
        raise ValueError(f"{source}: characters that are not protobuf text format")
    return _message(tokens, 0, source, top=True)[0]


def read_config(path: str | Path) -> Msg:
    """``path`` (a ``config.pbtxt``) parsed by :func:`parse`."""
    return parse(Path(path).read_text(encoding="utf-8"), str(path))


def _message(tokens: list, i: int, source: str, top: bool = False) -> tuple[Msg, int]:
    msg = Msg()
    while i < len(tokens):
        kind, text, at = tokens[i]
        if text == "}" and not top:
            return msg, i + 1
        if kind != "word":
            raise ValueError(f"{source}: expected a field name at offset {at}, got {text!r}")
        i += 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        value, i = _value(tokens, i, source)
        msg.fields.append((text, value))
    if not top:
        raise ValueError(f"{source}: a message is not closed with '}}'")
    return msg, i


def _value(tokens: list, i: int, source: str) -> tuple[Any, int]:
    if i >= len(tokens):
        raise ValueError(f"{source}: a field has no value at the end")
    kind, text, at = tokens[i]
    if text == "{":
        return _message(tokens, i + 1, source)
    if text == "[":
        items, i = [], i + 1
        while i < len(tokens) and tokens[i][1] != "]":
            item, i = _value(tokens, i, source)
            items.append(item)
            if i < len(tokens) and tokens[i][1] == ",":
                i += 1
        if i >= len(tokens):
            raise ValueError(f"{source}: a list is not closed with ']'")
        return items, i + 1
    if kind == "string":
        return json.loads(text), i + 1
    if kind != "word":
        raise ValueError(f"{source}: expected a value at offset {at}, got {text!r}")
    return _scalar_word(text), i + 1


def _scalar_word(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return Enum(text)
