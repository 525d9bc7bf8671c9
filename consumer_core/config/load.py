"""Read a pipeline file and turn it into a :class:`BridgeConfig`.

The pipeline: compose the YAML (keeping line marks) → build plain values, replacing
``${VAR}`` / ``${VAR:-default}`` in every string value before its YAML type is
decided → validate against the JSON Schema → fill defaults and convert durations →
cross-key checks → the frozen model. Every step collects problems instead of
stopping at the first one; a :class:`ConfigError` carries them all, sorted by line.

Values taken from the environment never appear in a message: the message names the
variable instead (``the value of ${FN_TOKEN}``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from consumer_core.config.model import (
    BridgeConfig,
    ComponentSpec,
    ConcurrencySpec,
    IsolationSpec,
    Ordering,
    PipelineConfig,
    RetrySpec,
    ServerConfig,
    StateConfig,
    TargetMode,
    TargetSpec,
    TenantFrom,
    TenantSpec,
    TlsSpec,
)
from consumer_core.config.validate import (
    Issue,
    JsonPath,
    complete,
    literal,
    schema_issues,
    semantic_issues,
    split_listen,
)
from consumer_core.errors import ConfigError, ConfigProblem

__all__ = ["load_config", "load_config_text", "render_path"]

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

_Pairs = list[tuple[Node, Node]]


def render_path(path: JsonPath) -> str:
    """``("pipelines", 0, "target", "timeout")`` → ``pipelines[0].target.timeout``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


class _Tree:
    """Plain Python values from a YAML node tree, plus where each path was written."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[JsonPath, int] = {}
        self.secrets: dict[JsonPath, tuple[str, ...]] = {}
        """Paths whose value holds text from the environment → the variables' names."""
        self.unresolved: set[JsonPath] = set()
        """Paths whose substitution failed; other checks stay quiet about them."""
        self.problems: list[tuple[Issue, int | None]] = []
        self._open: set[int] = set()
        self._constructor = SafeConstructor()
        self._resolver = Resolver()

    def show(self, path: JsonPath, value: object, text: str | None = None) -> str:
        names = self.secrets.get(path)
        if names:
            return "the value of " + " and ".join(f"${{{name}}}" for name in names)
        return literal(value) if text is None else text

    def value(self, node: Node, path: JsonPath) -> Any:
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            self.problems.append((Issue(path, "recursive alias"), None))
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            return None
        finally:
            self._open.discard(id(node))

    def _sequence(self, node: SequenceNode, path: JsonPath) -> list[Any]:
        items = []
        for index, item in enumerate(node.value):
            self.lines[(*path, index)] = item.start_mark.line + 1
            items.append(self.value(item, (*path, index)))
        return items

    def _mapping(self, node: MappingNode, path: JsonPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first: dict[str, int] = {}
        explicit, merged = self._entries(node, path)
        for key_node, value_node in explicit:
            key, line = self._key(key_node, path), key_node.start_mark.line + 1
            if key is None:
                continue
            if key in first:
                issue = Issue((*path, key), f"duplicate key (first on line {first[key]})")
                self.problems.append((issue, line))
                continue
            first[key] = line
            self.lines[(*path, key)] = line
            result[key] = self.value(value_node, (*path, key))
        for key_node, value_node in merged:
            key = self._key(key_node, path)
            if key is not None and key not in result:
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                result[key] = self.value(value_node, (*path, key))
        return result

    def _entries(self, node: MappingNode, path: JsonPath) -> tuple[_Pairs, _Pairs]:
        """Explicit pairs, and the pairs ``<<`` merges in (first source wins)."""
        explicit: _Pairs = []
        merged: _Pairs = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.problems.append((Issue(path, "'<<' can only merge mappings"), None))
                    continue
                more, deeper = self._entries(source, path)
                merged += more + deeper
        return explicit, merged

    def _key(self, node: Node, path: JsonPath) -> str | None:
        if isinstance(node, ScalarNode):
            return str(node.value)
        self.problems.append((Issue(path, "mapping keys must be plain strings"), None))
        return None

    def _scalar(self, node: ScalarNode, path: JsonPath) -> Any:
        if node.tag == _STR and "$" in node.value:
            text = self._substitute(node.value, path)
            if path in self.unresolved or node.style is not None or not text:
                return text
            # A plain scalar: its YAML type is decided after substitution.
            tag: str = self._resolver.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
            node = ScalarNode(tag, text)
        if node.tag == _TIMESTAMP:
            return node.value
        try:
            return self._constructor.construct_object(node)
        except ConstructorError:
            self._fail(path, f"unsupported YAML tag {node.tag!r}")
            return node.value

    def _substitute(self, text: str, path: JsonPath) -> str:
        used: dict[str, None] = {}

        def replace(match: re.Match[str]) -> str:
            name, default = match["name"], match["default"]
            if match[0] == "$$":
                return "$"
            if name is None:
                self._fail(path, "malformed ${...} reference (write $$ for a literal $)")
                return match[0]
            value = self.env.get(name)
            if default is not None and not value:
                return default
            if value is None:
                self._fail(path, f"environment variable {name} is not set")
                return match[0]
            used[name] = None
            return value

        result = _VARIABLE.sub(replace, text)
        if used:
            self.secrets[path] = tuple(used)
        return result

    def _fail(self, path: JsonPath, message: str) -> None:
        self.unresolved.add(path)
        self.problems.append((Issue(path, message), None))


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Load and validate a pipeline file; raise :class:`ConfigError` listing every problem."""
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigProblem(file, None, "", f"cannot read the file: {reason}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(file, None, "", "the file is not UTF-8 text")]) from None
    return load_config_text(text, file=file, base_dir=Path(file).resolve().parent, env=env)


def load_config_text(
    text: str,
    *,
    file: str = "<string>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> BridgeConfig:
    """Like :func:`load_config` for text; ``file`` names it in messages, ``base_dir``
    (default: the working directory) is where relative ``schema:`` paths start."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "cannot be parsed"
        if exc.problem and exc.context and not exc.context.startswith("while"):
            reason = f"{exc.context}, {exc.problem}"  # "expected a single document ..."
        message = f"invalid YAML: {reason}{_flow_hint(text, line)}"
        raise ConfigError([ConfigProblem(file, line, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"invalid YAML: {exc}")]) from None
    tree = _Tree(os.environ if env is None else env)
    tree.lines[()] = node.start_mark.line + 1 if node is not None else 1
    data = tree.value(node, ()) if node is not None else None
    base = (Path.cwd() if base_dir is None else base_dir).resolve()

    checked = schema_issues(data, tree.show)
    data = complete(data)
    checked += semantic_issues(data, base, tree.show)
    found = tree.problems + [(i, None) for i in checked if i.path not in tree.unresolved]
    problems: dict[ConfigProblem, None] = {}
    for issue, line in found:
        where = _line(tree.lines, issue.path) if line is None else line
        problems[ConfigProblem(file, where, render_path(issue.path), issue.message)] = None
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.path, p.message)))
    return _build(data, Path(file), base)


def _flow_hint(text: str, line: int | None) -> str:
    """``{url: ${X}}`` is not YAML: ``{`` ends a plain scalar inside ``{...}``/``[...]``."""
    rows = text.splitlines()
    if line is None or not 0 < line <= len(rows) or "${" not in rows[line - 1]:
        return ""
    return ' (inside {...} or [...], quote "${VAR}" or use block style)'


def _line(lines: Mapping[JsonPath, int], path: JsonPath) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


# -- the typed view ---------------------------------------------------------------------


def _build(data: dict[str, Any], file: Path, base_dir: Path) -> BridgeConfig:
    server = data["server"]
    host, port = split_listen(server["listen"])
    return BridgeConfig(
        file=file,
        version=data["version"],
        server=ServerConfig(host=host, port=port, token=server["token"] or None),
        state=StateConfig(
            url=data["state"]["url"],
            dedup_window=data["state"]["dedup_window"],
            retention=data["state"]["retention"],
            instance=data["state"]["instance"],
        ),
        shutdown_timeout=data["shutdown_timeout"],
        pipelines=tuple(
            _pipeline(pipeline, f"pipelines[{index}]", base_dir)
            for index, pipeline in enumerate(data["pipelines"])
        ),
    )


def _component(spec: dict[str, Any], path: str, base_dir: Path) -> ComponentSpec:
    options = {key: value for key, value in spec.items() if key != "type"}
    if isinstance(options.get("tls"), dict):
        options["tls"] = tls_spec(options["tls"], base_dir)
    return ComponentSpec(type=spec["type"], options=options, path=path)


def tls_spec(data: dict[str, Any], base_dir: Path) -> TlsSpec:
    """A ``tls:`` block with its files resolved against the pipeline file's folder."""

    def resolve(key: str) -> Path | None:
        return (base_dir / data[key]).resolve() if data.get(key) else None

    return TlsSpec(
        ca_file=resolve("ca_file"),
        cert_file=resolve("cert_file"),
        key_file=resolve("key_file"),
        verify=bool(data.get("verify", True)),
    )


def _pipeline(data: dict[str, Any], path: str, base_dir: Path) -> PipelineConfig:
    target, isolation, tenant = data["target"], data["isolation"], data.get("tenant")
    return PipelineConfig(
        name=data["name"],
        source=_component(data["source"], f"{path}.source", base_dir),
        target=TargetSpec(
            type=target["type"],
            url=target["url"],
            timeout=target["timeout"],
            mode=TargetMode(target["mode"]),
            batch_max_events=target["batch"]["max_events"],
            batch_max_wait=target["batch"]["max_wait"],
            headers=dict(target["headers"]),
            tls=tls_spec(target.get("tls", {}), base_dir),
        ),
        ordering=Ordering(data["ordering"]),
        tenant=None
        if tenant is None
        else TenantSpec(
            source=TenantFrom(tenant["from"]), name=tenant.get("name"), path=tenant.get("path")
        ),
        schema=(base_dir / data["schema"]).resolve() if "schema" in data else None,
        concurrency=ConcurrencySpec(**data["concurrency"]),
        retry=RetrySpec(**data["retry"]),
        isolation=IsolationSpec(
            enabled=isolation["enabled"],
            options={key: value for key, value in isolation.items() if key != "enabled"},
        ),
        on_success=tuple(
            _component(sink, f"{path}.on_success[{index}]", base_dir)
            for index, sink in enumerate(data["on_success"])
        ),
        on_failure=tuple(
            _component(sink, f"{path}.on_failure[{index}]", base_dir)
            for index, sink in enumerate(data["on_failure"])
        ),
    )
