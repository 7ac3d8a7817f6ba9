"""docker-compose.yml, the collector configuration and rotel.env agree with each other and the code.

Docker cannot run in this test environment, so the compose file is checked
statically: service references, ports, environment variable names, pinned
images, collector pipelines, loopback-only published ports, secrets, health
checks and the rotel settings. Each check returns a list of problems. The
mutation tests break a copy of the configuration and expect the matching problem,
which shows that every check fails when its rule is broken. The dashboard's health
check command and the compose commands also run against the real CLI.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import opentelemetry.environment_variables
import opentelemetry.instrumentation.environment_variables
import opentelemetry.sdk.environment_variables
import pytest
import yaml

from kaygraph_otel.config import ENV_PREFIX, Settings
from kaygraph_otel_dashboard import cli
from kaygraph_otel_dashboard.cli import build_parser
from kaygraph_otel_dashboard.server import DEFAULT_PORT
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
COMPOSE_PATH = REPO / "docker-compose.yml"
COLLECTOR_PATH = REPO / "collector-config" / "otel-collector.yaml"
ROTEL_PATH = REPO / "collector-config" / "rotel.env"
DOCKERFILE_PATH = REPO / "Dockerfile"
CODE_DIRS = ("kaygraph_otel", "exporters", "dashboard")

COLLECTOR_SERVICE = "otel-collector"
DASHBOARD_SERVICE = "dashboard"
DEMO_SERVICE = "demo"
JAEGER_SERVICE = "jaeger"
JAEGER_OTLP_GRPC_PORT = 4317  # Jaeger all-in-one's OTLP/gRPC receiver
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
# Services without a Docker health check, and why.
HEALTHCHECK_EXEMPT = {
    COLLECTOR_SERVICE: "the contrib image has no shell or HTTP client to run a check with",
    DEMO_SERVICE: "a workflow runner with no server, and no service depends on it",
}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY", re.IGNORECASE)
ENV_NAME = re.compile(r"""["']((?:KAYGRAPH_OTEL|OTEL)_[A-Z0-9_]+)["']""")
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
COLLECTOR_VARIABLE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)")
VERSION_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)?([.-][0-9A-Za-z.-]+)?$")
MEBIBYTES = {"k": 1 / 1024, "m": 1, "g": 1024}
COMPOSE_TOKEN = "compose-token-0123456789"

Config = dict[str, Any]


@dataclasses.dataclass
class Configs:
    compose: Config
    collector: Config
    rotel: dict[str, str]
    dockerfile: str


def parse_env_file(text: str) -> dict[str, str]:
    """Parse KEY=VALUE lines, skipping blank lines and comments, as run-rotel.sh does."""
    values = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, separator, value = line.partition("=")
        assert separator, f"invalid line {line!r} in rotel.env: expected NAME=value"
        values[name] = value
    return values


def load_configs() -> Configs:
    return Configs(
        compose=yaml.safe_load(COMPOSE_PATH.read_text()),
        collector=yaml.safe_load(COLLECTOR_PATH.read_text()),
        rotel=parse_env_file(ROTEL_PATH.read_text()),
        dockerfile=DOCKERFILE_PATH.read_text(),
    )


def known_env_names() -> set[str]:
    """Environment variables that this project's code or the OpenTelemetry SDK reads."""
    names: set[str] = set()
    for directory in CODE_DIRS:
        for path in (REPO / directory).rglob("*.py"):
            names.update(ENV_NAME.findall(path.read_text()))
    names.update(ENV_PREFIX + field.name.upper() for field in dataclasses.fields(Settings))
    for module in (
        opentelemetry.environment_variables,
        opentelemetry.sdk.environment_variables,
        opentelemetry.instrumentation.environment_variables,
    ):
        names.update(
            value
            for value in vars(module).values()
            if isinstance(value, str) and value.startswith("OTEL_")
        )
    return names


def _services(compose: Config) -> dict[str, Config]:
    return dict(compose.get("services") or {})


def _environment(service: Config) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {name: str(value) for name, value in environment.items()}


def _depends_on(service: Config) -> dict[str, str]:
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {
        name: (spec or {}).get("condition", "service_started") for name, spec in depends_on.items()
    }


def _command(service: Config) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(arg) for arg in command]


def _option(command: list[str], name: str) -> str | None:
    if name in command and command.index(name) + 1 < len(command):
        return command[command.index(name) + 1]
    return None


def _host_port(endpoint: str) -> tuple[str, int]:
    """Split "host:port" or "scheme://host:port/..." into host and port."""
    parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    assert parts.hostname is not None and parts.port is not None, endpoint
    return parts.hostname, parts.port


def _urls(values: list[str]) -> list[str]:
    return [value for value in values if re.match(r"^[a-z][a-z0-9+.-]*://", value)]


def check_service_references(configs: Configs) -> list[str]:
    services = _services(configs.compose)
    problems = []
    for name, service in services.items():
        for target in _depends_on(service):
            if target not in services:
                problems.append(f"service {name!r} depends on unknown service {target!r}")
        values = list(_environment(service).values()) + _command(service)
        for url in _urls(values):
            host = urlsplit(url).hostname
            if host not in services:
                problems.append(f"service {name!r} names unknown host {host!r} in {url!r}")
    for exporter_name, exporter in (configs.collector.get("exporters") or {}).items():
        host, _ = _host_port(str(exporter.get("endpoint", "")))
        if host not in services:
            problems.append(f"collector exporter {exporter_name!r} sends to unknown host {host!r}")
    return problems


def _receiver_ports(collector: Config) -> dict[str, int]:
    protocols = collector["receivers"]["otlp"]["protocols"]
    return {name: _host_port(spec["endpoint"])[1] for name, spec in protocols.items()}


def _dashboard_exporter(collector: Config) -> Config:
    matches = [
        spec
        for name, spec in (collector.get("exporters") or {}).items()
        if name.split("/")[0] == "otlphttp" and name.endswith("dashboard")
    ]
    assert len(matches) == 1, "expected one otlphttp/dashboard exporter in the collector config"
    return matches[0]


def check_ports(configs: Configs) -> list[str]:
    services = _services(configs.compose)
    problems = []
    receivers = _receiver_ports(configs.collector)
    if receivers.get("grpc") != OTLP_GRPC_PORT or receivers.get("http") != OTLP_HTTP_PORT:
        problems.append(
            f"collector OTLP receivers listen on {receivers}, expected grpc {OTLP_GRPC_PORT} "
            f"and http {OTLP_HTTP_PORT}"
        )

    demo_endpoint = _environment(services[DEMO_SERVICE]).get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    host, port = _host_port(demo_endpoint) if demo_endpoint else ("", 0)
    # The demo exports with the OTLP/HTTP exporter, so it must reach the HTTP receiver.
    if host != COLLECTOR_SERVICE or port != receivers.get("http"):
        problems.append(
            f"demo OTEL_EXPORTER_OTLP_ENDPOINT {demo_endpoint!r} is not the collector's OTLP/HTTP "
            f"receiver http://{COLLECTOR_SERVICE}:{receivers.get('http')}"
        )

    dashboard = services[DASHBOARD_SERVICE]
    dashboard_port = _option(_command(dashboard), "--port") or str(DEFAULT_PORT)
    exporter_host, exporter_port = _host_port(_dashboard_exporter(configs.collector)["endpoint"])
    if exporter_host != DASHBOARD_SERVICE or str(exporter_port) != dashboard_port:
        problems.append(
            f"collector dashboard exporter sends to {exporter_host}:{exporter_port}, but the "
            f"dashboard listens on {DASHBOARD_SERVICE}:{dashboard_port}"
        )
    container_ports = [str(mapping).rsplit(":", 1)[-1] for mapping in dashboard.get("ports", [])]
    if dashboard_port not in container_ports:
        problems.append(f"dashboard port {dashboard_port} is not published: {container_ports}")
    health = " ".join(str(arg) for arg in (dashboard.get("healthcheck") or {}).get("test", []))
    if f":{dashboard_port}/" not in health:
        problems.append(f"dashboard health check does not probe port {dashboard_port}: {health!r}")

    jaeger_host, jaeger_port = _host_port(configs.collector["exporters"]["otlp/jaeger"]["endpoint"])
    if jaeger_host != JAEGER_SERVICE or jaeger_port != JAEGER_OTLP_GRPC_PORT:
        problems.append(
            f"collector Jaeger exporter sends to {jaeger_host}:{jaeger_port}, expected "
            f"{JAEGER_SERVICE}:{JAEGER_OTLP_GRPC_PORT}"
        )
    return problems


def check_environment_names(configs: Configs, known: set[str]) -> list[str]:
    services = _services(configs.compose)
    problems = []
    for name, service in services.items():
        ours = "build" in service
        for variable in _environment(service):
            project_prefixed = variable.startswith(("KAYGRAPH_OTEL_", "OTEL_"))
            if (ours or project_prefixed) and variable not in known:
                problems.append(f"service {name!r} sets {variable}, which no code reads")
    compose_text = yaml.safe_dump(configs.compose)
    for variable in set(COMPOSE_VARIABLE.findall(compose_text)):
        if variable not in known:
            problems.append(f"docker-compose.yml interpolates {variable}, which no code reads")
    collector_env = _environment(services.get(COLLECTOR_SERVICE, {}))
    for variable in set(COLLECTOR_VARIABLE.findall(yaml.safe_dump(configs.collector))):
        if variable not in collector_env:
            problems.append(
                f"the collector config reads ${{env:{variable}}}, which the "
                f"{COLLECTOR_SERVICE} service does not set"
            )
    return problems


def _image_problem(where: str, image: str) -> str | None:
    reference = image.split("@", 1)[0]
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return f"{where} image {image!r} has no tag; pin a version"
    if tag == "latest" or not VERSION_TAG.match(tag):
        return f"{where} image {image!r} is not pinned to a version tag"
    return None


def check_images(configs: Configs) -> list[str]:
    problems = []
    for name, service in _services(configs.compose).items():
        if "image" in service:
            problem = _image_problem(f"service {name!r}", str(service["image"]))
            if problem:
                problems.append(problem)
        elif "build" not in service:
            problems.append(f"service {name!r} has neither image nor build")
    for line in configs.dockerfile.splitlines():
        if line.strip().upper().startswith("FROM "):
            problem = _image_problem("Dockerfile", line.split()[1])
            if problem:
                problems.append(problem)
    return problems


def check_dockerfile(configs: Configs) -> list[str]:
    base = re.search(r"(?m)^FROM python:(\d+\.\d+)", configs.dockerfile)
    if base is None:
        return ["the Dockerfile's final stage must build FROM a versioned python image"]
    vendor = configs.dockerfile.find("./dashboard/static/vendor")
    install = configs.dockerfile.find("RUN pip install")
    if vendor < 0 or install < 0 or vendor > install:
        return [
            "the Dockerfile must copy the built static/vendor assets into "
            "./dashboard/static/vendor before `RUN pip install`, so the package data carries them"
        ]
    return []


def check_pipelines(configs: Configs) -> list[str]:
    collector = configs.collector
    problems = []
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    pipelines = (collector.get("service") or {}).get("pipelines") or {}
    if not pipelines:
        problems.append("the collector config defines no pipeline")
    for pipeline_name, pipeline in pipelines.items():
        for kind in used:
            for component in pipeline.get(kind) or []:
                used[kind].add(component)
                if component not in (collector.get(kind) or {}):
                    problems.append(
                        f"pipeline {pipeline_name!r} uses {kind[:-1]} {component!r}, "
                        f"which is not defined under {kind}"
                    )
        if not pipeline.get("receivers") or not pipeline.get("exporters"):
            problems.append(f"pipeline {pipeline_name!r} needs receivers and exporters")
        processors = pipeline.get("processors") or []
        if "memory_limiter" in processors and processors[0] != "memory_limiter":
            problems.append(f"pipeline {pipeline_name!r} must run memory_limiter first")
    for kind, names in used.items():
        for unused in set(collector.get(kind) or {}) - names:
            problems.append(f"{kind[:-1]} {unused!r} is defined but in no pipeline")
    for extension in (collector.get("service") or {}).get("extensions") or []:
        if extension not in (collector.get("extensions") or {}):
            problems.append(f"service extension {extension!r} is not defined under extensions")
    return problems


def check_published_ports(configs: Configs) -> list[str]:
    problems = []
    for name, service in _services(configs.compose).items():
        for mapping in service.get("ports") or []:
            if not str(mapping).startswith("127.0.0.1:"):
                problems.append(f"service {name!r} publishes {mapping!r} beyond 127.0.0.1")
    return problems


def check_secrets(configs: Configs) -> list[str]:
    problems = []
    for name, service in _services(configs.compose).items():
        for variable, value in _environment(service).items():
            if SECRET_NAME.search(variable) and not re.fullmatch(r"\$\{[^}]+\}", value):
                problems.append(
                    f"service {name!r} sets {variable} to a literal value; "
                    f"take it from the environment with ${{{variable}}}"
                )
    for exporter_name, exporter in (configs.collector.get("exporters") or {}).items():
        for header, value in (exporter.get("headers") or {}).items():
            if not COLLECTOR_VARIABLE.search(str(value)):
                problems.append(
                    f"collector exporter {exporter_name!r} header {header} holds a literal "
                    "value; read the secret with ${env:NAME}"
                )
    return problems


def check_healthchecks(configs: Configs) -> list[str]:
    services = _services(configs.compose)
    problems = []
    for name, service in services.items():
        if name not in HEALTHCHECK_EXEMPT and not service.get("healthcheck"):
            problems.append(f"service {name!r} has no healthcheck")
        for target, condition in _depends_on(service).items():
            if condition == "service_healthy" and not services.get(target, {}).get("healthcheck"):
                problems.append(
                    f"service {name!r} waits for {target!r} to be healthy, "
                    "but it has no healthcheck"
                )
    return problems


def check_demo(configs: Configs) -> list[str]:
    command = _command(_services(configs.compose)[DEMO_SERVICE])
    problems = []
    report_dir = _option(command, "--report-dir")
    # The image runs as the user nobody, who can write only under /tmp.
    if report_dir is None or not report_dir.startswith("/tmp/"):
        problems.append(f"demo --report-dir is {report_dir!r}; use a directory under /tmp/")
    if "--no-dashboard" not in command:
        problems.append("demo must run with --no-dashboard: the dashboard is its own service")
    return problems


def _mebibytes(size: str) -> float:
    match = re.fullmatch(r"(\d+)([kmg])b?", size.strip().lower())
    assert match, f"unrecognised memory size {size!r}"
    return int(match.group(1)) * MEBIBYTES[match.group(2)]


def check_memory_limit(configs: Configs) -> list[str]:
    service = _services(configs.compose)[COLLECTOR_SERVICE]
    limiter = (configs.collector.get("processors") or {}).get("memory_limiter") or {}
    if "mem_limit" not in service or "limit_mib" not in limiter:
        return ["the collector needs mem_limit in compose and memory_limiter.limit_mib"]
    if limiter["limit_mib"] >= _mebibytes(str(service["mem_limit"])):
        return [
            f"memory_limiter.limit_mib {limiter['limit_mib']} is not below the collector's "
            f"mem_limit {service['mem_limit']}"
        ]
    return []


def check_rotel(configs: Configs) -> list[str]:
    rotel = configs.rotel
    receivers = _receiver_ports(configs.collector)
    problems = []
    for protocol, variable in (
        ("grpc", "ROTEL_OTLP_GRPC_ENDPOINT"),
        ("http", "ROTEL_OTLP_HTTP_ENDPOINT"),
    ):
        host, port = _host_port(rotel.get(variable, ":0"))
        if port != receivers.get(protocol) or host != "127.0.0.1":
            problems.append(
                f"rotel {variable}={rotel.get(variable)!r}, expected 127.0.0.1:"
                f"{receivers.get(protocol)} like the collector's {protocol} receiver"
            )
    exporters = {}
    for entry in rotel.get("ROTEL_EXPORTERS", "").split(","):
        name, _, kind = entry.partition(":")
        exporters[name] = kind
    for name, kind in exporters.items():
        prefix = f"ROTEL_EXPORTER_{name.upper()}_"
        if kind != "otlp":
            problems.append(f"rotel exporter {name!r} has type {kind!r}, expected otlp")
        if not rotel.get(prefix + "ENDPOINT"):
            problems.append(f"rotel exporter {name!r} has no {prefix}ENDPOINT")
        if rotel.get(prefix + "PROTOCOL") not in ("grpc", "http"):
            problems.append(f"rotel exporter {name!r} needs {prefix}PROTOCOL grpc or http")
    selected = rotel.get("ROTEL_EXPORTERS_TRACES", "")
    if selected not in exporters:
        problems.append(f"ROTEL_EXPORTERS_TRACES={selected!r} names no exporter in ROTEL_EXPORTERS")
    if {"dashboard", "jaeger"} - set(exporters):
        problems.append(f"rotel.env must define the dashboard and jaeger exporters: {exporters}")

    dashboard_command = _command(_services(configs.compose)[DASHBOARD_SERVICE])
    dashboard_port = int(_option(dashboard_command, "--port") or DEFAULT_PORT)
    endpoint = rotel.get("ROTEL_EXPORTER_DASHBOARD_ENDPOINT", "")
    if endpoint:
        host, port = _host_port(endpoint)
        if host != "127.0.0.1" or port != dashboard_port or port != DEFAULT_PORT:
            problems.append(
                f"rotel dashboard exporter sends to {endpoint!r}, expected "
                f"http://127.0.0.1:{DEFAULT_PORT} (the dashboard's default and compose port)"
            )
    return problems


def all_problems(configs: Configs, known: set[str]) -> list[str]:
    return [
        *check_service_references(configs),
        *check_ports(configs),
        *check_environment_names(configs, known),
        *check_images(configs),
        *check_dockerfile(configs),
        *check_pipelines(configs),
        *check_published_ports(configs),
        *check_secrets(configs),
        *check_healthchecks(configs),
        *check_demo(configs),
        *check_memory_limit(configs),
        *check_rotel(configs),
    ]


@pytest.fixture(scope="module")
def known() -> set[str]:
    return known_env_names()


def test_configs_agree(known: set[str]) -> None:
    assert all_problems(load_configs(), known) == []


def test_known_names_come_from_code(known: set[str]) -> None:
    for name in (
        "KAYGRAPH_OTEL_DASHBOARD_TOKEN",
        "KAYGRAPH_OTEL_REDIS_URL",
        "KAYGRAPH_OTEL_CAPTURE_SNAPSHOTS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
    ):
        assert name in known
    assert "KAYGRAPH_OTEL_NO_SUCH_SETTING" not in known


def _service(configs: Configs, name: str) -> Config:
    return configs.compose["services"][name]


def _set_env(service: str, variable: str, value: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        _service(configs, service)["environment"][variable] = value

    return mutate


def _set_command_option(service: str, option: str, value: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        command = _service(configs, service)["command"]
        command[command.index(option) + 1] = value

    return mutate


def _remove_key(service: str, key: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        del _service(configs, service)[key]

    return mutate


def _set_image(service: str, image: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        _service(configs, service)["image"] = image

    return mutate


def _set_collector(path: tuple[str, ...], value: Any) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        node = configs.collector
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _set_rotel(variable: str, value: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        configs.rotel[variable] = value

    return mutate


def _add_dependency(service: str, target: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        _service(configs, service)["depends_on"][target] = {"condition": "service_started"}

    return mutate


def _set_dockerfile_base(image: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        configs.dockerfile = re.sub(r"(?m)^FROM python:\S+", f"FROM {image}", configs.dockerfile)

    return mutate


def _drop_dockerfile_line(text: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        lines = configs.dockerfile.splitlines()
        configs.dockerfile = "\n".join(line for line in lines if text not in line)

    return mutate


def _publish(service: str, mapping: str) -> Callable[[Configs], None]:
    def mutate(configs: Configs) -> None:
        _service(configs, service)["ports"] = [mapping]

    return mutate


REDIS_URL = "KAYGRAPH_OTEL_REDIS_URL"
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
DASHBOARD_EXPORTER = ("exporters", "otlphttp/dashboard")
TRACES = ("service", "pipelines", "traces")

# (test id, how to break a copy of the configuration, text of the expected problem)
MUTATIONS: list[tuple[str, Callable[[Configs], None], str]] = [
    ("unknown dependency", _add_dependency(DEMO_SERVICE, "postgres"), "'postgres'"),
    ("redis host typo", _set_env(DEMO_SERVICE, REDIS_URL, "redis://rediss:6379/0"), "'rediss'"),
    ("demo to grpc port", _set_env(DEMO_SERVICE, OTLP_ENDPOINT, "http://otel-collector:4317"),
     "OTLP/HTTP receiver"),
    ("demo to jaeger", _set_env(DEMO_SERVICE, OTLP_ENDPOINT, "http://jaeger:4318"),
     "OTLP/HTTP receiver"),
    ("collector http port",
     _set_collector(("receivers", "otlp", "protocols", "http", "endpoint"), "0.0.0.0:14318"),
     "collector OTLP receivers"),
    ("dashboard port", _set_command_option(DASHBOARD_SERVICE, "--port", "9090"),
     "dashboard listens on dashboard:9090"),
    ("dashboard exporter port",
     _set_collector((*DASHBOARD_EXPORTER, "endpoint"), "http://dashboard:8081"),
     "dashboard exporter sends"),
    ("jaeger exporter host", _set_collector(("exporters", "otlp/jaeger", "endpoint"), "jaegr:4317"),
     "unknown host 'jaegr'"),
    ("unread variable", _set_env(DEMO_SERVICE, "KAYGRAPH_OTEL_REDIS_ADDRESS", "redis://redis:6379"),
     "KAYGRAPH_OTEL_REDIS_ADDRESS, which no code reads"),
    ("unset collector variable",
     _set_collector((*DASHBOARD_EXPORTER, "headers"), {"Authorization": "${env:DASHBOARD_TOKEN}"}),
     "${env:DASHBOARD_TOKEN}"),
    ("latest image", _set_image(JAEGER_SERVICE, "jaegertracing/all-in-one:latest"), "not pinned"),
    ("untagged image", _set_image("redis", "redis"), "has no tag"),
    ("floating dockerfile base", _set_dockerfile_base("python:slim"), "Dockerfile image"),
    ("dockerfile without vendor assets", _drop_dockerfile_line("static/vendor"),
     "static/vendor assets"),
    ("undefined processor",
     _set_collector((*TRACES, "processors"), ["memory_limiter", "batch", "filter"]), "'filter'"),
    ("unused exporter", _set_collector((*TRACES, "exporters"), ["otlp/jaeger"]),
     "'otlphttp/dashboard' is defined"),
    ("limiter not first", _set_collector((*TRACES, "processors"), ["batch", "memory_limiter"]),
     "memory_limiter first"),
    ("undefined extension", _set_collector(("service", "extensions"), ["health_check"]),
     "'health_check' is not defined"),
    ("public port", _publish(JAEGER_SERVICE, "16686:16686"), "beyond 127.0.0.1"),
    ("literal token",
     _set_env(DASHBOARD_SERVICE, "KAYGRAPH_OTEL_DASHBOARD_TOKEN", "hunter2-hunter2-hunter2"),
     "literal value"),
    ("literal header",
     _set_collector((*DASHBOARD_EXPORTER, "headers"), {"Authorization": "Bearer hunter2"}),
     "header Authorization"),
    ("missing healthcheck", _remove_key(JAEGER_SERVICE, "healthcheck"),
     "'jaeger' has no healthcheck"),
    ("report dir", _set_command_option(DEMO_SERVICE, "--report-dir", "reports"), "--report-dir"),
    ("limiter above limit", _set_collector(("processors", "memory_limiter", "limit_mib"), 600),
     "not below"),
    ("rotel grpc port", _set_rotel("ROTEL_OTLP_GRPC_ENDPOINT", "127.0.0.1:5317"),
     "ROTEL_OTLP_GRPC_ENDPOINT"),
    ("rotel public receiver", _set_rotel("ROTEL_OTLP_HTTP_ENDPOINT", "0.0.0.0:4318"),
     "ROTEL_OTLP_HTTP_ENDPOINT"),
    ("rotel dashboard port",
     _set_rotel("ROTEL_EXPORTER_DASHBOARD_ENDPOINT", "http://127.0.0.1:8090"),
     "rotel dashboard exporter"),
    ("rotel unknown selection", _set_rotel("ROTEL_EXPORTERS_TRACES", "tempo"), "'tempo'"),
    ("rotel protocol", _set_rotel("ROTEL_EXPORTER_JAEGER_PROTOCOL", "thrift"),
     "PROTOCOL grpc or http"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=label) for label, mutate, expected in MUTATIONS],
)
def test_broken_config_detected(
    known: set[str], mutate: Callable[[Configs], None], expected: str
) -> None:
    configs = load_configs()
    broken = copy.deepcopy(configs)
    mutate(broken)
    assert broken != configs, "the mutation changed nothing"
    problems = all_problems(broken, known)
    assert any(expected in problem for problem in problems), problems


def _parse_as_compose(service: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse a service's command with the real CLI in that service's environment."""
    for variable in list(os.environ):
        if variable.startswith(("KAYGRAPH_OTEL_", "OTEL_")):
            monkeypatch.delenv(variable)
    environment = _environment(load_configs().compose["services"][service])
    for variable, value in environment.items():
        monkeypatch.setenv(variable, COMPOSE_TOKEN if "${" in value else value)
    args = build_parser().parse_args(_command(load_configs().compose["services"][service]))
    # The command handlers fill options left out on the command line from the
    # environment, naming the variable in their errors.
    cli._fill_from_env(args, "redis_url", "--redis-url", cli.ENV_REDIS_URL)
    if hasattr(args, "token"):
        cli._fill_from_env(args, "token", "--token", cli.ENV_TOKEN, strip=False)
    return args


def test_dashboard_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse_as_compose(DASHBOARD_SERVICE, monkeypatch)
    assert args.command == "dashboard"
    assert args.redis_url == "redis://redis:6379/0"
    assert args.token == COMPOSE_TOKEN
    assert args.port == 8080


def test_demo_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse_as_compose(DEMO_SERVICE, monkeypatch)
    assert args.command == "demo"
    assert args.redis_url == "redis://redis:6379/0"
    assert args.no_dashboard is True
    assert args.report_dir == "/tmp/reports"
    assert args.runs == 0


@contextmanager
def _running_dashboard(tmp_path: Path, token: str) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAYGRAPH_OTEL_", "OTEL_"))}
    env["KAYGRAPH_OTEL_DASHBOARD_TOKEN"] = token
    log_path = tmp_path / "dashboard.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "dashboard",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return process.poll() is not None

        assert wait_for(listening, timeout=20), log_path.read_text()
        assert process.poll() is None, log_path.read_text()
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_dashboard_healthcheck_command_runs(tmp_path: Path) -> None:
    test = [
        str(arg)
        for arg in load_configs().compose["services"][DASHBOARD_SERVICE]["healthcheck"]["test"]
    ]
    assert test[:3] == ["CMD", "python", "-c"]
    token = "healthcheck-token-0123456789"
    with _running_dashboard(tmp_path, token) as port:
        code = test[3].replace(":8080/", f":{port}/")
        assert code != test[3]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("KAYGRAPH_OTEL_")}
        healthy = subprocess.run(
            [sys.executable, "-c", code],
            env={**base_env, "KAYGRAPH_OTEL_DASHBOARD_TOKEN": token},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        wrong_token = subprocess.run(
            [sys.executable, "-c", code],
            env={**base_env, "KAYGRAPH_OTEL_DASHBOARD_TOKEN": "wrong-token-0123456789"},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert healthy.returncode == 0, healthy.stderr
    assert wrong_token.returncode != 0
    assert "401" in wrong_token.stderr
