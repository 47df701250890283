"""A small deterministic writer of protobuf text format (Triton's ``config.pbtxt``), with no protobuf
dependency at build time: the same message always gives byte-identical text, so generated
repositories can be golden-tested."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
