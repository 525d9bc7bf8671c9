"""Render the pipeline file reference (``docs/reference/pipeline.md``) from the schema.

    python -m consumer_core.config.docgen            # rewrite the checked-in file
    python -m consumer_core.config.docgen --check    # exit 1 if it is out of date

One section per object (key, type, default, description), one per source and sink
kind. The schema is the only input, so the page cannot drift from what is validated.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from consumer_core.config.validate import schema

__all__ = ["DEFAULT_OUTPUT", "main", "render"]

DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "reference" / "pipeline.md"

_Schema = Mapping[str, Any]
_HEADER = (
    "<!-- Generated from configs/schema/bridge-v1.schema.json by "
    "`python -m consumer_core.config.docgen`. Do not edit by hand. -->"
)


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "top-level"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: object) -> str:
    text = value if isinstance(value, str) and value else json.dumps(value)
    return f"`{text}`"


class _Renderer:
    def __init__(self, root: _Schema) -> None:
        self.root = root
        self.lines: list[str] = []
        self.anchors: dict[int, str] = {}
        """id() of an object schema already documented (or queued) → its anchor."""
        self.paths: dict[str, list[str]] = {}
        """Anchor → every path that holds that object (sinks sit in two lists)."""

    def resolve(self, sub: _Schema) -> _Schema:
        """``sub`` merged over the definition its ``$ref`` points to."""
        if "$ref" not in sub:
            return sub
        target: Any = self.root
        for part in sub["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return {**self.resolve(target), **{k: v for k, v in sub.items() if k != "$ref"}}

    def _target(self, sub: _Schema) -> _Schema:
        """The object behind ``sub`` itself (by identity), following ``$ref``."""
        while "$ref" in sub:
            target: Any = self.root
            for part in sub["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            sub = target
        return sub

    @staticmethod
    def _documented(sub: _Schema) -> bool:
        return "properties" in sub and sub.get("type") == "object"

    def _nested(self, prop: _Schema, path: str) -> tuple[_Schema, str] | None:
        """The object (or list of objects) a property holds, with its section path."""
        resolved = self.resolve(prop)
        if resolved.get("type") == "array" and isinstance(resolved.get("items"), Mapping):
            items = self._target(resolved["items"])
            return (items, f"{path}[]") if self._documented(items) else None
        target = self._target(prop)
        return (target, path) if self._documented(target) else None

    def type_of(self, prop: _Schema, link: str | None = None) -> str:
        p = self.resolve(prop)
        if "const" in p:
            return _code(p["const"])
        if "enum" in p:
            return "one of " + ", ".join(_code(v) for v in p["enum"])
        if p.get("format") == "duration":
            return "duration"
        kind = p.get("type")
        if kind == "array":
            if link is not None:
                return f"list of mappings, see [below](#{link})"
            return f"list of {self.type_of(p.get('items', {}))}"
        if kind == "object":
            if link is not None:
                return f"mapping, see [below](#{link})"
            return f"map of string to {self.type_of(p.get('additionalProperties', {}))}"
        text = " or ".join(kind) if isinstance(kind, list) else str(kind or "any")
        return text + self._limits(p)

    @staticmethod
    def _limits(p: _Schema) -> str:
        notes = [f"matching `{p['pattern']}`"] if "pattern" in p else []
        if "minimum" in p and "maximum" in p:
            notes.append(f"{p['minimum']} to {p['maximum']}")
        elif "minimum" in p:
            notes.append(f"at least {p['minimum']}")
        if p.get("minLength") == 1:
            notes.append("not empty")
        return f" ({', '.join(notes)})" if notes else ""

    def table(
        self,
        sub: _Schema,
        path: str,
        queue: list[tuple[_Schema, str]],
        also_required: Sequence[str] = (),
    ) -> None:
        required = {*also_required, *sub.get("required", ())}
        self.lines += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
        for name, prop in sub.get("properties", {}).items():
            child = self._nested(prop, f"{path}.{name}" if path else name)
            link = None
            if child is not None:
                link = self.anchors.setdefault(id(child[0]), _slug(child[1]))
                self.paths.setdefault(link, []).append(child[1])
                if link == _slug(child[1]):
                    queue.append(child)
            if name in required:
                default = "**required**"
            else:
                default = _code(prop["default"]) if "default" in prop else ""
            row = [f"`{name}`", self.type_of(prop, link), default, prop.get("description", "")]
            self.lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
        self.lines.append("")

    def section(self, sub: _Schema, path: str) -> None:
        where = ", ".join(f"`{p}`" for p in self.paths.get(_slug(path), [path]))
        title = f"{sub['title']} ({where})" if "title" in sub else where
        self.lines += [f'<a id="{_slug(path)}"></a>', "", f"## {title}", ""]
        if "description" in sub:
            self.lines += [sub["description"], ""]
        queue: list[tuple[_Schema, str]] = []
        kinds = _kinds(sub)
        if kinds:
            self.kinds(sub, path, kinds, queue)
        else:
            self.table(sub, path, queue)
        for child, child_path in queue:
            self.section(child, child_path)

    def kinds(
        self, sub: _Schema, path: str, kinds: Sequence[tuple[str, _Schema]], queue: list[Any]
    ) -> None:
        names = ", ".join(_code(name) for name, _ in kinds)
        self.lines += [f"`type` chooses the kind: {names}. Each kind takes its own keys.", ""]
        for name, then in kinds:
            kind = self.resolve(then)
            self.lines += [f'<a id="{_slug(path)}-{name}"></a>', "", f"### `type: {name}`", ""]
            if "description" in kind:
                self.lines += [kind["description"], ""]
            self.table(kind, path, queue, sub.get("required", ()))


def _kinds(sub: _Schema) -> list[tuple[str, _Schema]]:
    """``(type, schema)`` for every ``if type == const then ...`` of a kind chooser."""
    found = []
    for part in sub.get("allOf", ()):
        const = part.get("if", {}).get("properties", {}).get("type", {}).get("const")
        if const is not None and "then" in part:
            found.append((str(const), part["then"]))
    return found


def render(document: _Schema | None = None) -> str:
    """The reference page for ``document`` (default: the bundled schema)."""
    root = schema() if document is None else document
    renderer = _Renderer(root)
    renderer.lines += [
        "# Pipeline file reference",
        "",
        _HEADER,
        "",
        root.get("description", ""),
        "",
        "Keys marked **required** must be present; the others take the default shown.",
        "",
        '<a id="top-level"></a>',
        "",
        "## Top level",
        "",
    ]
    queue: list[tuple[_Schema, str]] = []
    renderer.table(root, "", queue)
    for child, path in queue:
        renderer.section(child, path)
    return "\n".join(renderer.lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer_core.config.docgen")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write")
    args = parser.parse_args(argv)
    text = render()
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is out of date: run python -m consumer_core.config.docgen")
            return 1
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
