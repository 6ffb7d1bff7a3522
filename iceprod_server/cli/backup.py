"""``iceprod-server backup`` and ``restore``: a consistent copy of the database while the
server keeps serving, and putting one back into a data directory made by ``init``.

SQLite is copied with ``VACUUM INTO``: one read transaction, so the copy is the database
as it was at one moment, and the servers' writers go on meanwhile (WAL readers never block
them). The online backup API, copied in steps, started again from the first page whenever
another connection wrote between two steps: under pilot load a large database never
finished. MariaDB and MySQL are copied with ``mariadb-dump --single-transaction`` (one
consistent read view, no table locks). A backup file is a SQLite database or a SQL dump;
``restore`` checks that the file is the kind its target database takes and that it holds
an IceProd schema before it changes anything.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from iceprod_server.cli.common import CLIError
from iceprod_server.config import Config

SQLITE_MAGIC = b"SQLite format 3\x00"
DUMP_TIMEOUT = 6 * 3600.0


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise CLIError("the database is not a SQLite file")
    return Path(url.database)


def _sqlite_snapshot(src_path: Path, dest_path: Path) -> None:
    """Write the database at ``src_path`` as it is now to the new file ``dest_path``."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=60)
    try:
        src.execute("VACUUM INTO ?", (str(dest_path),))
    finally:
        src.close()
    # VACUUM INTO leaves the file to the page cache: a backup is made to survive a crash
    fd = os.open(dest_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sqlite_copy(src_path: Path, dest_path: Path) -> None:
    """Copy a backup over a stopped server's database, in one step of the backup API (in
    steps, a write by anyone else would make it start again)."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=60)
    try:
        dest = sqlite3.connect(dest_path, timeout=60)
        try:
            src.backup(dest, pages=-1)
        finally:
            dest.close()
    finally:
        src.close()


def _mysql_args(url: URL) -> tuple[list[str], dict[str, str]]:
    """Connection options for the mariadb command-line tools; the password travels in the
    environment, never on the command line where other users could see it."""
    args = [f"--host={url.host or 'localhost'}", f"--user={url.username or 'root'}"]
    if url.port:
        args.append(f"--port={url.port}")
    socket = url.query.get("unix_socket")
    if isinstance(socket, str):
        args.append(f"--socket={socket}")
    env = dict(os.environ)
    if url.password:
        env["MYSQL_PWD"] = str(url.password)
    return args, env


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise CLIError(f"{names[0]} is not installed (Debian: apt-get install mariadb-client)")


def _is_sqlite_file(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def backup(config: Config, out: Path) -> str:
    """Write a consistent copy of the database to ``out``; returns what was done."""
    url = make_url(config.database_url)
    out = out.resolve()
    if out.exists() and out.is_dir():
        raise CLIError(f"{out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        if url.get_backend_name() == "sqlite":
            src = _sqlite_path(url)
            if not src.exists():
                raise CLIError(f"no database file {src}: run `iceprod-server init` first")
            _sqlite_snapshot(src, tmp)
            kind = "SQLite VACUUM INTO"
        else:
            args, env = _mysql_args(url)
            dump = _tool("mariadb-dump", "mysqldump")
            with tmp.open("wb") as f:
                proc = subprocess.run(
                    [dump, *args, "--single-transaction", "--quick", "--triggers",
                     "--routines", "--hex-blob", "--default-character-set=utf8mb4",
                     "--skip-lock-tables", str(url.database)],
                    stdout=f, stderr=subprocess.PIPE, env=env, timeout=DUMP_TIMEOUT,
                    check=False)
            if proc.returncode != 0:
                raise CLIError(f"mariadb-dump failed: {proc.stderr.decode(errors='replace')}")
            kind = "mariadb-dump --single-transaction"
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return (f"wrote {out} ({kind}, {out.stat().st_size} bytes, "
            f"{time.monotonic() - started:.1f} s)")


def restore(config: Config, source: Path) -> str:
    """Replace the database of ``config`` with the backup in ``source``."""
    if not source.is_file():
        raise CLIError(f"no backup file {source}")
    url = make_url(config.database_url)
    sqlite_backup = _is_sqlite_file(source)
    if url.get_backend_name() == "sqlite":
        if not sqlite_backup:
            raise CLIError(f"{source} is not a SQLite backup, and this data directory's "
                           "database is SQLite")
        _check_sqlite_backup(source)
        target = _sqlite_path(url)
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        _sqlite_copy(source, target)
    else:
        if sqlite_backup:
            raise CLIError(f"{source} is a SQLite backup, and this data directory's database "
                           "is MariaDB/MySQL")
        _check_dump(source)
        args, env = _mysql_args(url)
        client = _tool("mariadb", "mysql")
        with source.open("rb") as f:
            proc = subprocess.run([client, *args, "--default-character-set=utf8mb4",
                                   str(url.database)],
                                  stdin=f, stderr=subprocess.PIPE, env=env,
                                  timeout=DUMP_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise CLIError(f"loading {source} failed: {proc.stderr.decode(errors='replace')}")
    return f"restored {source} into {config.data_dir}"


def _check_sqlite_backup(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as e:
        raise CLIError(f"{path} does not hold an IceProd database ({e})") from e
    finally:
        conn.close()
    if row is None:
        raise CLIError(f"{path} does not hold an IceProd database (no schema revision)")


def _check_dump(path: Path) -> None:
    # mariadb-dump writes tables in name order: alembic_version comes first
    with path.open("rb") as f:
        head = f.read(1 << 20)
    if b"CREATE TABLE `alembic_version`" not in head:
        raise CLIError(f"{path} is not a dump of an IceProd database")


