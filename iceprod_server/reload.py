"""SIGHUP: read ``iceprod.toml`` again and apply the options that can change while serving.

Options read at each use (through ``services.config``) change at once; the others are sized
or built at start-up (ports, pools, the database URL, secrets) and need a restart, which
the log says by name.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from iceprod_server.config import Config
from iceprod_server.services import Services

log = logging.getLogger(__name__)

# read from services.config where they are used, so a new value applies to the next use
LIVE_OPTIONS = frozenset({
    "log_level", "public_read", "max_body_bytes", "trusted_proxy", "session_hours",
    "cookie_secure", "log_inline_max", "log_max_bytes", "files_access",
    "files_max_upload_bytes",
    "proxy_access", "lease_seconds", "max_resets", "queue_depth", "queue_timeout",
    "materialize_batch", "scheduler_interval", "shutdown_grace", "retry_delay_seconds",
    "retry_max_delay_seconds", "scheduler_stall_seconds", "metrics_allow",
    "request_key_seconds",
    "unpaged_max_rows", "graph_interval",
})


def changed_options(old: Config, new: Config) -> list[str]:
    return [f.name for f in dataclasses.fields(Config)
            if getattr(old, f.name) != getattr(new, f.name)]


def reload_config(services: Services, load: Callable[[], Config]) -> tuple[list[str], list[str]]:
    """Apply what changed in the config file; returns (applied, needing a restart). A file
    that does not load is reported and changes nothing."""
    try:
        new = load()
    except Exception as e:  # a broken file must not stop a running server
        log.error("SIGHUP: the configuration does not load (%s); nothing changed", e)
        return [], []
    old = services.config
    changed = changed_options(old, new)
    applied = [name for name in changed if name in LIVE_OPTIONS]
    restart = [name for name in changed if name not in LIVE_OPTIONS]
    if applied:
        kept = {name: getattr(old, name) for name in restart}
        services.config = dataclasses.replace(new, **kept)
        level = logging.getLevelName(services.config.log_level.upper())
        if isinstance(level, int):
            logging.getLogger().setLevel(level)
    if not changed:
        log.info("SIGHUP: configuration unchanged")
    if applied:
        log.info("SIGHUP: applied %s", ", ".join(applied))
    if restart:
        log.warning("SIGHUP: %s changed but need a restart to apply", ", ".join(restart))
    return applied, restart
