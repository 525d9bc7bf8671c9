"""Check a parsed pipeline file against the JSON Schema, then complete it.

Three steps, all driven by ``configs/schema/bridge-v1.schema.json``:

* :func:`schema_issues` runs ``Draft202012Validator`` (with a ``duration`` format)
  and turns every error into one short, human message.
* :func:`complete` fills in the schema's ``default`` values and turns every value
  whose schema says ``format: duration`` into float seconds, generically, so
  connector options arrive ready to use.
* :func:`semantic_issues` checks what the schema cannot say (unique names,
  ordered bounds, the payload schema file, ``host:port``).

Issues carry the path as a tuple; the loader maps it to a line and renders it.
Values only reach a message through ``show`` so that the loader can keep values
that came from the environment out of every message.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from jsonschema import (
    Draft202012Validator,
    FormatChecker,
    SchemaError,
    validators,
)

from consumer_core.config.durations import format_seconds, is_duration, parse_duration

__all__ = [
    "Issue",
    "JsonPath",
    "Show",
    "complete",
    "literal",
    "schema",
    "schema_issues",
    "semantic_issues",
    "split_listen",
]

JsonPath = tuple[str | int, ...]


class Show(Protocol):
    """Renders the value found at ``path`` for a message.

    Gives ``text`` (or the YAML-like :func:`literal` of ``value``), unless the value
    came from the environment: then only the variable's name is shown.
    """

    def __call__(self, path: JsonPath, value: object, text: str | None = None) -> str: ...


class Issue(NamedTuple):
    """One problem at ``path``; the loader adds the file and the line."""

    path: JsonPath
    message: str


@functools.cache
def schema() -> dict[str, Any]:
    """The pipeline file's JSON Schema (loaded once)."""
    resource = files("configs") / "schema" / "bridge-v1.schema.json"
    loaded: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return loaded


@functools.cache
def _validator() -> Draft202012Validator:
    checker = FormatChecker(formats=())
    checker.checks("duration")(_duration_format)
    return Draft202012Validator(schema(), format_checker=checker)


def _duration_format(instance: object) -> bool:
    # Wrong types are the ``type`` keyword's business; bool is never a number here.
    if isinstance(instance, bool) or not isinstance(instance, str | int | float):
        return True
    return is_duration(instance)


# -- rendering jsonschema errors ----------------------------------------------------

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def literal(value: object) -> str:
    """A value as it would be written in YAML, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _kind(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return literal(value)


def _expected(types: str | list[str]) -> str:
    names = [_TYPE_NAMES.get(t, t) for t in ([types] if isinstance(types, str) else types)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _type_message(error: Any, path: JsonPath, show: Show) -> str:
    value = error.instance
    is_duration = error.schema.get("format") == "duration"
    wanted = "a duration" if is_duration else _expected(error.validator_value)
    if value is None or isinstance(value, dict | list):
        return f"expected {wanted}, got {_kind(value)}"
    return f"{show(path, value)} is not {wanted}"


def _render(error: Any, show: Show) -> Iterator[Issue]:
    path: JsonPath = tuple(error.absolute_path)
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "additionalProperties" and isinstance(value, dict):
        known = error.schema.get("properties", {})
        allowed = ", ".join(sorted(known))
        for key in sorted(k for k in value if k not in known):
            yield Issue((*path, key), f"unknown key (expected one of: {allowed})")
    elif keyword == "required" and isinstance(value, dict):
        for key in expected:
            if key not in value:
                yield Issue(path, f"missing required key {key!r}")
    elif keyword == "type":
        yield Issue(path, _type_message(error, path, show))
    else:
        yield Issue(path, _other_message(keyword, expected, show(path, value)))


def _other_message(keyword: str, expected: Any, shown: str) -> str:
    if keyword == "format":
        return f"{shown} is not a {expected}"
    if keyword == "enum":
        return f"{shown} is not one of: {', '.join(str(v) for v in expected)}"
    if keyword == "const":
        return f"expected {literal(expected)}, got {shown}"
    if keyword == "pattern":
        return f"{shown} does not match {expected}"
    if keyword == "minimum":
        return f"{shown} is less than the minimum {expected}"
    if keyword == "maximum":
        return f"{shown} is greater than the maximum {expected}"
    if keyword in ("minItems", "minLength"):
        return "must not be empty" if expected == 1 else f"needs a length of at least {expected}"
    # Not used by our schema today; jsonschema's own text would echo the value.
    return f"{shown} fails the {keyword!r} rule"


def schema_issues(data: object, show: Show) -> list[Issue]:
    """Every schema violation in ``data``, one issue per problem."""
    errors = list(_validator().iter_errors(data))
    # A value of the wrong type also fails its format/enum/pattern: report the type only.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    issues: dict[Issue, None] = {}
    for error in errors:
        if error.validator != "type" and tuple(error.absolute_path) in mistyped:
            continue
        issues.update(dict.fromkeys(_render(error, show)))
    return list(issues)


# -- defaults and durations -------------------------------------------------------------


def _resolve(ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, got {ref!r}")
    node: Any = schema()
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node  # type: ignore[no-any-return]


def _expand(sub: Mapping[str, Any], value: object) -> list[Mapping[str, Any]]:
    """``sub`` plus every schema that applies to ``value`` through $ref, allOf, if/then."""
    found = [sub]
    if "$ref" in sub:
        found += _expand(_resolve(sub["$ref"]), value)
    for part in sub.get("allOf", ()):
        found += _expand(part, value)
    if "if" in sub:
        branch = "then" if Draft202012Validator(sub["if"]).is_valid(value) else "else"
        if branch in sub:
            found += _expand(sub[branch], value)
    return found


def _children(parts: list[Mapping[str, Any]], key: str) -> Mapping[str, Any]:
    named = [p["properties"][key] for p in parts if key in p.get("properties", {})]
    if named:
        return {"allOf": named}
    extra = [
        p["additionalProperties"] for p in parts if isinstance(p.get("additionalProperties"), dict)
    ]
    return {"allOf": extra}


def complete(value: Any, sub: Mapping[str, Any] | None = None) -> Any:
    """Fill in defaults and convert durations to seconds, walking ``value`` and the schema.

    Works on invalid data too (it only touches what fits), so semantic checks can
    run on completed data alongside schema errors. Mutates mappings and lists in place.
    """
    parts = _expand(schema() if sub is None else sub, value)
    if any(p.get("format") == "duration" for p in parts) and is_duration(value):
        return parse_duration(value)
    if "integer" in [p.get("type") for p in parts] and isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        for part in parts:
            for key, prop in part.get("properties", {}).items():
                if key not in value and "default" in prop:
                    value[key] = copy.deepcopy(prop["default"])
        parts = _expand(schema() if sub is None else sub, value)
        for key in list(value):
            value[key] = complete(value[key], _children(parts, key))
    elif isinstance(value, list):
        items = {"allOf": [p["items"] for p in parts if isinstance(p.get("items"), dict)]}
        value[:] = [complete(item, items) for item in value]
    return value


# -- what the schema cannot express ---------------------------------------------------


def split_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:8081`` for IPv6); raise ``ValueError`` if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or int(port) > 65535:
        raise ValueError("bad host or port")
    return host, int(port)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ordered(
    where: JsonPath, block: object, names: tuple[str, ...], show: Show, durations: bool
) -> Iterator[Issue]:
    if not isinstance(block, dict) or not all(_number(block.get(n)) for n in names):
        return
    values = [block[n] for n in names]
    if all(a <= b for a, b in itertools.pairwise(values)):
        return
    got = ", ".join(
        f"{n} {show((*where, n), v, format_seconds(v) if durations else None)}"
        for n, v in zip(names, values, strict=True)
    )
    yield Issue(where, f"needs {' <= '.join(names)}, got {got}")


def _schema_file(where: JsonPath, value: object, base_dir: Path, show: Show) -> Iterator[Issue]:
    if not isinstance(value, str) or not value:
        return
    shown = show(where, value)
    target = base_dir / value
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        yield Issue(where, f"schema file {shown} does not exist")
        return
    except (OSError, UnicodeDecodeError):
        yield Issue(where, f"schema file {shown} cannot be read")
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Issue(where, f"schema file {shown} is not valid JSON: {exc.msg} (line {exc.lineno})")
        return
    if isinstance(document, bool):
        return
    if not isinstance(document, dict):
        yield Issue(where, f"schema file {shown} is not a JSON Schema (expected an object)")
        return
    try:
        validators.validator_for(document, default=Draft202012Validator).check_schema(document)
    except SchemaError as exc:
        yield Issue(where, f"schema file {shown} is not a valid JSON Schema: {exc.message}")


def _pipeline_issues(index: int, pipeline: object, base_dir: Path, show: Show) -> Iterator[Issue]:
    if not isinstance(pipeline, dict):
        return
    where: JsonPath = ("pipelines", index)
    bounds = ("min", "initial", "max")
    yield from _ordered((*where, "concurrency"), pipeline.get("concurrency"), bounds, show, False)
    backoffs = ("initial_backoff", "max_backoff")
    yield from _ordered((*where, "retry"), pipeline.get("retry"), backoffs, show, True)
    if "schema" in pipeline:
        yield from _schema_file((*where, "schema"), pipeline["schema"], base_dir, show)


def semantic_issues(data: object, base_dir: Path, show: Show) -> list[Issue]:
    """Rules across keys, on completed data; tolerant of data that failed the schema."""
    if not isinstance(data, dict):
        return []
    issues: list[Issue] = []
    server = data.get("server")
    listen = server.get("listen") if isinstance(server, dict) else None
    if isinstance(listen, str):
        try:
            split_listen(listen)
        except ValueError:
            path: JsonPath = ("server", "listen")
            issues.append(Issue(path, f"{show(path, listen)} is not host:port (port 0-65535)"))
    pipelines = data.get("pipelines")
    if not isinstance(pipelines, list):
        return issues
    first: dict[str, int] = {}
    for index, pipeline in enumerate(pipelines):
        name = pipeline.get("name") if isinstance(pipeline, dict) else None
        if isinstance(name, str) and name in first:
            where: JsonPath = ("pipelines", index, "name")
            message = f"duplicate pipeline name {show(where, name)} (also pipelines[{first[name]}])"
            issues.append(Issue(where, message))
        elif isinstance(name, str):
            first[name] = index
        issues.extend(_pipeline_issues(index, pipeline, base_dir, show))
    return issues
