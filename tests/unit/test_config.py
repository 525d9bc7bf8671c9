"""Loading pipeline files: good files give the expected model, bad ones exact errors."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

import consumer_core.config as config_package
from consumer_core.config import (
    BridgeConfig,
    ConcurrencySpec,
    Ordering,
    RetrySpec,
    ServerConfig,
    StateConfig,
    TargetMode,
    TargetSpec,
    TenantFrom,
    load_config,
    load_config_text,
    parse_duration,
    schema,
)
from consumer_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))
DATA = Path(__file__).parent / "data" / "config"

MINIMAL = """\
version: 1
pipelines:
  - name: orders
    source: {type: embedded}
    target: {url: http://127.0.0.1:9000/orders}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors(path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The error lines for ``path``, with the file shown as ``FILE``."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p).replace(str(path), "FILE", 1) for p in info.value.problems]


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> BridgeConfig:
    return load_config(write(tmp_path, text), env={} if env is None else env)


# -- the public surface --------------------------------------------------------------------


def test_public_api_is_sorted_and_complete() -> None:
    assert config_package.__all__ == sorted(config_package.__all__)
    assert {"load_config", "load_config_text", "parse_duration", "schema"} <= set(
        config_package.__all__
    )


def test_schema_is_loaded_once() -> None:
    assert schema() is schema()
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1m30s", 90.0),
        ("20ms", 0.02),
        ("45", 45.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["3 parsecs", "-1s", "", "s", "30 s", -1, True])
def test_parse_duration_rejects(text: str | float) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


# -- good files ----------------------------------------------------------------------------


def test_there_is_one_example_per_source_type() -> None:
    assert [p.stem for p in EXAMPLES] == ["embedded", "kafka", "rabbitmq", "sqs"]
    assert schema()["$defs"]["source"]["properties"]["type"]["enum"] == [
        "embedded",
        "kafka",
        "rabbitmq",
        "sqs",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates(path: Path) -> None:
    config = load_config(path, env={})
    assert config.file == path
    assert config.pipelines
    assert {p.source.type for p in config.pipelines} == {path.stem}


def test_embedded_example() -> None:
    config = load_config(REPO / "configs/examples/embedded.yaml", env={})
    assert config.server == ServerConfig(host="127.0.0.1", port=8081, token=None)
    assert config.shutdown_timeout == 15.0
    (pipeline,) = config.pipelines
    assert pipeline.ordering is Ordering.NONE
    assert pipeline.source.options == {"max_body_bytes": 262144}
    assert pipeline.source.path == "pipelines[0].source"
    assert pipeline.target.mode is TargetMode.STRUCTURED
    assert pipeline.target.timeout == 10.0
    assert pipeline.retry == RetrySpec(max_attempts=3, initial_backoff=0.5, max_age=600.0)
    assert pipeline.concurrency == ConcurrencySpec(initial=4, min=1, max=64)
    assert pipeline.on_success[0].options == {"path": ".bridge/thumbnails.jsonl"}
    webhook = pipeline.on_failure[0]
    assert webhook.type == "webhook"
    assert webhook.path == "pipelines[0].on_failure[0]"
    assert webhook.options == {
        "url": "http://127.0.0.1:9100/thumbnail-failures",
        "headers": {"X-Source": "bridge"},
        "mode": "structured",
        "timeout": 10.0,
    }


def test_kafka_example() -> None:
    env = {"KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092", "BRIDGE_TOKEN": "t0ken"}
    config = load_config(REPO / "configs/examples/kafka.yaml", env=env)
    assert config.server.token == "t0ken"
    orders, clicks = config.pipelines
    assert orders.source.options == {
        "bootstrap_servers": "kafka-1:9092,kafka-2:9092",
        "topics": ["orders"],
        "group_id": "orders-bridge",
        "settings": {"client.id": "orders-bridge", "fetch.min.bytes": 1},
        "commit_interval": 2.0,
    }
    assert orders.tenant is not None
    assert orders.tenant.source is TenantFrom.HEADER
    assert orders.tenant.name == "x-tenant"
    assert orders.target.headers == {"Authorization": "Bearer dev"}
    assert orders.retry == RetrySpec(
        max_attempts=8, initial_backoff=0.25, max_backoff=60.0, max_age=7200.0
    )
    assert orders.isolation.enabled is True
    assert orders.isolation.options["error_rate"] == 0.3
    assert orders.isolation.options["window"] == 30.0
    assert orders.isolation.options["idle_reclaim"] == 300.0
    assert orders.on_failure[0].options["topic"] == "orders-dlq"
    assert orders.on_failure[0].options["settings"] == {}
    assert clicks.ordering is Ordering.PARTITION
    assert clicks.tenant is None
    assert clicks.target.mode is TargetMode.BATCH
    assert (clicks.target.batch_max_events, clicks.target.batch_max_wait) == (500, 0.05)
    assert clicks.on_success == clicks.on_failure == ()


def test_rabbitmq_example() -> None:
    config = load_config(REPO / "configs/examples/rabbitmq.yaml", env={})
    assert config.state == StateConfig(url="redis://127.0.0.1:6379/0")
    (pipeline,) = config.pipelines
    assert pipeline.source.options["key_header"] == "customer-id"
    assert pipeline.source.options["declare"] is True
    assert pipeline.tenant is not None
    assert (pipeline.tenant.source, pipeline.tenant.path) == (TenantFrom.JSON, "$.account.id")
    assert pipeline.retry.max_backoff == 120.0
    assert [s.options["routing_key"] for s in pipeline.on_failure[:1]] == ["invoice.failed"]
    assert pipeline.on_failure[1].options["mode"] == "binary"


def test_sqs_example_takes_addresses_from_the_environment() -> None:
    env = {"AWS_REGION": "us-west-2", "AWS_ENDPOINT_URL": "http://moto:5000"}
    config = load_config(REPO / "configs/examples/sqs.yaml", env=env)
    (pipeline,) = config.pipelines
    assert pipeline.source.options["region"] == "us-west-2"
    assert pipeline.source.options["endpoint_url"] == "http://moto:5000"
    assert pipeline.source.options["wait_time"] == 10.0
    assert pipeline.source.options["visibility_timeout"] == 120.0
    assert pipeline.tenant is not None
    assert pipeline.tenant.source is TenantFrom.KEY
    assert pipeline.on_success[0].options == {
        "event_bus_name": "shipments",
        "region": "us-west-2",
        "endpoint_url": "http://moto:5000",
    }


def test_minimal_file_gets_the_schema_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert config.server == ServerConfig()
    assert config.state == StateConfig()
    assert config.shutdown_timeout == 30.0
    (pipeline,) = config.pipelines
    # The dataclass defaults and the schema defaults must not drift apart.
    assert pipeline.target == TargetSpec(url="http://127.0.0.1:9000/orders")
    assert pipeline.concurrency == ConcurrencySpec()
    assert pipeline.retry == RetrySpec()
    assert pipeline.ordering is Ordering.KEY
    assert pipeline.isolation.enabled is False
    assert pipeline.isolation.options == {
        "window": 30.0,
        "min_samples": 20,
        "error_rate": 0.5,
        "throttle_rate": 0.2,
        "latency_factor": 5.0,
        "inflight_share": 0.5,
        "backlog_share": 0.5,
        "max_share": 0.25,
        "spill_after": 1000,
        "spill_by_reference": True,
        "idle_reclaim": 300.0,
    }
    assert pipeline.source.options == {"max_body_bytes": 1048576}
    assert pipeline.schema is None
    assert pipeline.tenant is None
    assert (pipeline.on_success, pipeline.on_failure) == ((), ())
    assert dataclasses.replace(config, file=Path("x")).file == Path("x")


def test_env_substitution_types_plain_scalars(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        version: 1
        server:
          listen: ${LISTEN:-0.0.0.0:0}
          token: ${BRIDGE_TOKEN:-}
        pipelines:
          - name: ${NAME:-orders}
            source:
              type: embedded
              max_body_bytes: ${MAX_BODY}
            target:
              url: http://${FN_HOST:-127.0.0.1}:9000/$$literal
              timeout: ${TIMEOUT:-2}
              headers:
                X-Limit: "${LIMIT:-512}"
            concurrency:
              max: ${MAX:-512}
            isolation:
              enabled: ${ISOLATE:-true}
              error_rate: ${RATE:-0.25}
        """,
        env={"MAX_BODY": "2048", "NAME": "", "ISOLATE": "false"},
    )
    assert (config.server.host, config.server.port, config.server.token) == ("0.0.0.0", 0, None)
    (pipeline,) = config.pipelines
    assert pipeline.name == "orders"  # ":-" also replaces an empty value
    assert pipeline.source.options["max_body_bytes"] == 2048
    assert pipeline.target.url == "http://127.0.0.1:9000/$literal"
    assert pipeline.target.timeout == 2.0
    assert pipeline.target.headers == {"X-Limit": "512"}  # quoted: stays a string
    assert pipeline.concurrency.max == 512
    assert pipeline.isolation.enabled is False
    assert pipeline.isolation.options["error_rate"] == 0.25


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TEST_FN_URL", "http://fn.internal:8080/orders")
    text = MINIMAL.replace(
        "{url: http://127.0.0.1:9000/orders}", "\n      url: ${BRIDGE_TEST_FN_URL}"
    )
    assert load_config_text(text).pipelines[0].target.url == "http://fn.internal:8080/orders"


def test_references_inside_flow_collections_get_a_hint() -> None:
    text = MINIMAL.replace("http://127.0.0.1:9000/orders", "${FN_URL}")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env={"FN_URL": "http://x"})
    assert str(info.value) == (
        "<string>:5: invalid YAML: expected ',' or '}', but got '{' "
        '(inside {...} or [...], quote "${VAR}" or use block style)'
    )
    quoted = MINIMAL.replace("http://127.0.0.1:9000/orders", '"${FN_URL}"')
    assert (
        load_config_text(quoted, env={"FN_URL": "http://x"}).pipelines[0].target.url == "http://x"
    )


def test_merge_keys_and_anchors(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        version: 1
        pipelines:
          - name: a
            source: {type: embedded}
            target: &target
              url: http://127.0.0.1:9000/a
              timeout: 5s
          - name: b
            source: {type: embedded}
            target:
              <<: *target
              timeout: 1s
        """,
    )
    a, b = config.pipelines
    assert (a.target.url, a.target.timeout) == ("http://127.0.0.1:9000/a", 5.0)
    assert (b.target.url, b.target.timeout) == ("http://127.0.0.1:9000/a", 1.0)


def test_payload_schema_is_resolved_next_to_the_file() -> None:
    config = load_config(DATA / "good-with-schema.yaml", env={})
    assert config.pipelines[0].schema == (DATA / "order.schema.json").resolve()
    text = MINIMAL + "    schema: order.schema.json\n"
    from_text = load_config_text(text, base_dir=DATA, env={})
    assert from_text.file == Path("<string>")
    assert from_text.pipelines[0].schema == (DATA / "order.schema.json").resolve()


def test_integral_floats_become_ints(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "    concurrency: {max: 64.0}\n")
    assert config.pipelines[0].concurrency.max == 64
    assert isinstance(config.pipelines[0].concurrency.max, int)


def test_ipv6_listen_address(tmp_path: Path) -> None:
    config = load(tmp_path, 'server: {listen: "[::1]:9090"}\n' + MINIMAL)
    assert (config.server.host, config.server.port) == ("::1", 9090)
    assert "t0ken" not in repr(load(tmp_path, "server: {token: t0ken}\n" + MINIMAL).server)


# -- bad files -----------------------------------------------------------------------------

BAD = sorted((DATA / "bad").glob("*.yaml"))


def test_golden_cases_are_all_there() -> None:
    assert [p.stem for p in BAD] == [
        "bad-duration",
        "bad-enum",
        "bounds",
        "duplicate-keys",
        "duplicate-names",
        "empty-file",
        "malformed-yaml",
        "missing-required",
        "several-errors",
        "unknown-key",
        "wrong-types",
    ]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_gives_exactly_the_expected_lines(path: Path) -> None:
    """Each ``bad/<case>.yaml`` has its expected error lines in ``bad/<case>.txt``."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    got = [str(p).replace(f"{path.parent}/", "", 1) for p in info.value.problems]
    assert got == path.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    lines = [p.line or 0 for p in info.value.problems]
    assert lines == sorted(lines)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (problem,) = info.value.problems
    assert problem.line is None
    assert str(problem) == f"{missing}: cannot read the file: No such file or directory"


def test_missing_top_level_keys(tmp_path: Path) -> None:
    assert errors(write(tmp_path, "server: {}\n")) == [
        "FILE:1: missing required key 'pipelines'",
        "FILE:1: missing required key 'version'",
    ]
    assert errors(write(tmp_path, "version: 1\npipelines: []\n")) == [
        "FILE:2: pipelines: must not be empty"
    ]


def test_missing_env_var_never_leaks_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        pipelines:
          - name: orders
            source: {type: embedded}
            target:
              url: http://127.0.0.1:9000/orders
              timeout: ${TIMEOUT}
              headers:
                Authorization: Bearer ${FN_TOKEN}
                X-Api-Key: ${API_KEY}
            concurrency:
              max: ${MAX}
        """,
    )
    env = {"TIMEOUT": "hunter2", "API_KEY": "hunter2-key", "MAX": "hunter2-max"}
    lines = errors(path, env)
    assert lines == [
        "FILE:7: pipelines[0].target.timeout: the value of ${TIMEOUT} is not a duration",
        "FILE:9: pipelines[0].target.headers.Authorization: "
        "environment variable FN_TOKEN is not set",
        "FILE:12: pipelines[0].concurrency.max: the value of ${MAX} is not an integer",
    ]
    assert not any("hunter2" in line for line in lines)


def test_malformed_reference(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    schema: ${not valid}.json\n")
    assert errors(path) == [
        "FILE:6: pipelines[0].schema: malformed ${...} reference (write $$ for a literal $)"
    ]


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("localhost", "'localhost' is not host:port (port 0-65535)"),
        ("127.0.0.1:65536", "'127.0.0.1:65536' is not host:port (port 0-65535)"),
        (":8081", "':8081' is not host:port (port 0-65535)"),
    ],
)
def test_bad_listen_address(tmp_path: Path, listen: str, message: str) -> None:
    path = write(tmp_path, f"server:\n  listen: '{listen}'\n" + MINIMAL)
    assert errors(path) == [f"FILE:2: server.listen: {message}"]


def test_bad_state_url(tmp_path: Path) -> None:
    path = write(tmp_path, "state: {url: 'mysql://db'}\n" + MINIMAL)
    (line,) = errors(path)
    assert line.startswith("FILE:1: state.url: 'mysql://db' does not match ^(sqlite:///|")


def test_payload_schema_must_exist_and_be_valid(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "list.json").write_text("[1]", encoding="utf-8")
    (tmp_path / "wrong.json").write_bytes((DATA / "not-a-schema.json").read_bytes())
    second = MINIMAL.split("\n", 2)[2]
    text = MINIMAL + "    schema: missing.json\n"
    for index, name in enumerate(["broken.json", "list.json", "wrong.json"], start=1):
        text += second.replace("orders", f"p{index}") + f"    schema: {name}\n"
    lines = errors(write(tmp_path, text))
    assert lines[:3] == [
        "FILE:6: pipelines[0].schema: schema file 'missing.json' does not exist",
        "FILE:10: pipelines[1].schema: schema file 'broken.json' is not valid JSON: "
        "Expecting property name enclosed in double quotes (line 1)",
        "FILE:14: pipelines[2].schema: schema file 'list.json' is not a JSON Schema "
        "(expected an object)",
    ]
    assert lines[3].startswith(
        "FILE:18: pipelines[3].schema: schema file 'wrong.json' is not a valid JSON Schema: "
        "'objekt' is not valid under any of the given schemas"
    )
    assert len(lines) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a: 1\n---\nb: 2\n",
            "<string>:2: invalid YAML: expected a single document in the "
            "stream, but found another document",
        ),
        ("version: !int 1\npipelines: [x]\n", "<string>:1: version: unsupported YAML tag '!int'"),
        (
            "version: 1\npipelines: *nowhere\n",
            "<string>:2: invalid YAML: found undefined alias 'nowhere'",
        ),
    ],
)
def test_yaml_oddities(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env={})
    assert str(info.value.problems[0]) == message


def test_load_config_text_names_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("version: 1\n", file="inline.yaml", env={})
    assert str(info.value) == "inline.yaml:1: missing required key 'pipelines'"
