"""The server's configuration: one frozen, typed dataclass.

Values come from the defaults below, then ``<data-dir>/iceprod.toml``, then ``ICEPROD_*``
environment variables, then command-line flags; each source overrides the ones before it.
Every option is documented in ``conf/iceprod.example.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

CONFIG_FILE = "iceprod.toml"


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
    # seconds a unit of database work may wait on locks before -32005
    db_timeout: float = 30.0
    # seconds of silence after which a processing task is reset as "lost contact"
    lease_seconds: float = 1800.0
    # seconds a task may stay waiting or queued before it is put back to idle
    queue_timeout: float = 86400.0
    scheduler_interval: float = 5.0
    # how many tasks the scheduler keeps queued for pilots
    queue_depth: int = 10000
    # how many jobs are materialised per dataset per scheduler pass
    materialize_batch: int = 1000
    max_resets: int = 10
    public_read: bool = True
    max_body_bytes: int = 64 * 1024 * 1024
    # logs larger than this go to files under <data_dir>/logs instead of database rows
    log_inline_max: int = 256 * 1024
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
    # identifies this server among peer sites; part of every id it generates
    site_id: str = ""
    # cookie secret; empty means read <data_dir>/cookie_secret (written by init)
    cookie_secret: str = ""

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return "sqlite:///" + str(Path(self.data_dir).resolve() / "iceprod.db")

    def path(self, *parts: str) -> Path:
        return Path(self.data_dir).resolve().joinpath(*parts)


def _fields() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any, kind: type, source: str) -> Any:
    """Convert ``value`` to ``kind``, accepting strings from the environment."""
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


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``[server] port = 1`` and ``port = 1`` both mean option ``port``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and key not in ("proxy",):
            out.update(_flatten(value, prefix))
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
                table = _flatten(tomllib.load(f))
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
    for name in ("db_threads", "fs_threads", "queue_depth", "materialize_batch", "max_resets"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in ("lease_seconds", "queue_timeout", "scheduler_interval", "db_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    if config.cookie_secure not in ("auto", "always", "never"):
        raise ConfigError(f"cookie_secure must be auto, always or never, "
                          f"got {config.cookie_secure!r}")
    if config.db_url and not config.db_url.startswith(("sqlite", "mysql", "mariadb")):
        raise ConfigError(
            f"db_url must be sqlite:///PATH or mysql+mysqldb://USER@HOST/DB, got {config.db_url!r}"
        )
