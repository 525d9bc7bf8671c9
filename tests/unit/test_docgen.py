"""The reference page is generated from the schema, and the schema documents itself."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from consumer_core.config import schema
from consumer_core.config.docgen import DEFAULT_OUTPUT, main, render

REPO = Path(__file__).resolve().parents[2]


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every subschema in the document, with a JSON-pointer-ish location."""
    if isinstance(node, Mapping):
        yield where, node
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    yield from walk(sub, f"{where}/{key}/{name}")
            elif key in ("items", "additionalProperties", "if", "then", "else"):
                yield from walk(value, f"{where}/{key}")
            elif key == "allOf":
                for index, sub in enumerate(value):
                    yield from walk(sub, f"{where}/allOf/{index}")


def is_kind_chooser(sub: Mapping[str, Any]) -> bool:
    return any("if" in part for part in sub.get("allOf", ()))


def test_checked_in_reference_is_up_to_date() -> None:
    assert DEFAULT_OUTPUT == REPO / "docs" / "reference" / "pipeline.md"
    assert DEFAULT_OUTPUT.read_text(encoding="utf-8") == render(), (
        "run: python -m consumer_core.config.docgen"
    )


def test_every_property_has_a_description() -> None:
    missing = [
        f"{where}/properties/{name}"
        for where, sub in walk(schema())
        for name, prop in sub.get("properties", {}).items()
        if "/if" not in where and not prop.get("description")
    ]
    assert missing == []


def test_every_object_rejects_unknown_keys() -> None:
    open_objects = [
        where
        for where, sub in walk(schema())
        if "properties" in sub
        and "/if" not in where
        and sub.get("additionalProperties") is not False
        and not is_kind_chooser(sub)
    ]
    assert open_objects == []


def test_kinds_are_chosen_by_if_then_not_one_of() -> None:
    document = schema()
    assert "oneOf" not in str(document)
    assert "anyOf" not in str(document)
    for chooser in ("source", "sink"):
        sub = document["$defs"][chooser]
        kinds = [part["if"]["properties"]["type"]["const"] for part in sub["allOf"]]
        assert kinds == sub["properties"]["type"]["enum"]
        for kind in kinds:
            definition = document["$defs"][f"{chooser}.{kind}"]
            assert definition["properties"]["type"] == {
                "description": "Selects this kind.",
                "const": kind,
            }
            assert f"`type: {kind}`" in render()


def test_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "pipeline.md"
    assert main(["--check", "--output", str(output)]) == 1
    assert "is out of date" in capsys.readouterr().out
    assert main(["--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == render()
    assert main(["--check", "--output", str(output)]) == 0
    output.write_text(render() + "\nedited by hand\n", encoding="utf-8")
    assert main(["--check", "--output", str(output)]) == 1


def test_rendering_escapes_table_cells() -> None:
    text = render(
        {
            "description": "Test.",
            "type": "object",
            "additionalProperties": False,
            "required": ["a"],
            "properties": {
                "a": {"description": "x | y\nz", "type": "string", "pattern": "^(p|q)$"},
                "b": {"description": "Seconds.", "type": "number", "format": "duration"},
                "c": {"description": "Map.", "type": "object", "default": {}},
            },
        }
    )
    assert "| `a` | string (matching `^(p\\|q)$`) | **required** | x \\| y z |" in text
    assert "| `b` | duration |  | Seconds. |" in text
    assert "| `c` | map of string to any | `{}` | Map. |" in text
