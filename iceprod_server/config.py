"""The server's configuration: one frozen, typed dataclass.

Values come from the defaults below, then ``<data-dir>/iceprod.toml``, then ``ICEPROD_*``
environment variables, then command-line flags; each source overrides the ones before it.
Every option is documented in ``conf/iceprod.example.toml``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin, get_type_hints

CONFIG_FILE = "iceprod.toml"
# the smallest push a client site makes (bytes): a master refusing even this is misconfigured
MIN_PUSH_BYTES = 64 * 1024


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Config:
    data_dir: str = "./var"
    # SQLAlchemy URL; empty means SQLite at <data_dir>/iceprod.db
    db_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    # thread pools for blocking work
    db_threads: int = 8
    fs_threads: int = 4
    # database connection pool (MariaDB/MySQL)
    db_pool_size: int = 10
    db_pool_recycle: int = 3600
    # seconds a unit of database work may take (locks, a pooled connection, a database that
    # does not answer) before the caller gets -32005 (or -32006 if it was committing)
    db_timeout: float = 30.0
    # seconds a call's request_key is remembered: a repeat within this time answers the
    # first result instead of running again
    request_key_seconds: float = 3600.0
    # seconds without a call about a processing task after which it is reset as "lost
    # contact" (a passkey may carry its own); IceProd 2 pilots call only while a module
    # runs, and their own server waited two hours
    lease_seconds: float = 7200.0
    # seconds a claim by a pilot that sends X-IceProd-Pilot lives until its first call
    # about the task (stillrunning or set_processing), which extends it to its lease
    first_contact_seconds: float = 120.0
    # seconds a task may stay waiting or queued before it is put back to idle
    queue_timeout: float = 86400.0
    scheduler_interval: float = 5.0
    # seconds between the points public_get_graphs answers (IceProd 2.3.2's charts: tasks
    # active, tasks completed); the scheduler records them; 0 records none
    graph_interval: int = 60
    # seconds without a scheduler pass that ended well after which /healthz answers 503
    # "scheduler": "stalled"; 0 means ten scheduler intervals, at least a minute
    scheduler_stall_seconds: float = 0.0
    # how many tasks the scheduler keeps queued for pilots
    queue_depth: int = 10000
    # how many jobs are materialised per dataset per scheduler pass
    materialize_batch: int = 1000
    max_resets: int = 10
    # a failed task waits this long before it is queued again, doubled with each further
    # failure up to retry_max_delay_seconds
    retry_delay_seconds: float = 10.0
    retry_max_delay_seconds: float = 3600.0
    public_read: bool = True
    max_body_bytes: int = 64 * 1024 * 1024
    # most calls in one JSON-RPC batch; a longer batch is answered with one -32600 error
    max_batch_length: int = 1000
    # most rows a read without pages answers (IceProd 2.3.2's public_get_task_ids,
    # public_get_all_config, ...); a larger answer is refused with -32602 naming this option
    unpaged_max_rows: int = 100_000
    # seconds an HTTP connection may sit idle (or take to send its headers) before it is
    # closed, and seconds a request body may take to arrive
    idle_connection_timeout: float = 60.0
    body_timeout: float = 3600.0
    # logs larger than this go to files under <data_dir>/logs instead of database rows
    log_inline_max: int = 256 * 1024
    # largest task log in bytes, once unpacked (IceProd 2 pilots send logs zlib-compressed,
    # which says nothing about their size); larger uploads are refused with -32602
    log_max_bytes: int = 256 * 1024 * 1024
    # seconds an authenticated passkey stays cached in a server process
    auth_cache_seconds: float = 0.5
    # hours a login lasts
    session_hours: float = 24.0
    # failed logins allowed per user name and address per minute; more get 429
    login_attempts_per_minute: int = 5
    # Secure flag on the login cookie: "auto" (when the request came over HTTPS, directly
    # or through the trusted proxy), "always" or "never"
    cookie_secure: str = "auto"
    # address of the reverse proxy whose X-Real-IP / client-certificate headers are trusted
    trusted_proxy: str = ""
    log_level: str = "INFO"
    # "text", or "json": one JSON object per line
    log_format: str = "text"
    # seconds a stopping server lets requests in flight finish before it closes them
    shutdown_grace: float = 30.0
    # worker processes of `serve` sharing the listening socket
    processes: int = 1
    # addresses or networks that may read /metrics without logging in (admins always may)
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    # identifies this server among peer sites; at a client site, the id the master gave
    # it ([site] id, written by ``iceprod-server join``)
    site_id: str = ""
    # -- federation ([site] table; docs/federation.md) ----------------------------------
    # at a client site: the master's URL and this site's key there (written by join);
    # empty: this server is a master, or stands alone
    site_master: str = ""
    site_key: str = ""
    # ask the master for work when fewer than this many pulled tasks are queued here
    site_threshold: int = 20
    # how many tasks to ask for at a time
    site_pull: int = 50
    # seconds between rounds of the link (pull, push, and changes from the master)
    site_interval: float = 1.0
    # changes per master_update call
    site_push_batch: int = 500
    # bytes of changes per master_update call (its JSON body, about); a log larger than
    # this goes in pieces. Halved for the life of the process when the master answers 413.
    site_push_bytes: int = 4 * 1024 * 1024
    # at the master: seconds a site's version may be ahead of the master's own clock; a
    # change stamped further ahead is refused (the site keeps it, and stamps it again)
    site_max_ahead: float = 300.0
    # at the master: seconds a site may stay silent before the tasks it holds are
    # reclaimed and handed to others
    site_lease_seconds: float = 600.0
    # for tests and diagnosis only: seconds added to this server's wall clock where it
    # makes and judges federation versions (negative: behind), to see what a site whose
    # clock is wrong does. Never set in production.
    debug_clock_offset: float = 0.0
    # cookie secret; empty means read <data_dir>/cookie_secret (written by init)
    cookie_secret: str = ""
    # -- files: downloads and uploads under <data_dir>/files ([files] table) ------------
    # who may download and upload, by directory (longest match wins; "" is the default):
    # comma-separated roles out of any, anonymous, pilot, user, admin, site
    files_access: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"": "any"})
    # largest upload in bytes
    files_max_upload_bytes: int = 64 * 1024**3
    # directory where nginx buffers request bodies (client_body_temp_path); uploads that
    # nginx buffered there arrive as a path in X-Upload-File and are moved, not copied.
    # Empty: only bodies streamed to the server itself are accepted.
    files_nginx_upload_dir: str = ""
    # -- the file proxy ([proxy] table) -------------------------------------------------
    # URL prefixes the proxy may fetch; anything else gets 403
    proxy_allow: tuple[str, ...] = ()
    # who may use the proxy (roles as for files_access)
    proxy_access: str = "any"
    # cache directory; empty means <data_dir>/cache
    proxy_cache_dir: str = ""
    # the cache's size limit, and the free space it always leaves on its filesystem
    proxy_cache_max_bytes: int = 50 * 1024**3
    proxy_cache_reserve_bytes: int = 5 * 1024**3
    # seconds to connect to a source, and seconds a whole fetch may take
    proxy_connect_timeout: float = 30.0
    proxy_timeout: float = 3600.0
    # -- GridFTP ([gsiftp] table) -------------------------------------------------------
    # "library": the Globus C client library through ctypes; "url-copy": globus-url-copy
    # subprocesses
    gsiftp_backend: str = "library"
    # default seconds an operation may take before it is aborted
    gsiftp_timeout: float = 600.0
    # threads for blocking calls into the Globus library (handle set-up and tear-down)
    gsiftp_threads: int = 4

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return "sqlite:///" + str(Path(self.data_dir).resolve() / "iceprod.db")

    def path(self, *parts: str) -> Path:
        return Path(self.data_dir).resolve().joinpath(*parts)

    @property
    def files_dir(self) -> Path:
        """Where ``/download`` and ``/upload`` paths point."""
        return self.path("files")

    @property
    def cache_dir(self) -> Path:
        return Path(self.proxy_cache_dir).resolve() if self.proxy_cache_dir else self.path(
            "cache")


def safe_db_url(url: str) -> str:
    """A database URL fit to print or log: its password shown as ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: hide all credentials
        return re.sub(r"^([\w+.-]*://)?.*@", lambda m: (m.group(1) or "") + "***@", url)


def _fields() -> dict[str, Any]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any, kind: Any, source: str) -> Any:
    """Convert ``value`` to ``kind``, accepting strings from the environment."""
    origin = get_origin(kind)
    if origin is tuple:
        # a list in the file, or comma-separated in the environment and on flags
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(i, str) for i in items):
            return tuple(i.strip() for i in items if i.strip())
        raise ConfigError(f"{source}: option {name!r} must be a list of strings, "
                          f"got {value!r}")
    if origin is Mapping:
        # a table in the file, or "dir=roles;dir=roles" in the environment and on flags
        if isinstance(value, str):
            pairs = [part.split("=", 1) for part in value.split(";") if part.strip()]
            if all(len(pair) == 2 for pair in pairs):
                return {k.strip().strip("/"): v.strip() for k, v in pairs}
        elif isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
            return {str(k).strip("/"): v for k, v in value.items()}
        raise ConfigError(f"{source}: option {name!r} must be a table of strings "
                          f"(or DIR=ROLES;DIR=ROLES), got {value!r}")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{source}: option {name!r} must be {kind.__name__}, got {value!r}")


# tables whose keys are named after them: [proxy] allow is option proxy_allow, [site] id
# is option site_id
PREFIXED_TABLES = ("files", "proxy", "gsiftp", "site")


def flatten(table: Mapping[str, Any]) -> dict[str, Any]:
    """Option names from a parsed file: ``[server] port = 1`` and ``port = 1`` both mean
    option ``port``; ``[proxy] allow = [...]`` means option ``proxy_allow``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and key in PREFIXED_TABLES:
            out.update({f"{key}_{inner}": v for inner, v in value.items()})
        elif isinstance(value, Mapping):
            out.update(flatten(value))
        else:
            out[key] = value
    return out


def load(
    data_dir: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration: defaults, file, environment, then ``overrides`` (flags).

    ``None`` values in ``overrides`` mean "flag not given" and are ignored.
    """
    environ = os.environ if environ is None else environ
    fields = _fields()
    values: dict[str, Any] = {}

    env_dir = environ.get("ICEPROD_DATA_DIR")
    chosen_dir = str(data_dir) if data_dir is not None else (env_dir or Config.data_dir)
    values["data_dir"] = chosen_dir

    config_path = Path(chosen_dir) / CONFIG_FILE
    if config_path.exists():
        try:
            with config_path.open("rb") as f:
                table = flatten(tomllib.load(f))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{config_path}: {e}") from e
        for key, value in table.items():
            if key not in fields:
                raise ConfigError(f"{config_path}: unknown option {key!r}")
            if key == "data_dir":
                continue
            values[key] = _coerce(key, value, fields[key], str(config_path))

    for key, kind in fields.items():
        env_key = "ICEPROD_" + key.upper()
        if key != "data_dir" and env_key in environ:
            values[key] = _coerce(key, environ[env_key], kind, env_key)

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(f"unknown option {key!r}")
        values[key] = _coerce(key, value, fields[key], "--" + key.replace("_", "-"))

    config = Config(**values)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    if not 0 < config.port < 65536 and config.port != 0:
        raise ConfigError(f"port must be between 1 and 65535, got {config.port}")
    for name in ("db_threads", "fs_threads", "queue_depth", "materialize_batch", "max_resets",
                 "processes", "max_batch_length", "log_max_bytes", "unpaged_max_rows"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    for network in config.metrics_allow:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            raise ConfigError(f"metrics_allow: {e}") from None
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, got {config.log_format!r}")
    if config.scheduler_stall_seconds < 0:
        raise ConfigError("scheduler_stall_seconds must not be negative, got "
                          f"{config.scheduler_stall_seconds}")
    if config.graph_interval < 0:
        raise ConfigError(f"graph_interval must not be negative, got {config.graph_interval}")
    if config.shutdown_grace < 0:
        raise ConfigError(f"shutdown_grace must not be negative, got {config.shutdown_grace}")
    for name in ("lease_seconds", "first_contact_seconds", "queue_timeout",
                 "scheduler_interval", "db_timeout", "request_key_seconds",
                 "idle_connection_timeout", "body_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    for name in ("retry_delay_seconds", "retry_max_delay_seconds"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(config, name)}")
    if config.cookie_secure not in ("auto", "always", "never"):
        raise ConfigError(f"cookie_secure must be auto, always or never, "
                          f"got {config.cookie_secure!r}")
    roles = {"any", "anonymous", "pilot", "user", "admin", "site"}
    for where, value in [*((f"files_access[{d!r}]", v) for d, v in
                           config.files_access.items()), ("proxy_access", config.proxy_access)]:
        unknown = {r.strip() for r in value.split(",")} - roles
        if unknown:
            raise ConfigError(f"{where}: unknown roles {sorted(unknown)}; "
                              f"choose from {sorted(roles)}")
    for prefix in config.proxy_allow:
        scheme, sep, rest = prefix.partition("://")
        if not sep or scheme not in ("http", "https", "ftp", "gsiftp") or not rest.strip("/"):
            raise ConfigError(f"proxy_allow: {prefix!r} is not an http, https, ftp or "
                              "gsiftp URL prefix with a host")
    if config.gsiftp_backend not in ("library", "url-copy"):
        raise ConfigError(f"gsiftp_backend must be library or url-copy, "
                          f"got {config.gsiftp_backend!r}")
    for name in ("proxy_timeout", "proxy_connect_timeout", "gsiftp_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    if config.site_push_bytes < MIN_PUSH_BYTES:
        raise ConfigError(f"site_push_bytes must be at least {MIN_PUSH_BYTES}, "
                          f"got {config.site_push_bytes}")
    if config.site_max_ahead <= 0:
        raise ConfigError(f"site_max_ahead must be positive, got {config.site_max_ahead}")
    if config.gsiftp_threads < 1:
        raise ConfigError(f"gsiftp_threads must be at least 1, got {config.gsiftp_threads}")
    if config.db_url and not config.db_url.startswith(("sqlite", "mysql", "mariadb")):
        raise ConfigError(
            f"db_url must be sqlite:///PATH or mysql+mysqldb://USER@HOST/DB, got "
            f"{safe_db_url(config.db_url)!r}"
        )
