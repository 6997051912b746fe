"""Service configuration: one immutable object built by the CLI (or the environment)
and handed to the app factory."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from canaryws.core.cohorts import DEFAULT_STRATEGIES, DEFAULT_STRATEGY
from canaryws.core.contract import DEFAULT_MAX_RECORDS
from canaryws.core.strategies.strict import DEFAULT_MAX_LENGTH

DEFAULT_TTL_SECONDS = 30 * 24 * 3600  # CANARYWS_TOKEN_TTL: a token's lifetime unless issued with another
DEFAULT_FLAGS = Path("flags/features.json")
FLAGS_ENVVAR = "CANARYWS_FLAGS"  # the flags file: the service's (bootstrap with Unleash) and the CLI's
DEFAULT_DATA_DIR = Path("data")

UNLEASH_URL = "UNLEASH_URL"  # the API root, e.g. http://127.0.0.1:4242/api
UNLEASH_API_TOKEN = "UNLEASH_API_TOKEN"  # a client (backend) token: the service's SDK, `flags export`
UNLEASH_ADMIN_TOKEN = "UNLEASH_ADMIN_TOKEN"  # an admin token: `flags` and `guard` change the flags with it
UNLEASH_ENVIRONMENT = "UNLEASH_ENVIRONMENT"
UNLEASH_PROJECT = "UNLEASH_PROJECT"
DEFAULT_UNLEASH_ENVIRONMENT = "development"
DEFAULT_UNLEASH_PROJECT = "default"


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r} (use true or false)")


def _at_least_one(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0:  # NaN too
        raise ValueError("must be 0 (off) or more")
    return value


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be more than 0")
    return value


def _strategy(raw: str) -> str:
    """``CANARYWS_DEFAULT_STRATEGY``: ``lenient`` or ``strict`` (any case)."""
    value = raw.strip().lower()
    if value not in DEFAULT_STRATEGIES:
        raise ValueError(f"not a strategy: {raw!r} (use {' or '.join(DEFAULT_STRATEGIES)})")
    return value


def _origins(raw: str) -> frozenset[str] | None:
    """``CANARYWS_ALLOWED_ORIGINS``: comma-separated origins (``https://app.example``); ``*`` means any."""
    origins = frozenset(part.strip() for part in raw.split(",") if part.strip())
    return None if "*" in origins else origins


@dataclass(frozen=True, slots=True)
class UnleashSettings:
    """Which Unleash server, project and environment: the ``UNLEASH_*`` variables, read here
    only (:meth:`from_env`; surrounding blanks are dropped, a blank value counts as unset).

    The service takes its flags from the server with ``url`` and ``api_token`` (a client
    token; :class:`Settings` carries them); ``canaryws flags`` and ``canaryws guard`` change
    them through the Admin API with ``url`` and ``admin_token``; ``flags export`` fetches
    them with ``url`` and ``api_token``.
    """

    url: str | None = None
    api_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    environment: str = DEFAULT_UNLEASH_ENVIRONMENT
    project: str = DEFAULT_UNLEASH_PROJECT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UnleashSettings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        return cls(
            url=get(UNLEASH_URL),
            api_token=get(UNLEASH_API_TOKEN),
            admin_token=get(UNLEASH_ADMIN_TOKEN),
            environment=get(UNLEASH_ENVIRONMENT) or DEFAULT_UNLEASH_ENVIRONMENT,
            project=get(UNLEASH_PROJECT) or DEFAULT_UNLEASH_PROJECT,
        )


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    flags_path: Path = DEFAULT_FLAGS
    data_dir: Path = DEFAULT_DATA_DIR
    max_records: int = DEFAULT_MAX_RECORDS
    max_record_length: int = DEFAULT_MAX_LENGTH
    max_frame_bytes: int = 1024 * 1024
    token_ttl_seconds: int = DEFAULT_TTL_SECONDS
    log_level: str = "INFO"
    summary_interval: float = 60.0
    shadow_sample_rate: float = 1.0
    # per-connection limits and fairness (see docs/contract.md, "Limits")
    max_messages_per_second: float = 500.0
    message_burst: int = 1000
    max_connections_per_client: int = 16
    max_bytes_per_second: float = 1024 * 1024  # per connection; the work budget in frame characters
    bytes_burst: int = 2 * 1024 * 1024
    max_client_bytes_per_second: float = 4 * 1024 * 1024  # per client id (all its connections, per process)
    client_bytes_burst: int = 4 * 1024 * 1024
    # the door: incomplete requests, connections, new handshakes (see docs/contract.md, "Limits")
    header_timeout: float = 10.0
    max_connections: int = 4096  # per process, HTTP and WebSocket
    max_handshakes_per_second: float = 200.0  # per process
    handshake_burst: int = 400
    max_source_handshakes_per_second: float = 20.0  # per source address, per process
    source_handshake_burst: int = 40
    send_timeout: float = 10.0
    duplicate_id_window: int = 1024
    per_message_deflate: bool = False
    allowed_origins: frozenset[str] | None = None  # None: any Origin
    admin_token_file: Path | None = None  # None: <data-dir>/admin.key, created on first start
    shutdown_timeout: float = 10.0  # seconds from SIGTERM/SIGINT to process exit (see adapters.server.graceful)
    workers: int = 1  # serving processes; above 1, adapters.server.supervisor accepts and hands each connection on
    service_name: str = "canaryws"
    # the strategy of every client while records.strict is absent from the flags document
    default_strategy: str = DEFAULT_STRATEGY
    # Unleash server backend (used when url and api token are both set; from_env takes them from UnleashSettings)
    # the persist step (docs/sink.md): "sqlite" (<data-dir>/sink.sqlite3), sqlite:///PATH, postgresql://..., none
    sink: str = field(default="sqlite", repr=False)  # a URL may hold a password
    sink_timeout: float = 5.0  # a commit not done by then answers its batches `unavailable`
    sink_retention: float = 24 * 3600.0  # seconds an idempotency key (client id, batch id) is kept
    unleash_url: str | None = None
    unleash_api_token: str | None = field(default=None, repr=False)
    unleash_environment: str = DEFAULT_UNLEASH_ENVIRONMENT
    unleash_project: str = DEFAULT_UNLEASH_PROJECT
    unleash_refresh_interval: float = 15.0
    unleash_request_timeout: float = 5.0
    unleash_startup_wait: float = 3.0
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if self.default_strategy not in DEFAULT_STRATEGIES:
            raise ValueError(
                f"default_strategy must be {' or '.join(DEFAULT_STRATEGIES)}, not {self.default_strategy!r}"
            )

    @property
    def flags_backend(self) -> str:
        return "unleash" if self.unleash_url and self.unleash_api_token else "file"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """``CANARYWS_*`` variables, then explicit overrides (CLI options) on top."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {"environ": env}
        conv: dict[str, tuple[str, Callable[[str], object]]] = {
            "host": ("CANARYWS_HOST", str),
            "port": ("CANARYWS_PORT", int),
            "flags_path": (FLAGS_ENVVAR, Path),
            "data_dir": ("CANARYWS_DATA_DIR", Path),
            "max_records": ("CANARYWS_MAX_RECORDS", int),
            "max_record_length": ("CANARYWS_MAX_RECORD_LENGTH", int),
            "max_frame_bytes": ("CANARYWS_MAX_FRAME_BYTES", int),
            "token_ttl_seconds": ("CANARYWS_TOKEN_TTL", int),
            "log_level": ("CANARYWS_LOG_LEVEL", str),
            "summary_interval": ("CANARYWS_SUMMARY_INTERVAL", float),
            "shadow_sample_rate": ("CANARYWS_SHADOW_SAMPLE_RATE", float),
            "max_messages_per_second": ("CANARYWS_MAX_MESSAGES_PER_SECOND", float),
            "message_burst": ("CANARYWS_MESSAGE_BURST", int),
            "max_connections_per_client": ("CANARYWS_MAX_CONNECTIONS_PER_CLIENT", int),
            "max_bytes_per_second": ("CANARYWS_MAX_BYTES_PER_SECOND", _non_negative),
            "bytes_burst": ("CANARYWS_BYTES_BURST", _at_least_one),
            "max_client_bytes_per_second": ("CANARYWS_MAX_CLIENT_BYTES_PER_SECOND", _non_negative),
            "client_bytes_burst": ("CANARYWS_CLIENT_BYTES_BURST", _at_least_one),
            "header_timeout": ("CANARYWS_HEADER_TIMEOUT", _positive),
            "max_connections": ("CANARYWS_MAX_CONNECTIONS", _at_least_one),
            "max_handshakes_per_second": ("CANARYWS_MAX_HANDSHAKES_PER_SECOND", _non_negative),
            "handshake_burst": ("CANARYWS_HANDSHAKE_BURST", _at_least_one),
            "max_source_handshakes_per_second": ("CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND", _non_negative),
            "source_handshake_burst": ("CANARYWS_SOURCE_HANDSHAKE_BURST", _at_least_one),
            "send_timeout": ("CANARYWS_SEND_TIMEOUT", float),
            "duplicate_id_window": ("CANARYWS_DUPLICATE_ID_WINDOW", int),
            "per_message_deflate": ("CANARYWS_PER_MESSAGE_DEFLATE", _boolean),
            "allowed_origins": ("CANARYWS_ALLOWED_ORIGINS", _origins),
            "admin_token_file": ("CANARYWS_ADMIN_TOKEN_FILE", Path),
            "shutdown_timeout": ("CANARYWS_SHUTDOWN_TIMEOUT", float),
            "workers": ("CANARYWS_WORKERS", _at_least_one),
            "default_strategy": ("CANARYWS_DEFAULT_STRATEGY", _strategy),
            "sink": ("CANARYWS_SINK", str.strip),
            "sink_timeout": ("CANARYWS_SINK_TIMEOUT", _positive),
            "sink_retention": ("CANARYWS_SINK_RETENTION", _positive),
            "unleash_refresh_interval": ("UNLEASH_REFRESH_INTERVAL", float),
            "unleash_request_timeout": ("UNLEASH_REQUEST_TIMEOUT", float),
            "unleash_startup_wait": ("CANARYWS_UNLEASH_STARTUP_WAIT", float),
        }
        for attr, (var, typ) in conv.items():
            if var in env and env[var] != "":
                try:
                    values[attr] = typ(env[var])
                except ValueError as exc:
                    raise ValueError(f"{var}={env[var]!r}: {exc}") from None
        unleash = UnleashSettings.from_env(env)
        values.update(
            unleash_url=unleash.url,
            unleash_api_token=unleash.api_token,
            unleash_environment=unleash.environment,
            unleash_project=unleash.project,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
