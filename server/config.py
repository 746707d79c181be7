"""All configuration, read from the environment once into one frozen dataclass and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.limits import EVENT_BYTES
from server.quiet_hours import QuietHours


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


# Echoed values are cut to this many characters: an error message never carries unbounded input.
ECHO_MAX = 40


def _clip(raw: str) -> str:
    """`raw` for an error message: repr'd, and cut to ECHO_MAX characters."""
    return repr(raw if len(raw) <= ECHO_MAX else raw[:ECHO_MAX] + "...")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {_clip(raw)}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {_clip(raw)}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {_clip(raw)}")
    return raw


def _quiet_hours(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "").strip()
    if raw:
        try:
            QuietHours.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {_clip(raw)}")


def _delays(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated seconds, e.g. 2,4,8; got {_clip(raw)}") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"{name} must not hold negative delays")
    return values


def _countries(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """ISO 3166 region codes, comma-separated; "*" allows every country."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    codes = tuple(part.strip().upper() for part in raw.split(",") if part.strip())
    if codes != ("*",) and not all(len(c) == 2 and c.isalpha() for c in codes):
        raise ConfigError(f"{name} must be comma-separated two-letter country codes (e.g. US,CA) or *")
    return codes


WTIMEOUT_MAX_MS = 2**31 - 1


def _write_concern(env: Mapping[str, str], name: str) -> str | int | None:
    """MongoDB's `w`: "majority" or a number of members (at least 1); None: the URI's or the server's default.

    0 (unacknowledged) is refused: Send's idempotency and inbound dedupe rely on duplicate-key errors, which an
    unacknowledged write never reports.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw.lower() == "majority":
        return "majority"
    if not (raw.isascii() and raw.isdigit()):
        raise ConfigError(f"{name} must be majority or a number of members (at least 1), got {_clip(raw)}")
    if len(raw) > 3 or int(raw) < 1:
        raise ConfigError(
            f"{name} must be majority or a number of members from 1 to 999 (0, unacknowledged writes, would hide "
            "the duplicate-key errors idempotency relies on)"
        )
    return int(raw)


def _wtimeout(env: Mapping[str, str], name: str) -> int | None:
    """MongoDB's `wtimeoutMS` (0: wait as long as it takes); None: the URI's or none. MongoDB takes a 32-bit int."""
    if not env.get(name, "").strip():
        return None
    value = _int(env, name, 0)
    if value > WTIMEOUT_MAX_MS:
        raise ConfigError(f"{name} must be at most {WTIMEOUT_MAX_MS} (milliseconds)")
    return value


def _sentinels(env: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...]:
    """Redis Sentinel addresses: comma-separated host:port (IPv6 hosts bracketed)."""
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    out: list[tuple[str, int]] = []
    for part in raw.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 < int(port) < 65536:
            raise ConfigError(f"{name} must be comma-separated host:port addresses, got {_clip(part)}")
        out.append((host, int(port)))
    return tuple(out)


# REDIS_URL's schemes: plain, TLS, a Unix socket (not with Sentinel, which names hosts).
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(env: Mapping[str, str]) -> str | None:
    """REDIS_URL, its scheme checked; the URL itself is never echoed (it may carry a password)."""
    url = env.get("REDIS_URL") or None
    if url is not None and url.partition("://")[0].lower() not in REDIS_SCHEMES:
        raise ConfigError("REDIS_URL must start with redis://, rediss:// (TLS) or unix://")
    return url


def _check_redis_engines(env: Mapping[str, str], cfg: Config) -> None:
    """The Redis TLS and Sentinel settings against each other and REDIS_URL; ConfigError naming the setting."""
    scheme = (cfg.redis_url or "").partition("://")[0].lower()
    if cfg.redis_tls_ca_file:
        if scheme != "rediss":
            raise ConfigError("REDIS_TLS_CA_FILE is set but REDIS_URL is not a rediss:// (TLS) URL")
        if not Path(cfg.redis_tls_ca_file).is_file():
            raise ConfigError("REDIS_TLS_CA_FILE must name a readable file of CA certificates (PEM)")
    if env.get("REDIS_TLS_CHECK_HOSTNAME", "").strip() and scheme != "rediss":
        raise ConfigError("REDIS_TLS_CHECK_HOSTNAME is set but REDIS_URL is not a rediss:// (TLS) URL")
    if cfg.redis_sentinels:
        if not cfg.redis_sentinel_master:
            raise ConfigError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER, the name the sentinels monitor")
        if cfg.redis_url is None:
            # The URL still decides whether Redis is configured at all (else an embedded Valkey is started).
            raise ConfigError(
                "REDIS_SENTINELS needs REDIS_URL for the password, database and TLS (its host is not used), "
                "e.g. redis://:password@mymaster/0"
            )
        if scheme == "unix":
            raise ConfigError("REDIS_SENTINELS needs a redis:// or rediss:// REDIS_URL, not unix://")
    else:
        for other in ("REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"):
            if env.get(other, "").strip():
                raise ConfigError(f"{other} is set but REDIS_SENTINELS is not")


SETTING_PREFIXES = ("SMS_", "TWILIO_", "MONGODB_", "REDIS_")


def without_settings(env: Mapping[str, str]) -> dict[str, str]:
    """`env` less every variable Config reads, so a child process gets only the settings it is given."""
    return {k: v for k, v in env.items() if not k.startswith(SETTING_PREFIXES)}


def split_addr(addr: str, setting: str = "address") -> tuple[str, int]:
    """(host, port) of a "host:port" setting; IPv6 hosts may be bracketed. ConfigError names `setting`."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{setting} must be host:port, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class Config:
    """Every setting of every sms-gateway process; see the README's configuration table."""

    # Stores. None means: start the embedded server (SecantusDB / Valkey) under data_dir.
    # May carry a password: never logged.
    mongodb_uri: str | None = field(default=None, repr=False)
    mongodb_db: str = "sms_gateway"
    # MongoDB's write concern for every write (`w`, and `wtimeoutMS` with it); None: the URI's or the server's.
    mongodb_write_concern: str | int | None = None
    mongodb_write_concern_timeout_ms: int | None = None
    # May carry a password: never logged.
    redis_url: str | None = field(default=None, repr=False)
    # rediss://: the CA bundle that verifies the server (empty: the system's) and whether its name is checked.
    redis_tls_ca_file: str = ""
    redis_tls_check_hostname: bool = True
    # Redis Sentinel: the sentinels' addresses and the master's name; REDIS_URL then gives password, db and TLS.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = ""
    redis_sentinel_password: str = field(default="", repr=False)
    data_dir: Path = Path(".data")

    # gRPC server.
    grpc_addr: str = "127.0.0.1:50051"
    jwt_secret: str = field(default="", repr=False)
    # Signs the webhook bridge's `ingest` tokens only: a bridge holding it cannot mint user or admin tokens.
    ingest_secret: str = field(default="", repr=False)
    jwt_max_ttl_seconds: int = 30 * 24 * 3600
    default_region: str = "US"
    drain_seconds: float = 10.0

    # Events (Subscribe).
    event_stream: str = "sms:events"
    event_retention: int = 100_000
    heartbeat_seconds: float = 15.0
    subscriber_queue_size: int = 1_000
    subscriber_queue_bytes: int = 8 * 1024 * 1024

    # Limits per user and the toll-fraud guard.
    max_streams_per_user: int = 20
    # Agents see (and may claim) conversations nobody is assigned to; off: only admins see them.
    unassigned_visible_to_agents: bool = True
    send_rate_per_user: float = 20.0
    send_burst_per_user: int = 100
    allowed_countries: tuple[str, ...] = ("US", "CA")
    allow_premium_numbers: bool = False

    # Sending rules: how far ahead a send may be scheduled; quiet hours in the contact's local time ("21:00-08:00",
    # empty: off); each sender's pace in segments per second across all workers (0: unpaced).
    schedule_max_days: int = 35
    quiet_hours: str = ""
    sender_mps: float = 0.0

    # Operability: where this process serves Prometheus metrics ("host:port"; empty: not served), whether the
    # metrics are recorded at all (off only to measure their cost), and the log format ("text" or "json").
    metrics_addr: str = ""
    metrics_enabled: bool = True
    log_format: str = "text"

    # Queue and worker.
    arq_queue: str = "arq:queue"
    send_concurrency: int = 20
    twilio_max_concurrency: int = 10
    twilio_timeout_seconds: float = 10.0
    retry_delays: tuple[float, ...] = (2.0, 4.0, 8.0)
    send_max_tries: int = 3
    job_timeout_seconds: int = 30
    reconcile_age_seconds: float = 60.0
    reconcile_interval_seconds: float = 15.0
    # The safety net for webhooks that never arrived (inbound Twilio gave up on, callbacks lost).
    sync_interval_seconds: float = 300.0
    # Each sync run (periodic or SyncFromTwilio) stops after this many list pages or seconds and says so.
    sync_max_pages: int = 50
    sync_deadline_seconds: float = 60.0
    health_check_interval_seconds: int = 5

    # Twilio.
    twilio_account_sid: str = ""
    twilio_auth_token: str = field(default="", repr=False)
    twilio_from_number: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_api_base_url: str | None = None
    # Required by the worker (StatusCallback) and the bridge (signatures); no default could be right.
    public_base_url: str = ""

    # Webhook bridge.
    bridge_addr: str = "127.0.0.1:8088"
    grpc_target: str = "127.0.0.1:50051"
    webhook_verify: bool = True
    bridge_deadline_seconds: float = 5.0
    # Slow clients: a post must arrive whole within this time; at most this many connections at once.
    bridge_read_timeout_seconds: float = 10.0
    bridge_max_connections: int = 1_000

    # Twilio simulator (dev and test tool).
    simulator_addr: str = "127.0.0.1:8089"
    simulator_rules: str = ""
    # Where injected inbound messages are posted; default SMS_PUBLIC_BASE_URL + /twilio/inbound.
    simulator_inbound_url: str = ""

    # Local stack: Envoy, the single web entry point (UI + grpc-web), and the built web UI it serves
    # (default: the checkout's build, clients/web/dist under the working directory, when there is one).
    web_addr: str = "127.0.0.1:8080"
    web_dist: Path = Path("clients/web/dist")
    # Origins allowed to call the API from a browser (CORS); empty: only the web address itself.
    web_origins: tuple[str, ...] = ()

    @property
    def our_number(self) -> str:
        """The sender identity that, with a contact number, names a conversation."""
        return self.twilio_from_number or self.twilio_messaging_service_sid or "default"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Reads every setting from `env` (default: os.environ)."""
        e = os.environ if env is None else env
        grpc_addr = e.get("SMS_GRPC_ADDR", "").strip() or cls.grpc_addr
        cfg = cls(
            mongodb_uri=e.get("MONGODB_URI") or None,
            mongodb_db=e.get("MONGODB_DB") or cls.mongodb_db,
            mongodb_write_concern=_write_concern(e, "MONGODB_WRITE_CONCERN"),
            mongodb_write_concern_timeout_ms=_wtimeout(e, "MONGODB_WRITE_CONCERN_TIMEOUT_MS"),
            redis_url=_redis_url(e),
            redis_tls_ca_file=e.get("REDIS_TLS_CA_FILE", "").strip(),
            redis_tls_check_hostname=_bool(e, "REDIS_TLS_CHECK_HOSTNAME", cls.redis_tls_check_hostname),
            redis_sentinels=_sentinels(e, "REDIS_SENTINELS"),
            redis_sentinel_master=e.get("REDIS_SENTINEL_MASTER", "").strip(),
            redis_sentinel_password=e.get("REDIS_SENTINEL_PASSWORD", ""),
            data_dir=Path(e.get("SMS_DATA_DIR") or ".data"),
            grpc_addr=grpc_addr,
            jwt_secret=e.get("SMS_JWT_SECRET", ""),
            ingest_secret=e.get("SMS_INGEST_SECRET", ""),
            jwt_max_ttl_seconds=_int(e, "SMS_JWT_MAX_TTL_SECONDS", cls.jwt_max_ttl_seconds, minimum=60),
            default_region=(e.get("SMS_DEFAULT_REGION") or cls.default_region).upper(),
            drain_seconds=_float(e, "SMS_DRAIN_SECONDS", cls.drain_seconds),
            event_stream=e.get("SMS_EVENT_STREAM") or cls.event_stream,
            event_retention=_int(e, "SMS_EVENT_RETENTION", cls.event_retention, minimum=1),
            heartbeat_seconds=_float(e, "SMS_HEARTBEAT_SECONDS", cls.heartbeat_seconds),
            subscriber_queue_size=_int(e, "SMS_SUBSCRIBER_QUEUE_SIZE", cls.subscriber_queue_size, minimum=1),
            subscriber_queue_bytes=_int(
                e, "SMS_SUBSCRIBER_QUEUE_BYTES", cls.subscriber_queue_bytes, minimum=EVENT_BYTES
            ),
            unassigned_visible_to_agents=_bool(e, "SMS_UNASSIGNED_VISIBLE_TO_AGENTS", cls.unassigned_visible_to_agents),
            max_streams_per_user=_int(e, "SMS_MAX_STREAMS_PER_USER", cls.max_streams_per_user, minimum=1),
            send_rate_per_user=_float(e, "SMS_SEND_RATE_PER_USER", cls.send_rate_per_user),
            send_burst_per_user=_int(e, "SMS_SEND_BURST_PER_USER", cls.send_burst_per_user, minimum=1),
            allowed_countries=_countries(e, "SMS_ALLOWED_COUNTRIES", cls.allowed_countries),
            allow_premium_numbers=_bool(e, "SMS_ALLOW_PREMIUM_NUMBERS", cls.allow_premium_numbers),
            metrics_addr=e.get("SMS_METRICS_ADDR", "").strip(),
            metrics_enabled=_bool(e, "SMS_METRICS_ENABLED", cls.metrics_enabled),
            log_format=_choice(e, "SMS_LOG_FORMAT", ("text", "json"), cls.log_format),
            schedule_max_days=_int(e, "SMS_SCHEDULE_MAX_DAYS", cls.schedule_max_days, minimum=1),
            quiet_hours=_quiet_hours(e, "SMS_QUIET_HOURS"),
            sender_mps=_float(e, "SMS_SENDER_MPS", cls.sender_mps),
            arq_queue=e.get("SMS_ARQ_QUEUE") or cls.arq_queue,
            send_concurrency=_int(e, "SMS_SEND_CONCURRENCY", cls.send_concurrency, minimum=1),
            twilio_max_concurrency=_int(e, "TWILIO_MAX_CONCURRENCY", cls.twilio_max_concurrency, minimum=1),
            twilio_timeout_seconds=_float(e, "TWILIO_TIMEOUT_SECONDS", cls.twilio_timeout_seconds),
            retry_delays=_delays(e, "SMS_RETRY_DELAYS", cls.retry_delays),
            send_max_tries=_int(e, "SMS_SEND_MAX_TRIES", cls.send_max_tries, minimum=1),
            job_timeout_seconds=_int(e, "SMS_JOB_TIMEOUT_SECONDS", cls.job_timeout_seconds, minimum=1),
            reconcile_age_seconds=_float(e, "SMS_RECONCILE_AGE_SECONDS", cls.reconcile_age_seconds),
            reconcile_interval_seconds=_float(e, "SMS_RECONCILE_INTERVAL_SECONDS", cls.reconcile_interval_seconds),
            sync_interval_seconds=_float(e, "SMS_SYNC_INTERVAL_SECONDS", cls.sync_interval_seconds),
            sync_max_pages=_int(e, "SMS_SYNC_MAX_PAGES", cls.sync_max_pages, minimum=1),
            sync_deadline_seconds=_float(e, "SMS_SYNC_DEADLINE_SECONDS", cls.sync_deadline_seconds),
            health_check_interval_seconds=_int(
                e, "SMS_HEALTH_CHECK_INTERVAL_SECONDS", cls.health_check_interval_seconds, minimum=1
            ),
            twilio_account_sid=e.get("TWILIO_ACCOUNT_SID", ""),
            twilio_auth_token=e.get("TWILIO_AUTH_TOKEN", ""),
            twilio_from_number=e.get("TWILIO_FROM_NUMBER", ""),
            twilio_messaging_service_sid=e.get("TWILIO_MESSAGING_SERVICE_SID", ""),
            twilio_api_base_url=e.get("TWILIO_API_BASE_URL") or None,
            public_base_url=e.get("SMS_PUBLIC_BASE_URL", "").strip().rstrip("/"),
            bridge_addr=e.get("SMS_BRIDGE_ADDR") or cls.bridge_addr,
            grpc_target=e.get("SMS_GRPC_TARGET") or grpc_addr,
            webhook_verify=_bool(e, "SMS_WEBHOOK_VERIFY", cls.webhook_verify),
            bridge_deadline_seconds=_float(e, "SMS_BRIDGE_DEADLINE_SECONDS", cls.bridge_deadline_seconds),
            bridge_read_timeout_seconds=_float(e, "SMS_BRIDGE_READ_TIMEOUT_SECONDS", cls.bridge_read_timeout_seconds),
            bridge_max_connections=_int(e, "SMS_BRIDGE_MAX_CONNECTIONS", cls.bridge_max_connections, minimum=1),
            simulator_addr=e.get("SMS_SIMULATOR_ADDR") or cls.simulator_addr,
            simulator_rules=e.get("SMS_SIMULATOR_RULES", ""),
            simulator_inbound_url=e.get("SMS_SIMULATOR_INBOUND_URL", ""),
            web_addr=e.get("SMS_WEB_ADDR") or cls.web_addr,
            web_dist=Path(e.get("SMS_WEB_DIST") or cls.web_dist),
            web_origins=tuple(o.strip().rstrip("/") for o in e.get("SMS_WEB_ORIGINS", "").split(",") if o.strip()),
        )
        _check_redis_engines(e, cfg)
        return cfg

    def missing(self, *names: str) -> list[str]:
        """The listed settings (environment names; "A|B": either will do) that are empty, as "A or B"."""
        absent = []
        for name in names:
            alternatives = name.split("|")
            if not any(getattr(self, _ENV_TO_FIELD[alt]) for alt in alternatives):
                absent.append(" or ".join(alternatives))
        return absent

    def require(self, *names: str) -> None:
        """The one check of required settings: ConfigError naming every listed setting that is empty."""
        absent = self.missing(*names)
        if absent:
            raise ConfigError("missing required settings: " + ", ".join(absent))


# What any process that talks to Twilio needs (the worker, and the server for SyncFromTwilio).
TWILIO_SETTINGS = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER|TWILIO_MESSAGING_SERVICE_SID")

_ENV_TO_FIELD = {
    "SMS_JWT_SECRET": "jwt_secret",
    "SMS_INGEST_SECRET": "ingest_secret",
    "MONGODB_URI": "mongodb_uri",
    "REDIS_URL": "redis_url",
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_FROM_NUMBER": "twilio_from_number",
    "TWILIO_MESSAGING_SERVICE_SID": "twilio_messaging_service_sid",
    "SMS_PUBLIC_BASE_URL": "public_base_url",
}
