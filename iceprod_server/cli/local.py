"""Commands that work on a server's own data directory and database.

They call the units of work in :mod:`iceprod_server.db` directly, through
:func:`~iceprod_server.executors.database.run_unit`, and refuse a database whose schema is
not at this version (except ``init`` and ``migrate``, which bring it there).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import getpass
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine

from iceprod_server import log_format
from iceprod_server.cli.common import (
    EXIT_EXISTS,
    EXIT_USAGE,
    PROG,
    CLIError,
    table,
    when,
)
from iceprod_server.config import CONFIG_FILE, Config, ConfigError, load, safe_db_url
from iceprod_server.errors import Conflict, IceProdError

T = TypeVar("T")


def _config(args: argparse.Namespace, **overrides: Any) -> Config:
    overrides.setdefault("db_url", getattr(args, "db_url", None))
    try:
        config = load(args.data_dir, overrides)
    except ConfigError as e:
        raise CLIError(f"configuration: {e}") from e
    if args.command != "init" and not config.db_url and not Path(config.data_dir).is_dir():
        raise CLIError(f"no data directory {config.data_dir}: create it with "
                       f"`{PROG} init --data-dir {config.data_dir}`")
    return config


def _engine(config: Config) -> Engine:
    from iceprod_server.db.engine import make_engine

    return make_engine(config.database_url, pool_size=2, timeout=config.db_timeout)


def _run(config: Config, fn: Callable[..., T], *args: Any, check: bool = True,
         write: bool = True, **kwargs: Any) -> T:
    """Run one unit of work on the server's database, refusing an outdated schema."""
    from iceprod_server.db.migrate import SchemaOutdated, check_schema
    from iceprod_server.executors.database import run_unit

    engine = _engine(config)
    try:
        if check:
            run_unit(engine, lambda s: check_schema(s.connection(), config.data_dir),
                     write=False, timeout=config.db_timeout)
        return run_unit(engine, fn, *args, write=write, timeout=config.db_timeout, **kwargs)
    except SchemaOutdated as e:
        raise CLIError(str(e), EXIT_USAGE) from e
    except Conflict as e:
        raise CLIError(e.reason, EXIT_EXISTS) from e
    except IceProdError as e:
        raise CLIError(e.reason + _detail(e)) from e
    finally:
        engine.dispose()


def _detail(e: IceProdError) -> str:
    """What the driver said: the operator running a local command may see it."""
    detail = getattr(e, "detail", "")
    return f" ({detail})" if detail else ""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- commands on the data dir

def cmd_init(args: argparse.Namespace) -> None:
    from iceprod_server.db.migrate import upgrade_with_report

    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise CLIError(f"{data_dir} exists and is not a directory")
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o750)
        print(f"created data directory {data_dir}")
    else:
        print(f"data directory {data_dir} exists")
    conf = data_dir / CONFIG_FILE
    if conf.exists():
        try:
            existing = tomllib.loads(conf.read_text()).get("db_url", "")
        except tomllib.TOMLDecodeError as e:
            raise CLIError(f"{conf}: {e}") from e
        if args.db_url and args.db_url != existing:
            raise CLIError(f"{conf} exists with another db_url ({_safe_url(existing)}); "
                           "edit it, or init another directory")
        print(f"kept {conf}")
    else:
        lines = ["# IceProd server configuration; every option is described in",
                 "# conf/iceprod.example.toml of the source tree.", ""]
        if args.db_url:
            lines.append(f"db_url = {json.dumps(args.db_url)}")
        else:
            lines.append('# db_url = "mysql+mysqldb://USER@HOST/DATABASE" (default: SQLite '
                         'in this directory)')
        lines += ["", "# IceProd 2 pilots fetch module sources given as relative paths from",
                  "# <url>/download/<path> without credentials; to serve files/public/ to",
                  "# anyone (uploads there too), uncomment:",
                  "# [files]",
                  '# access = { "" = "any", "public" = "anonymous" }']
        conf.write_text("\n".join(lines) + "\n")
        print(f"wrote {conf}")
    secret = data_dir / "cookie_secret"
    if secret.exists():
        print(f"kept {secret}")
    else:
        _write_private(secret, secrets.token_urlsafe(48) + "\n")
        print(f"wrote {secret} (mode 600)")
    config = _config(args)
    public = config.files_dir / "public"
    if public.is_dir():
        print(f"kept {public}")
    else:
        public.mkdir(parents=True)
        print(f"created {public} (module sources for IceProd 2 pilots: [files] access)")
    try:
        before, after = upgrade_with_report(config.database_url)
    except Exception as e:  # connection refused, access denied, unknown database...
        raise CLIError(f"cannot set up the database: {_short(e)}") from e
    if before == after:
        print(f"database schema already at {after}")
    elif before is None:
        print(f"created database schema {after}")
    else:
        print(f"upgraded database schema {before} -> {after}")
    print(f"ready: {PROG} serve --data-dir {data_dir}")


def cmd_migrate(args: argparse.Namespace) -> None:
    from iceprod_server.db.migrate import upgrade_with_report

    config = _config(args)
    if args.check:
        _check_migration(config, args.data_dir)
        return
    try:
        before, after = upgrade_with_report(config.database_url)
    except Exception as e:
        raise CLIError(f"cannot migrate the database: {_short(e)}") from e
    if before == after:
        print(f"database schema already at {after} (nothing to do)")
    else:
        print(f"database schema {before or 'empty'} -> {after}")


def _check_migration(config: Config, data_dir: str) -> None:
    """Say whether this version needs a schema change, changing nothing: an upgrade without
    one may restart the servers one at a time; one with a change needs them all stopped."""
    from iceprod_server.db.migrate import current_revision, head_revision

    current = _run(config, lambda s: current_revision(s.connection()), check=False,
                   write=False)
    head = head_revision()
    if current == head:
        print(f"database schema at {head}, as this version needs: no migration (servers "
              "of this version may replace running ones one at a time)")
        return
    raise CLIError(f"database schema at {current or 'none'}, this version needs {head}: "
                   "stop every server, back up, then run "
                   f"`{PROG} migrate --data-dir {data_dir}` and start them",
                   code=EXIT_USAGE)


def _safe_url(url: str) -> str:
    """A database URL fit to print: without its password."""
    if not url:
        return "SQLite in the data directory"
    return safe_db_url(url)


def _short(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    return str(orig if orig is not None else e).splitlines()[0]


def cmd_serve(args: argparse.Namespace) -> None:
    def load_config() -> Config:
        return _config(args, host=args.host, port=args.port, log_level=args.log_level,
                       processes=args.processes, log_format=args.log_format)

    config = load_config()
    if config.processes > 1:
        # before the metrics module is first imported: workers then write their metrics
        # to files there, which a scrape of any worker adds up
        metrics_dir = tempfile.mkdtemp(prefix="iceprod-metrics-")
        atexit.register(shutil.rmtree, metrics_dir, True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from iceprod_server import server
    from iceprod_server.db.migrate import SchemaOutdated, check_schema
    from iceprod_server.executors.database import run_unit
    from iceprod_server.handlers.metrics import front_end_exposure

    level = logging.getLevelName(config.log_level.upper())
    if not isinstance(level, int):
        raise CLIError(f"unknown log level {config.log_level!r}")
    log_format.configure(level, config.log_format)
    exposure = front_end_exposure(config)
    if exposure:
        logging.getLogger("iceprod_server.handlers.metrics").warning("%s", exposure)
    engine = _engine(config)
    try:
        run_unit(engine, lambda s: check_schema(s.connection(), config.data_dir),
                 write=False, timeout=config.db_timeout)
    except SchemaOutdated as e:
        raise CLIError(str(e), EXIT_USAGE) from e
    except IceProdError as e:
        raise CLIError(f"database: {e.reason}{_detail(e)}") from e
    finally:
        engine.dispose()
    try:
        if config.processes > 1:
            from iceprod_server.supervisor import Supervisor

            sys.exit(Supervisor(config, config.processes, load_config).run())
        asyncio.run(server.serve(config, reload=load_config))
    except SchemaOutdated as e:
        raise CLIError(str(e), EXIT_USAGE) from e
    except ConfigError as e:
        raise CLIError(f"configuration: {e}") from e
    except OSError as e:
        raise CLIError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from e


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise CLIError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise CLIError("standard input is not a terminal: give the password on standard "
                       "input with --password-stdin")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise CLIError("the two passwords differ")
    return first


def cmd_add_user(args: argparse.Namespace) -> None:
    from iceprod_server.db import users

    config = _config(args)
    password = _read_password(args)
    role = "admin" if args.admin else "user"
    user = _run(config, users.create_user, args.name, password, role)
    print(f"created {user['role']} {user['username']} (user id {user['user_id']})")


def cmd_add_site(args: argparse.Namespace) -> None:
    from iceprod_server.db import users

    config = _config(args)
    site = _run(config, users.register_site, args.name, args.cert_dn)
    print(f"site_id={site['site_id']}")
    print(f"site_key={site['site_key']}")
    print("the site key is shown only now; keep it safe", file=sys.stderr)


def cmd_passkey_issue(args: argparse.Namespace) -> None:
    from iceprod_server.db import users

    config = _config(args)
    key = _run(config, users.issue_passkey, args.role, args.user, args.expires,
               args.description, args.lease)
    print(key["passkey"])
    print(f"passkey {key['key_id']}: role {key['role']}"
          + (f", user {key['username']}" if key.get("username") else "")
          + (f", expires {when(key['expires'])}" if key.get("expires") else ", no expiry")
          + (f", lease {key['lease_seconds']:g} s" if key.get("lease_seconds") else ""),
          file=sys.stderr)


def cmd_passkey_revoke(args: argparse.Namespace) -> None:
    from iceprod_server.db import users

    if bool(args.key_id) == bool(args.key):
        raise CLIError("name the passkey by its id (KEY_ID) or by --key KEY, not both",
                       EXIT_USAGE)
    config = _config(args)
    _run(config, users.revoke_passkey, args.key_id, args.key)
    print(f"revoked passkey {args.key_id or '(given by --key)'}")


def cmd_passkey_list(args: argparse.Namespace) -> None:
    from iceprod_server.db import users

    config = _config(args)
    keys = _run(config, users.list_passkeys, write=False)
    rows = []
    for k in keys:
        state = "revoked" if k["revoked"] else "expired" if k["expired"] else "active"
        rows.append([k["key_id"], k["role"], k["username"] or "", state,
                     when(k["created"]), when(k["expires"]) if k["expires"] else "never",
                     f"{k['lease_seconds']:g}" if k["lease_seconds"] else "default",
                     k["description"]])
    print(table(["key id", "role", "user", "state", "created", "expires",
                  "lease s", "description"], rows))




# ---------------------------------------------------------------- backups

def cmd_backup(args: argparse.Namespace) -> None:
    from iceprod_server.cli.backup import backup

    config = _config(args)
    _run(config, lambda s: None, write=False)  # the schema is this version's
    print(backup(config, Path(args.out)))


def cmd_restore(args: argparse.Namespace) -> None:
    from iceprod_server.cli.backup import restore
    from iceprod_server.db.migrate import current_revision, head_revision

    config = _config(args)
    # the target must be a data directory made by init: its database has a schema
    _run(config, lambda s: None, write=False)
    print(restore(config, Path(args.source)))
    revision = _run(config, lambda s: current_revision(s.connection()), check=False,
                    write=False)
    if revision != head_revision():
        print(f"the backup's schema is {revision}, this version's {head_revision()}: run "
              f"`{PROG} migrate --data-dir {args.data_dir}` before serving")
