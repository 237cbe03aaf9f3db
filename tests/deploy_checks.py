"""Validators of the deployment files (docker-compose.yml, deploy/Dockerfile,
deploy/k8s, deploy/grafana, .env.example) against their schemas and against
the code: the settings model, the CLI, the consumer-group names and the
Prometheus registry.

Each ``check_*`` function returns a list of problems (empty = consistent), so
tests assert on exact messages, including for seeded inconsistencies.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel, SecretStr

from etl.config import ConfigError, vendor_env
from sinks.settings import Settings, load_settings, sink_names
from streams.supervisor import WORKER_RUNTIME_ENV

KNOWN_SINKS = tuple(sink_names())
VENDOR_ENV = vendor_env(Settings)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"
KEDA_SCHEMAS = {
    "ScaledObject": SCHEMAS / "keda-scaledobjects-v2.20.2.json",
    "TriggerAuthentication": SCHEMAS / "keda-triggerauthentications-v2.20.2.json",
}
#: Kubernetes version whose OpenAPI schemas (kubernetes-validate) the manifests must satisfy.
K8S_VERSION = "1.33.0"
#: Environment names read by libraries inside the image, not by our settings.
LIBRARY_ENV = frozenset({"GOOGLE_APPLICATION_CREDENTIALS"})
#: Image-level variables of the Python runtime.
RUNTIME_ENV = frozenset({"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "MALLOC_ARENA_MAX"})
#: Stand-in for a value an operator must supply (a secret, an account name).
OPERATOR_VALUE = "filled-by-operator"
#: A single-writer sink: one replica, no lag-based autoscaling.
SINGLE_WRITER_SINKS = frozenset({"duckdb"})
SECRET_NAME_HINTS = (
    "PASSWORD",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "API_KEY",
    "WRITE_KEY",
    "PRIVATE_KEY",
)


# ---------------------------------------------------------------------------
# Settings model


def _sections() -> dict[str, type[BaseModel]]:
    return {
        name: field.annotation  # type: ignore[misc]
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


@functools.cache
def settings_env_names() -> dict[str, tuple[str, ...]]:
    """Every ``ETL_*`` name the settings model reads -> its field path."""
    names: dict[str, tuple[str, ...]] = {}
    sections = _sections()
    for name, field in Settings.model_fields.items():
        if name in sections:
            continue
        for key in {name, field.alias or name}:
            names[f"ETL_{key}".upper()] = (name,)
    for section, model in sections.items():
        for name, field in model.model_fields.items():
            for key in {name, field.alias or name}:
                names[f"ETL_{section}__{key}".upper()] = (section, name)
    return names


@functools.cache
def secret_env_names() -> frozenset[str]:
    """ETL_ and vendor names of SecretStr fields: they belong in a Secret,
    never a ConfigMap/image.
    """
    secret_paths = set()
    for section, model in _sections().items():
        for name, field in model.model_fields.items():
            if field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation):
                secret_paths.add((section, name))
    names = {env for env, path in settings_env_names().items() if path in secret_paths}
    names |= {var for var, path in VENDOR_ENV.items() if path in secret_paths}
    return frozenset(names)


def check_env_names(names: Iterable[str], where: str, extra: Iterable[str] = ()) -> list[str]:
    known = settings_env_names()
    allowed = set(VENDOR_ENV) | set(extra)
    problems = []
    for name in names:
        if name.upper().startswith("ETL_"):
            if name.upper() not in known:
                problems.append(f"{where}: {name} is not a setting of sinks.settings.Settings")
        elif name not in allowed:
            problems.append(
                f"{where}: {name} is neither an ETL_ setting nor a vendor variable of the settings"
            )
    return problems


_MANAGED_ENV = ("ETL_",) + tuple(VENDOR_ENV)


@contextlib.contextmanager
def _isolated_environ(env: Mapping[str, str]) -> Iterator[None]:
    # Saved: every managed variable, and whatever else ``env`` overrides (PATH...).
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(_MANAGED_ENV) or k in env}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Settings exactly as a worker with this environment (and nothing else) builds them."""
    with _isolated_environ(env):
        return load_settings()


def fill_operator_values(env: Mapping[str, str]) -> dict[str, str]:
    """Empty values are the operator's to fill (keys, accounts): give them a stand-in."""
    return {k: (v if v != "" else OPERATOR_VALUE) for k, v in env.items()}


def role_group(settings: Settings) -> str:
    return settings.group(settings.role)


def role_topic(settings: Settings) -> str:
    return (
        settings.kafka.raw_topic
        if settings.role.kind == "normalize"
        else settings.kafka.normalized_topic
    )


def _load_worker_settings(
    env: Mapping[str, str], where: str, problems: list[str]
) -> Settings | None:
    try:
        settings = settings_from_env(fill_operator_values(env))
    except ConfigError as exc:
        problems.append(f"{where}: settings do not load: {exc}")
        return None
    if settings.role.kind == "all":
        problems.append(
            f"{where}: ETL_ROLE must name one role (normalize or sink:<name>), not 'all'"
        )
        return None
    if settings.role.is_sink and settings.role.sink not in settings.sinks:
        problems.append(
            f"{where}: role {settings.role} but ETL_SINKS={','.join(settings.sinks)} "
            "(start-up checks skip it)"
        )
    return settings


# ---------------------------------------------------------------------------
# CLI


@functools.cache
def cli_commands() -> frozenset[str]:
    """Command names ``etl --help`` lists (Faust's and ours)."""
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_MANAGED_ENV)}
        env["ETL_DATA_DIR"] = data_dir
        out = subprocess.run(
            [sys.executable, "-m", "ops.cli", "--help"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    commands = out.split("\nCommands:\n", 1)[1]
    return frozenset(m.group(1) for m in re.finditer(r"^  ([a-z][\w-]*)\s", commands, re.M))


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---------------------------------------------------------------------------
# Dockerfile


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        word, _, rest = buffer.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        buffer = ""
    return instructions


def _env_pairs(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV of the final stage."""
    env: dict[str, str] = {}
    for word, args in parse_dockerfile(path):
        if word == "FROM":
            env = {}
        elif word == "ENV":
            env.update(_env_pairs(args))
    return env


def check_dockerfile(path: Path) -> list[str]:
    problems: list[str] = []
    instructions = parse_dockerfile(path)
    stages = [args for word, args in instructions if word == "FROM"]
    if len(stages) < 2:
        problems.append("Dockerfile: not a multi-stage build")
    final_from = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    final = instructions[final_from:]
    if "slim" not in stages[-1]:
        problems.append(f"Dockerfile: runtime stage is not a slim image: {stages[-1]}")
    args_defaults = {}
    for word, args in instructions:
        if word == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            args_defaults[key] = value
    users = [args for word, args in final if word == "USER"]
    if not users:
        problems.append("Dockerfile: runtime stage has no USER (runs as root)")
    else:
        user = re.sub(
            r"\$\{(\w+)\}", lambda m: args_defaults.get(m.group(1), m.group(0)), users[-1]
        ).split(":")[0]
        if user in ("root", "0"):
            problems.append(f"Dockerfile: runtime USER is root ({users[-1]})")
    entry = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    scripts = pyproject()["project"].get("scripts", {})
    if not entry or entry[-1][:1] != ["etl"]:
        problems.append(f"Dockerfile: ENTRYPOINT is not the etl console script: {entry}")
    if "etl" not in scripts:
        problems.append("Dockerfile: pyproject.toml has no 'etl' console script")
    for word, args in final:
        if word == "CMD":
            cmd = json.loads(args)
            if cmd[:1] and cmd[0] not in cli_commands():
                problems.append(f"Dockerfile: CMD {cmd[0]!r} is not an etl command")
    env = dockerfile_env(path)
    problems += check_env_names([k for k in env if k not in RUNTIME_ENV], "Dockerfile ENV")
    for name, value in WORKER_RUNTIME_ENV.items():
        if env.get(name) != value:
            problems.append(
                f"Dockerfile: ENV {name}={env.get(name)} but local workers run with {value}"
            )
    declared = set()
    for word, args in instructions:
        if word in ("ENV", "ARG"):
            declared |= {item.split("=", 1)[0] for item in shlex.split(args)}
    for name in sorted(declared):
        if name in secret_env_names() or any(h in name.upper() for h in SECRET_NAME_HINTS):
            problems.append(f"Dockerfile: {name} looks like a secret; pass it at run time")
    port = env.get("ETL_WEB_PORT")
    default_port = str(Settings.model_fields["web_port"].default)
    if port is None:
        problems.append("Dockerfile: ENV ETL_WEB_PORT missing")
    exposed = [args.split("/")[0] for word, args in final if word == "EXPOSE"]
    if port not in exposed:
        problems.append(f"Dockerfile: EXPOSE {exposed} does not include ETL_WEB_PORT={port}")
    checks = [args for word, args in final if word == "HEALTHCHECK"]
    if not checks:
        problems.append("Dockerfile: no HEALTHCHECK")
    else:
        check = checks[-1]
        if "/healthz" not in check:
            problems.append("Dockerfile: HEALTHCHECK does not probe /healthz")
        if "ETL_WEB_PORT" not in check or f"'{default_port}'" not in check:
            problems.append(
                f"Dockerfile: HEALTHCHECK must read ETL_WEB_PORT with default {default_port}"
            )
    if (
        "pip install" not in " ".join(a for w, a in instructions if w == "RUN")
        or '".[' not in path.read_text()
    ):
        problems.append("Dockerfile: does not install the project with its pyproject extras")
    extras = set(pyproject()["project"].get("optional-dependencies", {}))
    for word, args in instructions:
        if word == "ARG" and args.startswith("EXTRAS="):
            for extra in args.split("=", 1)[1].split(","):
                if extra not in extras:
                    problems.append(f"Dockerfile: extra {extra!r} is not in pyproject.toml")
        if word == "COPY" and not args.startswith("--from"):
            sources = shlex.split(args)[:-1]
            found = [s for s in sources if list(ROOT.glob(s))]
            for source in sources:
                if not any(c in source for c in "*?[") and source not in found:
                    problems.append(f"Dockerfile: COPY source {source} does not exist")
            if not found:
                problems.append(f"Dockerfile: COPY {args} matches nothing")
    return problems


def image_extras(dockerfile: Path) -> list[str]:
    for word, args in parse_dockerfile(dockerfile):
        if word == "ARG" and args.startswith("EXTRAS="):
            return [e for e in args.split("=", 1)[1].split(",") if e]
    return []


def _requirement_closure(requirements: Iterable[str]) -> set[str]:
    """Distributions a fresh ``pip install`` of these requirements brings
    (per installed metadata).
    """
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = canonicalize_name(pyproject()["project"]["name"])
    extras_table = pyproject()["project"].get("optional-dependencies", {})
    seen: set[str] = set()
    queue = [Requirement(r) for r in requirements]
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        if name == project:
            queue += [Requirement(r) for extra in req.extras for r in extras_table.get(extra, [])]
            continue
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                queue.append(sub)
    return {k.split("[", 1)[0] for k in seen}


def _imported_modules(package_dirs: Iterable[Path]) -> dict[str, str]:
    """Top-level third-party modules imported by our packages -> first file importing it.

    Imports guarded by ``except ImportError`` are optional and skipped."""
    import ast

    local = {p.name for p in package_dirs}
    found: dict[str, str] = {}
    for package in package_dirs:
        for file in sorted(package.rglob("*.py")):
            tree = ast.parse(file.read_text(), str(file))
            guarded: set[int] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name)
                    and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers
                ):
                    guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
            for node in ast.walk(tree):
                if id(node) in guarded:
                    continue
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".", 1)[0]
                    if (
                        top not in sys.stdlib_module_names
                        and top not in local
                        and top != "__future__"
                    ):
                        found.setdefault(top, str(file.relative_to(ROOT)))
    return found


def check_image_dependencies(dockerfile: Path = DEPLOY / "Dockerfile") -> list[str]:
    """Every third-party module our code imports is installed by the image's pyproject install."""
    import importlib.metadata as metadata

    from packaging.utils import canonicalize_name

    project = pyproject()["project"]
    extras = image_extras(dockerfile)
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    closure = _requirement_closure(requirements)
    distributions = metadata.packages_distributions()
    problems = []
    packages = [ROOT / name for name in ("etl", "mappers", "sinks", "streams")]
    for module, file in sorted(_imported_modules(packages).items()):
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not owners & closure:
            problems.append(
                f"image: {file} imports {module}, which neither pyproject dependencies nor the "
                f"extras {','.join(extras)} install"
            )
    return problems


# ---------------------------------------------------------------------------
# Compose

_INTERPOLATION = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolation_refs(text: str) -> list[tuple[str, str | None]]:
    """(variable, default) of each ``${VAR:-default}`` / ``$VAR`` in text (``$$`` is a literal)."""
    refs = []
    for m in _INTERPOLATION.finditer(text):
        name = m.group("name") or m.group("bare")
        if name:
            refs.append((name, m.group("arg") if m.group("op") in (":-", "-") else None))
    return refs


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose-style interpolation of every string in value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?") and not current:
            raise ValueError(f"required variable {name} is unset: {arg}")
        if op in (":+", "+"):
            return arg if current else ""
        return current or ""

    return _INTERPOLATION.sub(sub, value)


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _is_etl_service(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
    return dockerfile == "deploy/Dockerfile"


def _volume_source(volume: Any) -> tuple[str, str | None]:
    """(type, source) of a service volume in short or long syntax."""
    if isinstance(volume, dict):
        return volume.get("type", "volume"), volume.get("source")
    source = volume.split(":", 1)[0]
    if ":" not in volume:
        return "volume", None
    return ("bind" if source.startswith((".", "/", "~")) else "volume"), source


def _healthcheck_port(service: Mapping[str, Any]) -> str | None:
    test = " ".join((service.get("healthcheck") or {}).get("test") or [])
    m = re.search(r"127\.0\.0\.1:(\d+)/healthz", test)
    return m.group(1) if m else None


def check_compose(path: Path, schema_path: Path = COMPOSE_SCHEMA, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"compose: not YAML: {exc}"]
    validator = jsonschema.Draft7Validator(json.loads(schema_path.read_text()))
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path)
        problems.append(f"compose schema: {where}: {error.message}")

    # Interpolation: ETL_ variables must be settings and default to the model's default.
    defaults = settings_from_env({}).model_dump(mode="json")
    for name, default in dict.fromkeys(interpolation_refs(path.read_text())):
        if not name.startswith("ETL_"):
            continue
        if name not in settings_env_names():
            problems.append(
                f"compose: interpolated ${{{name}}} is not a setting of sinks.settings.Settings"
            )
            continue
        if default is None:
            continue
        try:
            with_default = settings_from_env({name: default}).model_dump(mode="json")
        except ConfigError as exc:
            problems.append(f"compose: ${{{name}:-{default}}} does not load: {exc}")
            continue
        if with_default != defaults:
            problems.append(f"compose: ${{{name}:-{default}}} differs from the settings default")

    try:
        resolved = interpolate(doc, {})
    except ValueError as exc:
        return problems + [f"compose: {exc}"]
    services = resolved.get("services") or {}
    image_env = dockerfile_env(root / "deploy" / "Dockerfile")
    version = pyproject()["project"]["version"]
    etl_services = {name: svc for name, svc in services.items() if _is_etl_service(svc)}
    if not etl_services:
        problems.append("compose: no service builds deploy/Dockerfile")
    roles: dict[str, str] = {}
    for name, svc in etl_services.items():
        where = f"compose service {name}"
        env = _environment(svc)
        problems += check_env_names(env, where, LIBRARY_ENV)
        command = svc.get("command") or ["worker"]
        command = shlex.split(command) if isinstance(command, str) else command
        if command[0] not in cli_commands():
            problems.append(f"{where}: command {command[0]!r} is not an etl command (etl --help)")
        image = str(svc.get("image", ""))
        if image and not image.endswith(f":{version}"):
            problems.append(
                f"{where}: image {image} is not tagged with the project version {version}"
            )
        settings = _load_worker_settings({**image_env, **env}, where, problems)
        if settings is None:
            continue
        roles[name] = str(settings.role)
        group = role_group(settings)
        if name != group:
            problems.append(
                f"{where}: name differs from its consumer group {group} "
                "(names must match across compose, k8s, dashboards)"
            )
        port = str(settings.web_port)
        health = _healthcheck_port(svc)
        if health != port:
            problems.append(
                f"{where}: healthcheck probes port {health}, but ETL_WEB_PORT is {port}"
            )
        if svc.get("ports"):
            problems.append(f"{where}: publishes ports; replicas of a scaled worker would collide")
    for sink in KNOWN_SINKS:
        if f"sink:{sink}" not in roles.values():
            problems.append(f"compose: no worker service for sink {sink}")
    if "normalize" not in roles.values():
        problems.append("compose: no normalize worker service")

    # Volumes: every named one declared is used and every used one declared; binds exist.
    declared = set((doc.get("volumes") or {}).keys())
    used = set()
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            kind, source = _volume_source(volume)
            if kind == "volume" and source:
                used.add(source)
                if source not in declared:
                    problems.append(
                        f"compose service {name}: volume {source} is not declared under volumes:"
                    )
            elif kind == "bind" and source and not (root / source).exists():
                problems.append(f"compose service {name}: bind source {source} does not exist")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                problems.append(f"compose service {name}: depends_on unknown service {dep}")
    for volume in sorted(declared - used):
        problems.append(f"compose: volume {volume} is declared but no service uses it")

    problems += _check_prometheus(services, etl_services, root)
    return problems


def _check_prometheus(
    services: Mapping[str, Any], etl_services: Mapping[str, Any], base: Path
) -> list[str]:
    prom = services.get("prometheus")
    if prom is None:
        return ["compose: no prometheus service (profile observability)"]
    config_path = None
    for volume in prom.get("volumes") or []:
        kind, source = _volume_source(volume)
        if kind == "bind" and source and source.endswith("prometheus.yml"):
            config_path = base / source
    if config_path is None or not config_path.exists():
        return ["compose: prometheus has no mounted prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    targets: dict[str, int] = {}
    for job in config.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for name in sd.get("names", []):
                targets[name] = int(sd["port"])
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                host, _, port = target.rpartition(":")
                targets[host] = int(port)
    problems = []
    for name, svc in etl_services.items():
        port = _environment(svc).get("ETL_WEB_PORT", str(Settings.model_fields["web_port"].default))
        if name not in targets:
            problems.append(f"prometheus.yml: does not scrape {name}")
        elif str(targets[name]) != port:
            problems.append(
                f"prometheus.yml: scrapes {name} on port {targets[name]}, "
                f"but ETL_WEB_PORT is {port}"
            )
    for name in targets:
        if name not in services:
            problems.append(f"prometheus.yml: scrapes {name}, which is not a compose service")
    return problems


# ---------------------------------------------------------------------------
# .env.example


def parse_env_example(path: Path) -> dict[str, str]:
    """``# NAME=value`` and ``NAME=value`` lines -> {NAME: value} (single quotes removed)."""
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if not m:
            continue
        value = m.group(2)
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        entries[m.group(1)] = value
    return entries


def check_env_example(path: Path) -> list[str]:
    problems: list[str] = []
    entries = parse_env_example(path)
    etl_names = {k for k in entries if k.startswith("ETL_")}
    canonical: dict[tuple[str, ...], str] = {}
    for env, field_path in settings_env_names().items():
        canonical.setdefault(field_path, env)
    listed_paths = {settings_env_names().get(n) for n in etl_names}
    for field_path, env in sorted(canonical.items()):
        if field_path not in listed_paths:
            problems.append(f".env.example: setting {'.'.join(field_path)} ({env}) is missing")
    problems += check_env_names(entries, ".env.example")
    for var in VENDOR_ENV:
        if var not in entries:
            problems.append(f".env.example: vendor variable {var} is missing")
    # The listed values are the defaults: loading them changes nothing.
    given = {k: v for k, v in entries.items() if k.startswith("ETL_") and v != ""}
    try:
        loaded = settings_from_env(given).model_dump(mode="json")
    except ConfigError as exc:
        return problems + [f".env.example: values do not load: {exc}"]
    defaults = settings_from_env({}).model_dump(mode="json")
    for section, value in loaded.items():
        if value != defaults[section]:
            if isinstance(value, dict):
                for key in value:
                    if value[key] != defaults[section][key]:
                        problems.append(
                            f".env.example: {section}.{key}={value[key]!r} "
                            f"differs from the default {defaults[section][key]!r}"
                        )
            else:
                problems.append(
                    f".env.example: {section}={value!r} "
                    f"differs from the default {defaults[section]!r}"
                )
    return problems


# ---------------------------------------------------------------------------
# Kubernetes + KEDA


def load_manifests(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def _strict(schema: Any) -> Any:
    """Reject unknown fields where the CRD lists its properties
    (as kubectl --validate=strict does).
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def _keda_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads(KEDA_SCHEMAS[kind].read_text())
    schema.pop("$comment", None)
    # metadata is an ObjectMeta, validated by the API server, typed as a bare object in the CRD.
    return jsonschema.Draft7Validator(_strict(schema))


def validate_manifest(doc: Mapping[str, Any], where: str) -> list[str]:
    import kubernetes_validate

    kind = doc.get("kind")
    if kind in KEDA_SCHEMAS:
        if doc.get("apiVersion") != "keda.sh/v1alpha1":
            return [f"{where}: {kind} apiVersion must be keda.sh/v1alpha1"]
        return [
            f"{where}: {'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in _keda_validator(kind).iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(dict(doc), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'/'.join(str(p) for p in exc.path)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


def _container_env(
    container: Mapping[str, Any],
    configmaps: Mapping[str, dict[str, str]],
    secrets: Mapping[str, dict[str, str]],
    where: str,
    problems: list[str],
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            if name not in configmaps:
                problems.append(f"{where}: envFrom ConfigMap {name} is not defined")
            env.update(configmaps.get(name, {}))
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            if name not in secrets:
                problems.append(f"{where}: envFrom Secret {name} is not defined")
            env.update(secrets.get(name, {}))
    for item in container.get("env") or []:
        env[item["name"]] = str(item.get("value", ""))
    return env


def _port_number(container: Mapping[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_k8s(directory: Path) -> list[str]:
    problems: list[str] = []
    docs = load_manifests(directory)
    by_kind: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, doc in docs:
        where = f"{path.name} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        if doc.get("kind") == "Kustomization":
            problems += _check_kustomization(path, directory)
        else:
            problems += validate_manifest(doc, where)
        by_kind.setdefault(doc.get("kind", ""), []).append((path, doc))

    configmaps = {
        d["metadata"]["name"]: {k: str(v) for k, v in (d.get("data") or {}).items()}
        for _, d in by_kind.get("ConfigMap", [])
    }
    secrets = {
        d["metadata"]["name"]: {k: str(v) for k, v in (d.get("stringData") or {}).items()}
        for _, d in by_kind.get("Secret", [])
    }
    for _, secret in by_kind.get("Secret", []):
        name = secret["metadata"]["name"]
        if secret.get("data"):
            problems.append(f"Secret {name}: use empty stringData placeholders, not data")
        for key, value in (secret.get("stringData") or {}).items():
            # Non-secret knobs of KEDA's kafka scaler may carry their defaults.
            if value not in ("", None) and key not in ("sasl", "tls"):
                problems.append(
                    f"Secret {name}: {key} has a value; templates hold placeholders only"
                )
    for name, data in configmaps.items():
        for key in data:
            if key in secret_env_names() or any(h in key.upper() for h in SECRET_NAME_HINTS):
                problems.append(f"ConfigMap {name}: {key} is a secret; put it in the Secret")

    deployments = {d["metadata"]["name"]: d for _, d in by_kind.get("Deployment", [])}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for _, d in by_kind.get("ScaledObject", [])}
    trigger_auths = {d["metadata"]["name"]: d for _, d in by_kind.get("TriggerAuthentication", [])}
    pdbs = [d for _, d in by_kind.get("PodDisruptionBudget", [])]
    roles: set[str] = set()
    version = pyproject()["project"]["version"]
    for name, dep in deployments.items():
        where = f"Deployment {name}"
        pod = dep["spec"]["template"]
        labels = pod["metadata"].get("labels") or {}
        if not _selects(dep["spec"]["selector"], labels):
            problems.append(f"{where}: selector does not match its pod labels")
        if not any(_selects(p["spec"]["selector"], labels) for p in pdbs):
            problems.append(f"{where}: no PodDisruptionBudget selects its pods")
        containers = pod["spec"]["containers"]
        worker = containers[0]
        if not str(worker.get("image", "")).endswith(f":{version}"):
            problems.append(
                f"{where}: image {worker.get('image')} "
                f"is not tagged with the project version {version}"
            )
        args = worker.get("args") or worker.get("command") or []
        if not args or args[0] not in cli_commands():
            problems.append(f"{where}: args {args} do not start with an etl command")
        env = _container_env(worker, configmaps, secrets, where, problems)
        problems += check_env_names(env, where, LIBRARY_ENV)
        settings = _load_worker_settings(env, where, problems)
        if settings is None:
            continue
        roles.add(str(settings.role))
        group = role_group(settings)
        if name != group:
            problems.append(f"{where}: name differs from its consumer group {group}")
        web_port = settings.web_port
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            spec = (worker.get(probe) or {}).get("httpGet")
            if not spec:
                problems.append(f"{where}: no {probe}")
                continue
            if spec.get("path") != path:
                problems.append(f"{where}: {probe} probes {spec.get('path')}, expected {path}")
            if _port_number(worker, spec.get("port")) != web_port:
                problems.append(
                    f"{where}: {probe} port {spec.get('port')} is not ETL_WEB_PORT={web_port}"
                )
        annotation = (pod["metadata"].get("annotations") or {}).get("prometheus.io/port")
        if annotation is not None and int(annotation) != web_port:
            problems.append(
                f"{where}: prometheus.io/port {annotation} is not ETL_WEB_PORT={web_port}"
            )
        resources = worker.get("resources") or {}
        if not (resources.get("requests") or {}).get("memory") or not (
            resources.get("limits") or {}
        ).get("memory"):
            problems.append(f"{where}: memory request and limit are required")
        security = pod["spec"].get("securityContext") or {}
        if not security.get("runAsNonRoot"):
            problems.append(f"{where}: pod must set runAsNonRoot")

        sink = settings.role.sink
        so = scaled.get(name)
        if sink in SINGLE_WRITER_SINKS:
            if so is not None:
                problems.append(f"{where}: {sink} is single-writer and must not autoscale")
            if (
                dep["spec"].get("replicas") != 1
                or dep["spec"].get("strategy", {}).get("type") != "Recreate"
            ):
                problems.append(
                    f"{where}: {sink} is single-writer: replicas 1 with strategy Recreate"
                )
            continue
        if so is None:
            problems.append(f"{where}: no KEDA ScaledObject scales it")
            continue
        if "replicas" in dep["spec"]:
            problems.append(f"{where}: sets replicas, which fights its ScaledObject")
        problems += _check_scaled_object(so, settings, trigger_auths)
    for sink in KNOWN_SINKS:
        if f"sink:{sink}" not in roles:
            problems.append(f"k8s: no Deployment for sink {sink}")
    if "normalize" not in roles:
        problems.append("k8s: no Deployment for normalize")
    for target in scaled:
        if target not in deployments:
            problems.append(f"ScaledObject {target}: scaleTargetRef names no Deployment")
    for name, auth in trigger_auths.items():
        for ref in auth["spec"].get("secretTargetRef") or []:
            if ref["key"] not in secrets.get(ref["name"], {}):
                problems.append(
                    f"TriggerAuthentication {name}: secret {ref['name']} has no key {ref['key']}"
                )
    return problems


def _check_scaled_object(
    so: Mapping[str, Any], settings: Settings, trigger_auths: Mapping[str, Any]
) -> list[str]:
    name = so["metadata"]["name"]
    where = f"ScaledObject {name}"
    problems = []
    spec = so["spec"]
    partitions = settings.kafka.partitions
    if spec.get("maxReplicaCount", 100) > partitions:
        problems.append(
            f"{where}: maxReplicaCount {spec.get('maxReplicaCount')} exceeds "
            f"ETL_KAFKA__PARTITIONS={partitions}"
        )
    if spec.get("minReplicaCount", 0) < 1:
        problems.append(f"{where}: minReplicaCount below 1 leaves the group without a member")
    triggers = spec.get("triggers") or []
    if not triggers:
        problems.append(f"{where}: no triggers")
    for trigger in triggers:
        meta = trigger.get("metadata") or {}
        if trigger.get("type") != "kafka":
            problems.append(f"{where}: trigger type {trigger.get('type')} is not kafka")
            continue
        if meta.get("consumerGroup") != role_group(settings):
            problems.append(
                f"{where}: consumerGroup {meta.get('consumerGroup')} is not {role_group(settings)}"
            )
        if meta.get("topic") != role_topic(settings):
            problems.append(f"{where}: topic {meta.get('topic')} is not {role_topic(settings)}")
        if meta.get("bootstrapServers") != settings.kafka.bootstrap_servers:
            problems.append(
                f"{where}: bootstrapServers {meta.get('bootstrapServers')} differ from "
                f"ETL_KAFKA__BOOTSTRAP_SERVERS={settings.kafka.bootstrap_servers}"
            )
        if not str(meta.get("lagThreshold", "")).isdigit() or int(meta["lagThreshold"]) < 1:
            problems.append(f"{where}: lagThreshold must be a positive integer string")
        if meta.get("offsetResetPolicy", "latest") != "earliest":
            problems.append(
                f"{where}: offsetResetPolicy must be earliest, as the workers' auto_offset_reset"
            )
        auth = (trigger.get("authenticationRef") or {}).get("name")
        if auth and auth not in trigger_auths:
            problems.append(f"{where}: authenticationRef {auth} is not defined")
    return problems


def _check_kustomization(path: Path, directory: Path) -> list[str]:
    problems = []
    doc = yaml.safe_load(path.read_text())
    active = doc.get("resources") or []
    commented = re.findall(r"^\s*#\s*-\s*(\S+\.yaml)\s*$", path.read_text(), re.M)
    for resource in active + commented:
        if not (directory / resource).exists():
            problems.append(f"kustomization.yaml: resource {resource} does not exist")
    for manifest in sorted(directory.glob("*.yaml")):
        if manifest.name != path.name and manifest.name not in active + commented:
            problems.append(f"kustomization.yaml: {manifest.name} is not listed")
    return problems


# ---------------------------------------------------------------------------
# Grafana


@functools.cache
def metric_series() -> dict[str, frozenset[str]]:
    """Series names the registry exposes -> their label names (from streams/metrics.py)."""
    from streams import metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    series: dict[str, frozenset[str]] = {}
    for collector in list(metrics.REGISTRY._collector_to_names):  # noqa: SLF001 (names are only kept there)
        labels = frozenset(getattr(collector, "_labelnames", ()))
        for family in collector.describe():
            for suffix in suffixes.get(family.type, ("",)):
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = labels | extra
    return series


GRAFANA_MACROS = re.compile(r"\$__(rate_interval|interval|range)|\$\{?__\w+\}?")


def dashboard_exprs(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    exprs = []

    def panels(items: list[Any]) -> Iterator[Mapping[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    for panel in panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                exprs.append((panel.get("title", "?"), target["expr"]))
    return exprs


def expr_metrics(expr: str) -> tuple[list[tuple[str, set[str]]], list[set[str]]]:
    """(selectors as (metric, matcher labels),
    label sets of by/without clauses with the selectors beneath).
    """
    import promql_parser

    tree = promql_parser.parse(GRAFANA_MACROS.sub("5m", expr))
    selectors: list[tuple[str, set[str]]] = []
    groupings: list[tuple[set[str], Any]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append((node.name, {m.name for m in node.matchers.matchers}))
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            groupings.append((set(node.modifier.labels), node.expr))
        return True

    promql_parser.walk(tree, visit)
    by_clauses = []
    for labels, sub in groupings:
        available: set[str] = set()

        def collect(node: Any, available: set[str] = available) -> bool:
            if isinstance(node, promql_parser.VectorSelector):
                available.update(metric_series().get(node.name, ()))
            return True

        promql_parser.walk(sub, collect)
        by_clauses.append(labels - available)
    return selectors, by_clauses


def check_dashboard(path: Path, provisioning: Path) -> list[str]:
    problems: list[str] = []
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{path.name}: not JSON: {exc}"]
    series = metric_series()
    exprs = dashboard_exprs(dashboard)
    if not exprs:
        problems.append(f"{path.name}: no PromQL targets")
    for title, expr in exprs:
        try:
            selectors, unknown_by = expr_metrics(expr)
        except (ValueError, SyntaxError) as exc:
            problems.append(f"{path.name} panel {title!r}: PromQL does not parse: {exc}")
            continue
        for metric, labels in selectors:
            if metric not in series:
                problems.append(
                    f"{path.name} panel {title!r}: metric {metric} is not in streams/metrics.py"
                )
                continue
            for label in labels - series[metric] - {"__name__", "job", "instance", "service"}:
                problems.append(f"{path.name} panel {title!r}: {metric} has no label {label}")
        for labels in unknown_by:
            for label in sorted(labels):
                problems.append(
                    f"{path.name} panel {title!r}: groups by {label}, "
                    "which no metric in the expression has"
                )

    sources = []
    for file in sorted((provisioning / "datasources").glob("*.y*ml")):
        sources += yaml.safe_load(file.read_text()).get("datasources", [])
    uids = {s["uid"]: s["type"] for s in sources}
    variables = {
        v["name"]: v
        for v in (dashboard.get("templating") or {}).get("list", [])
        if v.get("type") == "datasource"
    }
    for var in variables.values():
        current = (var.get("current") or {}).get("value")
        if current not in uids or uids[current] != var.get("query"):
            problems.append(
                f"{path.name}: datasource variable {var['name']} defaults to {current!r}, "
                f"not a provisioned {var.get('query')} datasource"
            )

    def check_ref(ref: Any, where: str) -> None:
        if ref is None:
            return
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        m = re.fullmatch(r"\$\{?(\w+)\}?", str(uid))
        if m:
            if m.group(1) not in variables:
                problems.append(
                    f"{path.name} {where}: datasource variable ${m.group(1)} is not defined"
                )
        elif uid not in uids:
            problems.append(f"{path.name} {where}: datasource uid {uid!r} is not provisioned")
        if isinstance(ref, dict) and ref.get("type") and uids and ref["type"] not in uids.values():
            problems.append(
                f"{path.name} {where}: datasource type {ref['type']} is not provisioned"
            )

    def walk_panels(items: list[Any]) -> None:
        for panel in items:
            check_ref(panel.get("datasource"), f"panel {panel.get('title')!r}")
            for target in panel.get("targets") or []:
                check_ref(
                    target.get("datasource"),
                    f"panel {panel.get('title')!r} target {target.get('refId')}",
                )
            walk_panels(panel.get("panels") or [])

    walk_panels(dashboard.get("panels") or [])

    providers = []
    for file in sorted((provisioning / "dashboards").glob("*.y*ml")):
        providers += yaml.safe_load(file.read_text()).get("providers", [])
    if not providers:
        problems.append("grafana provisioning: no dashboard provider")
    return problems


def dashboard_metric_families(path: Path) -> set[str]:
    """Metric families (registry names, no suffix) a dashboard queries."""
    families = set()
    for _, expr in dashboard_exprs(json.loads(path.read_text())):
        for metric, _ in expr_metrics(expr)[0]:
            families.add(re.sub(r"_(bucket|sum|count|created)$", "", metric))
    return families
