"""The deployment files under deploy/, checked at schema level and for consistency with each other
and with the service (docs/configuration.md, docs/operating.md: probes, shutdown bound).

- deploy/compose.yaml against the Compose Specification JSON schema (the copy bundled by the PyPI
  package check-jsonschema, ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, Apache-2.0),
  and every file it bind-mounts or builds from exists; every port is published on 127.0.0.1 only, every
  credential is a required variable without default, and deploy/README.md's deploy/.env recipe sets
  exactly those;
- deploy/Dockerfile: the base image pinned to an exact Python release (of uv.lock) on a named Debian
  release (digest optional: see deploy/README.md), uv pinned to the Makefile's version with hashes, the
  environment made by ``uv sync --locked --no-dev`` (no plain ``pip install``), with controls that a
  floating, unlocked Dockerfile fails these checks (docker build cannot run here);
- deploy/k8s/*.yaml against the Kubernetes OpenAPI JSON schemas bundled by the PyPI package
  kubernetes-validate (strict: unknown fields are errors), plus probes, ports, selectors, the shutdown
  budget and the flags ConfigMap (parsed with canaryws's own parser);
- deploy/prometheus/prometheus.yml with ``promtool check config`` (promtool must be installed);
- deploy/otel-collector/config.yaml: pipelines refer to defined components;
- deploy/grafana: provisioning and dashboard structure; every PromQL expression parses
  (``promtool check rules``). That its metric names exist on a real service's /metrics is checked in
  tests/integration/test_deploy_stack.py.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from canaryws.core.flagdoc import parse_flags_document

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
OTEL_CONFIG = DEPLOY / "otel-collector" / "config.yaml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "canaryws.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "canaryws.yaml"
FLAGS = REPO / "flags" / "features.json"
K8S_MANIFESTS = ["configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "probe.yaml"]
CANARYWS_SERVICES = ["canaryws-1", "canaryws-2"]

# Grafana's built-in interval variables are not PromQL; give them a duration to parse.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool is required (Debian package `prometheus`, /usr/bin/promtool)"
    return path


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def documented_variables() -> set[str]:
    """The environment variables docs/configuration.md documents."""
    return set(re.findall(r"`((?:CANARYWS|UNLEASH|OTEL)_[A-Z_]+)", (REPO / "docs" / "configuration.md").read_text()))


# -- compose -----------------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def compose_errors(doc: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    assert compose_errors(compose()) == []


def test_the_compose_schema_catches_mistakes() -> None:
    """A control: the schema really is enforced (an unknown service key, a wrong type)."""
    doc = compose()
    bad_key = copy.deepcopy(doc)
    bad_key["services"]["canaryws-1"]["healthcheck_typo"] = {}
    assert compose_errors(bad_key)
    bad_type = copy.deepcopy(doc)
    bad_type["services"]["prometheus"]["ports"] = "9090:9090"
    assert compose_errors(bad_type)


def bind_sources(service: dict[str, Any]) -> list[str]:
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                out.append(volume["source"])
        else:
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                out.append(source)
    return out


def test_every_file_compose_mounts_or_builds_from_exists() -> None:
    doc = compose()
    missing = []
    mounts = 0
    for name, service in doc["services"].items():
        for source in bind_sources(service):
            mounts += 1
            path = (DEPLOY / source).resolve()
            if not path.is_file():
                missing.append(f"{name}: {source} -> {path}")
        build = service.get("build")
        if build is not None:
            context = (DEPLOY / build["context"]).resolve()
            if not (context / build["dockerfile"]).is_file():
                missing.append(f"{name}: build {build}")
    assert mounts >= 9  # config files, dashboards, flags, seed script: none may silently be dropped
    assert missing == []


def test_compose_runs_two_canaryws_replicas_wired_to_the_stack() -> None:
    doc = compose()
    services = doc["services"]
    images = {name: str(s.get("image", "")) for name, s in services.items()}
    for official in ("unleashorg/unleash-server:", "postgres:", "otel/opentelemetry-collector-contrib:",
                     "prom/prometheus:", "grafana/grafana:"):
        assert any(image.startswith(official) for image in images.values()), official

    unleash_env = env_of(services["unleash"])
    documented = documented_variables()
    for name in CANARYWS_SERVICES:
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        env = env_of(service)
        # every canaryws/Unleash variable set is one docs/configuration.md documents
        assert {k for k in env if k.startswith(("CANARYWS_", "UNLEASH_"))} <= documented
        assert env["CANARYWS_HOST"] == "0.0.0.0"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert env["UNLEASH_URL"] == "http://unleash:4242/api"
        assert env["UNLEASH_API_TOKEN"] == unleash_env["INIT_BACKEND_API_TOKENS"]
        assert "service.instance.id=" + name in env["OTEL_RESOURCE_ATTRIBUTES"]
        # health on /healthz, on the port the service listens on
        assert any(f"127.0.0.1:{env['CANARYWS_PORT']}/healthz" in part for part in service["healthcheck"]["test"])
        assert any(str(p).endswith(f":{env['CANARYWS_PORT']}") for p in service["ports"])
        # the flags file the service reads is the one mounted
        targets = {v["target"]: v for v in service["volumes"]}
        assert targets[env["CANARYWS_FLAGS"]]["source"] == "../flags/features.json"
        assert targets[env["CANARYWS_DATA_DIR"]]["type"] == "volume"  # shared by both replicas: one token secret
        # docker's kill comes after the service's own shutdown bound
        grace = float(str(service["stop_grace_period"]).removesuffix("s"))
        assert grace > float(env["CANARYWS_SHUTDOWN_TIMEOUT"]) + 1
    assert services["canaryws-1"]["volumes"] == services["canaryws-2"]["volumes"]
    assert {"unleash-seed", "otel-collector"} <= set(services["canaryws-1"]["depends_on"])
    seed_env = env_of(services["unleash-seed"])
    assert seed_env["UNLEASH_ADMIN_TOKEN"] == unleash_env["INIT_ADMIN_API_TOKENS"]

    # the guard reads the collector's trace files, rolls back on the server, serves its metrics
    guard = services["guard"]
    guard_env = env_of(guard)
    assert guard["image"] == services["canaryws-1"]["image"] and guard["command"][0] == "guard"
    assert guard_env["UNLEASH_ADMIN_TOKEN"] == unleash_env["INIT_ADMIN_API_TOKENS"]
    assert guard_env["UNLEASH_URL"] == "http://unleash:4242/api"
    option = dict(zip(guard["command"][1::2], guard["command"][2::2], strict=False))
    guard_mounts = {v["target"]: v for v in guard["volumes"]}
    file_exporter_dir = str(PurePosixPath(next(v for k, v in load_yaml(OTEL_CONFIG)["exporters"].items()
                                               if k.split("/")[0] == "file")["path"]).parent)
    assert option["--traces"] == file_exporter_dir and guard_mounts[file_exporter_dir]["read_only"] is True
    assert option["--metrics-host"] == "0.0.0.0"
    assert guard["restart"] == "no"  # a rollback must not be followed by a restart loop
    from canaryws.cli.report import guard as guard_command

    guard_command.make_context("guard", list(guard["command"][1:]))  # the options exist (click would exit 2)

    # Prometheus scrapes both replicas and the collector; its rule file is the mounted alerts.yml
    prom = load_yaml(PROMETHEUS_CONFIG)
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert {f"{name}:8000" for name in CANARYWS_SERVICES} | {"otel-collector:8888"} <= targets
    assert f"guard:{option['--metrics-port']}" in targets
    scrape_interval = float(prom["global"]["scrape_interval"].removesuffix("s"))
    assert float(option["--metrics-linger"]) > 2 * scrape_interval  # the rollback is scraped before it exits
    prom_mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"] if v["type"] == "bind"}
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert prom_mounts["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"

    # the collector receives OTLP/HTTP on the port the replicas send to
    otel = load_yaml(OTEL_CONFIG)
    assert otel["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    collector_mounts = {v["target"] for v in services["otel-collector"]["volumes"]}
    assert any(arg == "--config=/etc/otelcol-contrib/config.yaml" for arg in services["otel-collector"]["command"])
    assert "/etc/otelcol-contrib/config.yaml" in collector_mounts
    file_exporter = next(v for k, v in otel["exporters"].items() if k.split("/")[0] == "file")
    assert str(PurePosixPath(file_exporter["path"]).parent) in collector_mounts  # the file exporter's volume


def test_compose_runs_the_rollout_controller_only_when_asked() -> None:
    """The controller is opt-in (a compose profile: a rollout is started deliberately), changes the
    Unleash server with the admin token, reads the collector's trace files, keeps its state in a
    volume of its own at the image's data dir, is scraped by Prometheus, and is never restarted."""
    from canaryws.cli.rollout import rollout_group

    services = compose()["services"]
    rollout = services["rollout"]
    assert rollout["profiles"] == ["rollout"]
    assert all("profiles" not in s for name, s in services.items() if name != "rollout")
    assert rollout["image"] == services["canaryws-1"]["image"] and rollout["command"][:2] == ["rollout", "start"]
    env = env_of(rollout)
    assert env["UNLEASH_ADMIN_TOKEN"] == env_of(services["unleash"])["INIT_ADMIN_API_TOKENS"]
    assert env["UNLEASH_URL"] == "http://unleash:4242/api"
    args = list(rollout["command"][2:])
    rollout_group.commands["start"].make_context("start", list(args))  # the options exist (click would exit 3)
    option = dict(zip(args[::2], args[1::2], strict=True))
    mounts = {v["target"]: v for v in rollout["volumes"]}
    assert mounts[option["--traces"]]["read_only"] is True
    assert mounts[option["--traces"]]["source"] == next(v["source"] for v in services["guard"]["volumes"])
    data = mounts["/data"]  # the image's CANARYWS_DATA_DIR, owned by its user: the default --state is there
    assert "--state" not in option and data["type"] == "volume" and not data.get("read_only")
    assert data["source"] not in {v["source"] for v in services["canaryws-1"]["volumes"]}
    assert data["source"] in compose()["volumes"]
    assert rollout["restart"] == "no"  # a start after the end would begin a new rollout
    prom = load_yaml(PROMETHEUS_CONFIG)
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert f"rollout:{option['--metrics-port']}" in targets and option["--metrics-host"] == "0.0.0.0"
    scrape_interval = float(prom["global"]["scrape_interval"].removesuffix("s"))
    assert float(option["--metrics-linger"]) > 2 * scrape_interval  # the end is scraped before it exits


def probe_options(args: list[str]) -> dict[str, str]:
    """``canaryws probe`` ARGS (after the command name) as option -> value; click parses them first
    (an unknown option or a bad value would exit 2)."""
    from canaryws.cli.probe import probe as probe_command

    probe_command.make_context("probe", list(args))
    return dict(zip(args[::2], args[1::2], strict=True))


def test_compose_runs_the_probe_against_a_replica_with_the_data_dir_read_only() -> None:
    services = compose()["services"]
    probe = services["probe"]
    assert probe["image"] == services["canaryws-1"]["image"] and probe["command"][0] == "probe"
    option = probe_options(probe["command"][1:])
    # the URL names a replica's service name and the port it listens on
    m = re.fullmatch(r"ws://(?P<host>[a-z0-9-]+):(?P<port>\d+)/records", option["--url"])
    assert m and m["host"] in CANARYWS_SERVICES, option["--url"]
    assert m["port"] == env_of(services[m["host"]])["CANARYWS_PORT"]
    assert m["host"] in probe["depends_on"]
    # the replicas' data volume (secret.key), read-only: the probe only signs tokens with it
    mounts = {v["target"]: v for v in probe["volumes"]}
    data = mounts[option["--data-dir"]]
    replica_data = {v["target"]: v for v in services["canaryws-1"]["volumes"]}[env_of(services["canaryws-1"])[
        "CANARYWS_DATA_DIR"]]
    assert (data["type"], data["source"], data["read_only"]) == ("volume", replica_data["source"], True)
    assert "--token-file" not in option and "--once" not in probe["command"]
    # metrics on every interface of the container, published on loopback, scraped under the alert's job name
    assert option["--metrics-host"] == "0.0.0.0"
    assert [published_host_ip(p) for p in probe["ports"]] == [LOOPBACK]
    assert any(str(p).endswith(f":{option['--metrics-port']}") for p in probe["ports"])
    prom = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "canaryws-probe"]
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == [f"probe:{option['--metrics-port']}"]
    assert 'up{job="canaryws-probe"}' in ALERTS.read_text()


# -- compose: exposure and secrets -------------------------------------------------------------------

LOOPBACK = "127.0.0.1"
# Environment entries that carry a credential: each must be a required interpolation, never a default.
CREDENTIALS = {
    "postgres": ["POSTGRES_PASSWORD"],
    "unleash": ["DATABASE_PASSWORD", "INIT_BACKEND_API_TOKENS", "INIT_ADMIN_API_TOKENS",
                "UNLEASH_DEFAULT_ADMIN_PASSWORD", "UNLEASH_SECRET"],
    "unleash-seed": ["UNLEASH_ADMIN_TOKEN", "UNLEASH_CLIENT_TOKEN"],
    "guard": ["UNLEASH_ADMIN_TOKEN"],
    "rollout": ["UNLEASH_ADMIN_TOKEN"],
    "canaryws-1": ["UNLEASH_API_TOKEN"],
    "canaryws-2": ["UNLEASH_API_TOKEN"],
    "grafana": ["GF_SECURITY_ADMIN_PASSWORD"],
}
REQUIRED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):?\?[^}]*\}")
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def published_host_ip(entry: Any) -> str | None:
    """The host address a compose `ports` entry publishes on; None for every interface."""
    if isinstance(entry, dict):
        return entry.get("host_ip")
    text = str(entry)
    m = re.fullmatch(r"(?:(?P<ip>\[[^\]]+\]|[^:\[\]]+):)?(?:[^:]*:)?[^:]+", text)
    assert m, f"unparsed ports entry {text!r}"
    if text.count(":") < 2 and not text.startswith("["):
        return None  # "HOST:CONTAINER" or "CONTAINER": every interface
    ip = m.group("ip")
    return ip.strip("[]") if ip else None


def test_published_host_ip_reads_the_short_and_long_syntax() -> None:
    assert published_host_ip("127.0.0.1:4242:4242") == LOOPBACK
    assert published_host_ip("4242:4242") is None
    assert published_host_ip("8000") is None
    assert published_host_ip("0.0.0.0:3000:3000") == "0.0.0.0"
    assert published_host_ip("[::1]:3000:3000") == "::1"
    assert published_host_ip({"target": 3000, "published": "3000", "host_ip": LOOPBACK}) == LOOPBACK
    assert published_host_ip({"target": 3000, "published": "3000"}) is None


def test_compose_publishes_every_port_on_loopback_only() -> None:
    """Most of the stack has no authentication of its own (the replicas' /metrics, the guard, the OTLP
    receivers the guard's evidence comes through, Jaeger, Prometheus's lifecycle API): nothing is
    published beyond 127.0.0.1 (deploy/README.md, "What is exposed")."""
    services = compose()["services"]
    published = {name: [published_host_ip(p) for p in s.get("ports", [])] for name, s in services.items()}
    assert {"canaryws-1", "canaryws-2", "guard", "unleash", "otel-collector", "jaeger", "prometheus",
            "grafana"} <= {name for name, ips in published.items() if ips}
    wide = {name: ips for name, ips in published.items() if any(ip != LOOPBACK for ip in ips)}
    assert wide == {}, f"published on more than 127.0.0.1: {wide}"
    assert "postgres" not in {name for name, ips in published.items() if ips}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``$$``) in every string of a parsed compose file (compose
    interpolates values after parsing the YAML); a missing required variable raises KeyError."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise KeyError(f"{name}: {arg}")
            return str(value)
        return value or ""

    return INTERPOLATION.sub(one, value)


def test_compose_credentials_are_required_and_have_no_default() -> None:
    """No token or password has a value in the file: each credential is ``${VAR:?message}``, so compose
    refuses to start without it, and no known default (the old `admin`, `localonly...` tokens, Unleash's
    built-in `unleash4all` user and `super-secret` session key) can be in force."""
    services = compose()["services"]
    text = COMPOSE.read_text()
    for service, names in CREDENTIALS.items():
        env = env_of(services[service])
        for name in names:
            assert REQUIRED.fullmatch(env[name]), f"{service}: {name}={env[name]!r} is not a required variable"
    # The UI's first admin user is named, with a required password; Grafana's too.
    unleash_env = env_of(services["unleash"])
    assert unleash_env["UNLEASH_DEFAULT_ADMIN_USERNAME"] == "admin"
    # No interpolation of a credential-like variable has a default.
    for m in INTERPOLATION.finditer(text):
        name = m.group("name") or ""
        if re.search(r"TOKEN|PASSWORD|SECRET|KEY", name):
            assert m.group("op") in (":?", "?"), f"{m.group(0)} must be required, not defaulted"
    values = json.dumps(services)  # what compose passes on (comments may name the old defaults)
    for known in ("localonly", "unleash4all", "super-secret", ":-admin}", "unleash-local-only"):
        assert known not in values, known


def readme_env_recipe() -> str:
    """The shell block of deploy/README.md that writes deploy/.env."""
    blocks = re.findall(r"```sh\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if "cat > deploy/.env <<EOF" in b]
    recipe = block[: block.index("\nEOF\n") + len("\nEOF\n")]
    assert "docker" not in recipe
    return recipe


def test_the_readme_env_recipe_sets_exactly_the_required_secrets(tmp_path: Path) -> None:
    """deploy/README.md's recipe, run as written, writes deploy/.env (mode 0600) with a fresh value for
    every variable compose requires, and with it the file interpolates into a stack whose tokens have
    the shapes Unleash expects and agree between Unleash and its clients."""
    assert shutil.which("openssl"), "the recipe needs openssl"
    (tmp_path / "deploy").mkdir()
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_env_recipe()], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    env_file = tmp_path / "deploy" / ".env"
    assert env_file.stat().st_mode & 0o077 == 0, oct(env_file.stat().st_mode)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line)
    text = COMPOSE.read_text()
    required = {m.group("name") for m in REQUIRED.finditer(text)}
    assert set(env) == required
    assert all(len(value) >= 32 for value in env.values()), env.keys()

    with pytest.raises(KeyError):
        interpolate(compose(), {})
    doc = interpolate(compose(), env)
    assert compose_errors(doc) == []
    services = doc["services"]
    unleash_env = env_of(services["unleash"])
    assert re.fullmatch(r"default:development\.[0-9a-f]{48}", unleash_env["INIT_BACKEND_API_TOKENS"])
    assert re.fullmatch(r"\*:\*\.[0-9a-f]{48}", unleash_env["INIT_ADMIN_API_TOKENS"])
    assert unleash_env["DATABASE_PASSWORD"] == env_of(services["postgres"])["POSTGRES_PASSWORD"]
    for name in CANARYWS_SERVICES:
        assert env_of(services[name])["UNLEASH_API_TOKEN"] == unleash_env["INIT_BACKEND_API_TOKENS"]
    assert env_of(services["guard"])["UNLEASH_ADMIN_TOKEN"] == unleash_env["INIT_ADMIN_API_TOKENS"]
    # a second run makes other secrets
    subprocess.run(["bash", "-euo", "pipefail", "-c", readme_env_recipe()], cwd=tmp_path, check=True, timeout=60)
    again = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line)
    assert all(again[k] != env[k] for k in env)


# -- the image ---------------------------------------------------------------------------------------

DOCKERFILE = DEPLOY / "Dockerfile"
# An exact CPython patch release on a named Debian release, optionally with the image index digest.
PINNED_BASE = re.compile(r"python:(?P<python>3\.\d+\.\d+)-slim-(?:bookworm|trixie)(?:@sha256:[0-9a-f]{64})?")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
    return out


def makefile_uv_version() -> str:
    m = re.search(r"^UV_VERSION\s*:?=\s*(\S+)\s*$", (REPO / "Makefile").read_text(), re.M)
    assert m, "UV_VERSION in the Makefile"
    return m.group(1)


def locked_python_minor() -> str:
    """``3.11`` from uv.lock's ``requires-python = "==3.11.*"``."""
    m = re.search(r'^requires-python = "==(\d+\.\d+)\.\*"$', (REPO / "uv.lock").read_text(), re.M)
    assert m, "uv.lock pins one Python minor version"
    return m.group(1)


def dockerfile_problems(text: str) -> list[str]:
    """What keeps the image from being exactly the locked packages on a pinned base."""
    problems = []
    steps = dockerfile_instructions(text)
    stages = [args.split()[0] for keyword, args in steps if keyword == "FROM"]
    aliases = {args.split()[2] for keyword, args in steps if keyword == "FROM" and len(args.split()) == 3}
    bases = [image for image in stages if image not in aliases]
    if not bases:
        problems.append("no FROM")
    for image in bases:
        m = PINNED_BASE.fullmatch(image)
        if not m:
            problems.append(f"base image {image} is not python:<3.x.y>-slim-<debian>[@sha256:<digest>]")
        elif not m.group("python").startswith(locked_python_minor() + "."):
            problems.append(f"base image {image} is not the Python of uv.lock ({locked_python_minor()})")
    if len(set(bases)) > 1:
        problems.append(f"the stages use different base images {sorted(set(bases))}: the environment links to one")

    runs = [args for keyword, args in steps if keyword == "RUN"]
    for run in runs:
        for command in re.split(r"&&|;|\|\|", run):
            words = command.split()
            pip = words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]
            if pip and "--require-hashes" not in words:
                problems.append(f"pip install without --require-hashes: {command.strip()}")
    uv = re.search(r"uv==([^\s']+)((?: --hash=sha256:[^\s'\"]+)+)", text)
    if not uv:
        problems.append("uv is not installed at a pinned version with hashes")
    else:
        if uv.group(1) != makefile_uv_version():
            problems.append(f"uv {uv.group(1)} in the image, {makefile_uv_version()} in the Makefile")
        hashes = re.findall(r"--hash=sha256:([^\s'\"]+)", uv.group(2))
        if len(hashes) < 2 or not all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes):
            problems.append(f"uv's hashes (x86_64 and aarch64 wheels at least): {hashes}")

    syncs = [run for run in runs if re.search(r"\buv sync\b", run)]
    if not syncs:
        problems.append("no `uv sync`: the environment does not come from uv.lock")
    for sync in syncs:
        words = sync.split()
        if not {"--locked", "--frozen"} & set(words):
            problems.append(f"`{sync}` may re-resolve (needs --locked or --frozen)")
        if "--no-dev" not in words:
            problems.append(f"`{sync}` installs the dev group")
    if syncs and ("--no-install-project" in syncs[-1].split() or "--no-editable" not in syncs[-1].split()):
        problems.append("the last `uv sync` must install the project, not editable (the source is not in the image)")
    copies = [(i, args) for i, (keyword, args) in enumerate(steps) if keyword == "COPY"]
    first_sync = next((i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "uv sync" in args), None)
    if first_sync is not None and not any("uv.lock" in args.split() for i, args in copies if i < first_sync):
        problems.append("uv.lock is not copied before `uv sync`")

    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", env)
    if not venv:
        problems.append("UV_PROJECT_ENVIRONMENT is not set")
    else:
        if not any(args.startswith("--from=") and args.split()[1:] == [venv.group(1), venv.group(1)]
                   for _, args in copies):
            problems.append(f"the runtime stage does not copy {venv.group(1)} from the build stage")
        if f"PATH={venv.group(1)}/bin:" not in env:
            problems.append(f"{venv.group(1)}/bin is not first on PATH")
    if "UV_PYTHON_DOWNLOADS=never" not in env:
        problems.append("uv may download a Python of its own instead of the base image's")
    if ("ENTRYPOINT", '["canaryws"]') not in steps:
        problems.append('ENTRYPOINT is not ["canaryws"]')
    return problems


def test_dockerfile_pins_its_base_image_and_installs_exactly_the_locked_packages() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_the_dockerfile_checks_catch_a_floating_unlocked_image() -> None:
    """A control: the old Dockerfile (floating tag, `pip install .`), and single deviations from ours."""
    old = '''FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \\
    && useradd --system canaryws
ENTRYPOINT ["canaryws"]
'''
    problems = dockerfile_problems(old)
    assert any("python:3.11-slim is not" in p for p in problems), problems
    assert any("pip install without --require-hashes" in p for p in problems), problems
    assert any("no `uv sync`" in p for p in problems), problems

    ours = DOCKERFILE.read_text()
    (base,) = set(re.findall(r"^FROM (\S+)", ours, re.M))
    for mutation, expected in (
            (ours.replace(f"FROM {base}", "FROM python:3.11-slim"), "is not python:"),
            (ours.replace(f"FROM {base}", "FROM python:3.12.9-slim-trixie"), "not the Python of uv.lock"),
            (ours.replace(f"FROM {base}", f"FROM {base.split('@')[0]}@sha256:abc"), "is not python:"),
            (ours.replace(f"FROM {base}\n\nENV PYTHONDONTWRITEBYTECODE",
                          "FROM python:3.11.9-slim-bookworm\n\nENV PYTHONDONTWRITEBYTECODE"), "different base images"),
            (ours.replace("RUN uv sync --locked", "RUN uv sync", 1), "may re-resolve"),
            (ours.replace("--no-dev --no-editable", "--no-editable"), "installs the dev group"),
            (ours.replace(f"uv=={makefile_uv_version()}", "uv==0.0.1"), "in the Makefile"),
            (ours.replace("--require-hashes", ""), "without --require-hashes"),
            (ours.replace("COPY pyproject.toml uv.lock ./", "COPY pyproject.toml ./"), "uv.lock is not copied"),
    ):
        assert mutation != ours, expected
        assert any(expected in p for p in dockerfile_problems(mutation)), (expected, dockerfile_problems(mutation))
    # a digest-pinned base, in both stages, is what the README asks for at the first build
    digest = "@sha256:" + "0" * 64
    assert dockerfile_problems(ours.replace(f"FROM {base}", f"FROM {base.split('@')[0]}{digest}")) == []


def test_dockerfile_copies_only_files_that_exist_and_the_context_lets_through() -> None:
    ignore = [entry.rstrip("/") for entry in (DEPLOY / "Dockerfile.dockerignore").read_text().split()]
    copies = [args for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()) if keyword == "COPY"]
    assert copies
    for args in copies:
        if args.startswith("--from="):
            continue  # from the build stage
        *sources, _dest = args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert f"!{source.rstrip('/')}" in ignore, source
    assert "!uv.lock" in ignore


# -- Kubernetes --------------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    out = {}
    for name in K8S_MANIFESTS:
        docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
        assert len(docs) == 1, name
        out[name] = docs[0]
    return out


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(K8S_MANIFESTS)
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(K8S_MANIFESTS)


@pytest.mark.parametrize("name", K8S_MANIFESTS)
def test_manifest_validates_against_the_kubernetes_schema(name: str) -> None:
    doc = manifests()[name]
    kubernetes_validate.validate(doc, latest_version(), strict=True)


def test_the_kubernetes_schema_catches_mistakes() -> None:
    deployment = manifests()["deployment.yaml"]
    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown_field, latest_version(), strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, latest_version(), strict=True)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_deployment_probes_ports_and_selectors_match() -> None:
    m = manifests()
    deployment, service, hpa, pdb = m["deployment.yaml"], m["service.yaml"], m["hpa.yaml"], m["pdb.yaml"]
    assert (deployment["apiVersion"], hpa["apiVersion"], pdb["apiVersion"]) == ("apps/v1", "autoscaling/v2",
                                                                                "policy/v1")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    env = container_env(container)
    assert {k for k in env if k.startswith(("CANARYWS_", "UNLEASH_"))} <= documented_variables()
    port_by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["CANARYWS_HOST"] == "0.0.0.0"
    listen = int(env["CANARYWS_PORT"])

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return port_by_name[port] if isinstance(port, str) else int(port)

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert probe_port(container[probe]) == listen, probe

    # Service -> pods: selector matches, targetPort is the listening port
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (svc_port,) = service["spec"]["ports"]
    target = svc_port["targetPort"]
    assert (port_by_name[target] if isinstance(target, str) else target) == listen
    # HPA and PDB point at this Deployment's pods
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_probe_deployment_probes_the_service_and_is_not_behind_it() -> None:
    m = manifests()
    probe, service, deployment, pdb = m["probe.yaml"], m["service.yaml"], m["deployment.yaml"], m["pdb.yaml"]
    pod = probe["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert probe["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # neither the canaryws Service nor its PDB selects the probe's pod
    assert not service["spec"]["selector"].items() <= labels.items()
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["args"][0] == "probe"
    option = probe_options(container["args"][1:])
    (svc_port,) = service["spec"]["ports"]
    assert option["--url"] == f"ws://{service['metadata']['name']}:{svc_port['port']}/records"
    # metrics: the named port, the scrape annotations and the HTTP checks agree
    port_by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_by_name["metrics"] == int(option["--metrics-port"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == option["--metrics-port"]
    assert option["--metrics-host"] == "0.0.0.0"
    for check in ("readinessProbe", "livenessProbe"):
        assert container[check]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    # only secret.key, owner-only in the data dir, which the probe mounts read-only
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert [i["key"] for i in volumes["secrets"]["secret"]["items"]] == ["secret.key"]
    assert volumes["secrets"]["secret"]["secretName"] == next(
        v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    (init,) = pod["spec"]["initContainers"]
    assert "install -m 0600 /secrets/secret.key /data/secret.key" in init["command"][-1]
    mount = next(vm for vm in container["volumeMounts"] if vm["mountPath"] == option["--data-dir"])
    assert mount["readOnly"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == deployment["spec"]["template"]["spec"][
        "securityContext"]["runAsUser"]


def test_the_replicas_share_a_postgresql_sink_from_a_required_secret() -> None:
    """Kubernetes: CANARYWS_SINK comes from the Secret canaryws-sink (key url), not optional: the
    replicas commit to one PostgreSQL database (a resend to another pod is a replay, and the
    records outlive the pods), never to the default SQLite in each pod's emptyDir. The README's
    recipe creates that Secret with a PostgreSQL URL that the service accepts."""
    from canaryws.adapters.sink.url import parse_sink

    (container,) = manifests()["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    (sink,) = [e for e in container["env"] if e["name"] == "CANARYWS_SINK"]
    assert "value" not in sink
    assert sink["valueFrom"]["secretKeyRef"] == {"name": "canaryws-sink", "key": "url"}  # not optional
    readme = (DEPLOY / "README.md").read_text()
    recipe = re.search(r"kubectl create secret generic canaryws-sink \\\n\s+--from-literal=url='([^']+)'", readme)
    assert recipe is not None, "deploy/README.md creates the canaryws-sink Secret"
    target = parse_sink(recipe.group(1), Path("/data"))
    assert target is not None and target.dialect == "postgresql"


def test_termination_grace_exceeds_prestop_plus_shutdown_bound() -> None:
    deployment = manifests()["deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = container_env(container)
    assert "CANARYWS_SHUTDOWN_TIMEOUT" in env, "set the shutdown bound explicitly"
    shutdown = float(env["CANARYWS_SHUTDOWN_TIMEOUT"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = float(command[1])
    assert pre_stop > 0
    margin = 2.0  # the watchdog kills at the bound; leave the kubelet a little more
    assert pre_stop + shutdown + margin < pod["terminationGracePeriodSeconds"]


def test_configmap_holds_the_bootstrap_flags_mounted_as_the_flags_file() -> None:
    m = manifests()
    configmap, deployment = m["configmap.yaml"], m["deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    flags_path = PurePosixPath(container_env(container)["CANARYWS_FLAGS"])
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    mount = next(vm for vm in container["volumeMounts"] if vm["name"] == volume["name"])
    assert PurePosixPath(mount["mountPath"]) == flags_path.parent
    text = configmap["data"][flags_path.name]
    # canaryws's own parser accepts it, and it is flags/features.json
    assert parse_flags_document(text) == parse_flags_document(FLAGS.read_bytes())
    assert json.loads(text) == json.loads(FLAGS.read_text())


# -- Prometheus ------------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    # /etc/prometheus/alerts.yml is where compose mounts deploy/prometheus/alerts.yml; promtool needs a
    # path that resolves here: the repo's file if it is there yet, else a stub in tmp_path.
    if ALERTS.is_file():
        rules = ALERTS
    else:
        rules = tmp_path / "alerts.yml"
        rules.write_text("groups: []\n")
    config["rule_files"] = [str(rules)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([promtool(), "check", "config", str(checked)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# -- OpenTelemetry Collector ---------------------------------------------------------------------------


def test_otel_collector_pipelines_use_defined_components() -> None:
    config = load_yaml(OTEL_CONFIG)
    pipelines = config["service"]["pipelines"]
    assert pipelines
    for name, pipeline in pipelines.items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in (config.get(section) or {}), f"{name}: {section} {component} is not defined"
        assert pipeline["receivers"] and pipeline["exporters"], name
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"], extension
    traces = [p for name, p in pipelines.items() if name.split("/")[0] == "traces"]
    assert traces
    for pipeline in traces:
        types = {e.split("/")[0] for e in pipeline["exporters"]}
        assert {"file", "otlp"} <= types
        assert "otlp" in pipeline["receivers"]
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert config["exporters"]["otlp"]["endpoint"] == "${env:OTLP_EXPORT_ENDPOINT}"
    env = env_of(compose()["services"]["otel-collector"])
    assert "OTLP_EXPORT_ENDPOINT" in env


# -- Grafana -------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def graph_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in doc["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_expressions(doc: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in graph_panels(doc) for t in p["targets"]]


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    datasources = load_yaml(DATASOURCES)
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = load_yaml(DASHBOARD_PROVIDERS)
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    grafana = compose()["services"]["grafana"]
    mounts = {v["source"]: v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    dashboard_target = PurePosixPath(mounts["./grafana/dashboards/canaryws.json"])
    assert dashboard_target.parent == PurePosixPath(provider["options"]["path"])
    provisioning = PurePosixPath("/etc/grafana/provisioning")
    for kind, name in (("datasources", "prometheus.yaml"), ("dashboards", "canaryws.yaml")):
        assert PurePosixPath(mounts[f"./grafana/provisioning/{kind}/{name}"]) == provisioning / kind / name
    assert ds["uid"] in json.dumps(dashboard())


def test_grafana_dashboard_structure() -> None:
    doc = dashboard()
    ds_uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", doc["uid"])
    assert doc["title"] and isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36
    panels = graph_panels(doc)
    ids = [p["id"] for p in doc["panels"]] + [p["id"] for row in doc["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert len(panels) >= 12
    for panel in panels:
        assert panel["title"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": ds_uid}, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == ds_uid
    for variable in doc["templating"]["list"]:
        assert variable["datasource"]["uid"] == ds_uid
    # what the dashboard is for: the two cohorts side by side, on the real metric names
    text = " ".join(dashboard_expressions(doc))
    for needle in ('strategy="strict"', 'strategy="lenient"', "canaryws_batches_total", "canaryws_records_total",
                   "histogram_quantile(0.5,", "histogram_quantile(0.99,", "canaryws_batch_duration_seconds_bucket",
                   "canaryws_connections_closed_total", "canaryws_connections_active", "canaryws_cohort_changes_total",
                   "canaryws_shadow_divergent_total", "canaryws_flags_age_seconds", "canaryws_flags_info"):
        assert needle in text, needle


def test_every_dashboard_expression_parses_as_promql(tmp_path: Path) -> None:
    exprs = dashboard_expressions(dashboard())
    rules = []
    for i, expr in enumerate(exprs):
        for var, value in GRAFANA_INTERVALS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr.replace("$instance", ""), expr  # only known variables
        rules.append({"record": f"canaryws:dashboard_expr_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
