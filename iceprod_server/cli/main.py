"""The ``iceprod-server`` argument parser and entry point."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

import iceprod_server
from iceprod_server import examples
from iceprod_server.cli import local, remote, site
from iceprod_server.cli.common import EXIT_ERROR, PROG, CLIError


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal; keeps the examples of an epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _bundled_examples() -> str:
    """The example configs that come with the server, for the epilog of ``submit``."""
    folder = examples.examples_dir()
    names = examples.list_examples()
    if folder is None or not names:
        return ""
    lines = [f"{name:<18} {examples.summary(name, 60)}" for name in names]
    return (f"\n\nbundled example configs, in {folder}/:\n"
            + textwrap.indent("\n".join(lines), "  "))


def _data_dir(p: argparse.ArgumentParser, db_url: bool = True) -> None:
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="the server's data directory (default: $ICEPROD_DATA_DIR or ./var)")
    if db_url:
        p.add_argument("--db-url", metavar="URL", default=None,
                       help="database URL, overrides the config file, e.g. "
                            "mysql+mysqldb://root@127.0.0.1/iceprod (default: SQLite in DIR)")


def _remote(p: argparse.ArgumentParser, passkey_required: bool) -> None:
    p.add_argument("--url", default=os.environ.get("ICEPROD_URL", "http://127.0.0.1:8080"),
                   help="server base URL, http://HOST:PORT (default: $ICEPROD_URL or "
                        "http://127.0.0.1:8080)")
    env_key = os.environ.get("ICEPROD_PASSKEY")
    p.add_argument("--passkey", metavar="KEY", default=env_key,
                   required=passkey_required and not env_key,
                   help="passkey (default: $ICEPROD_PASSKEY)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")


def build_parser() -> argparse.ArgumentParser:
    fmt = _Formatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt,
        description="Run and use an IceProd server.",
        epilog=_examples(f"""
            {PROG} init --data-dir var
            echo "$PASSWORD" | {PROG} add-user admin --admin --password-stdin --data-dir var
            {PROG} serve --data-dir var --port 8080
            KEY=$({PROG} passkey issue --data-dir var --role user --user admin)
            {PROG} submit conf/examples/two_tasks.json --njobs 20 --passkey $KEY
            {PROG} status --url http://127.0.0.1:8080
            """) + "\n\nRun COMMAND --help for the options of each command.")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {iceprod_server.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", formatter_class=fmt, help="create a data directory and database",
                       description="Create DIR, its iceprod.toml and cookie_secret, and the "
                       "database schema. Safe to run again: existing files are kept and the "
                       "schema is only upgraded.",
                       epilog=_examples(f"""
                           {PROG} init --data-dir var
                           {PROG} init --data-dir var --db-url mysql+mysqldb://root@127.0.0.1/iceprod
                           """))
    _data_dir(p)
    p.set_defaults(func=local.cmd_init)

    p = sub.add_parser("serve", formatter_class=fmt, help="run the server",
                       description="Serve the web pages and JSON-RPC at /jsonrpc until SIGINT "
                       "or SIGTERM, which stop gracefully: new connections are refused, "
                       "requests in flight finish (up to shutdown_grace seconds). SIGHUP "
                       "re-reads iceprod.toml and applies the options that can change live. "
                       "GET /healthz answers 200 once the server is ready. Several "
                       "processes may serve one MariaDB database (--processes, or separate "
                       "serve commands on their own ports).",
                       epilog=_examples(f"""
                           {PROG} serve --data-dir var --port 8080
                           {PROG} serve --data-dir var --host 0.0.0.0 --log-level DEBUG
                           {PROG} serve --data-dir var --processes 4
                           """))
    _data_dir(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="text lines, or one JSON object per line (default text)")
    p.add_argument("--processes", metavar="N", type=int,
                   help="worker processes sharing the port, each with its own event loop, "
                        "pools and database connections; a dying worker is restarted "
                        "(default 1)")
    p.set_defaults(func=local.cmd_serve)

    p = sub.add_parser("migrate", formatter_class=fmt, help="upgrade the database schema",
                       description="Bring the database schema to this version's revision.",
                       epilog=_examples(f"""
                           {PROG} migrate --data-dir var
                           {PROG} migrate --check --data-dir var  # exit 2: a schema change"""))
    _data_dir(p)
    p.add_argument("--check", action="store_true",
                   help="change nothing: exit 0 if the schema is already this version's, "
                        "2 (naming both revisions) if this version needs a migration")
    p.set_defaults(func=local.cmd_migrate)

    p = sub.add_parser("add-user", formatter_class=fmt, help="create a user account",
                       description="Create a user. The password is read from standard input "
                       "with --password-stdin (one line), or asked twice on a terminal.",
                       epilog=_examples(f"""
                           echo "$PASSWORD" | {PROG} add-user alice --password-stdin --data-dir var
                           {PROG} add-user admin --admin --data-dir var
                           """) + "\n\nexits with 3 if the user exists already")
    p.add_argument("name", help="user name (letters, digits, _ . @ -)")
    p.add_argument("--admin", action="store_true", help="give the user the admin role")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    _data_dir(p)
    p.set_defaults(func=local.cmd_add_user)

    p = sub.add_parser("add-site", formatter_class=fmt, help="register a peer site",
                       description="Register a peer site; prints its site id and its key "
                       "(shown only once).",
                       epilog=_examples(f"{PROG} add-site uw-madison --data-dir var"))
    p.add_argument("name", help="site name")
    p.add_argument("--cert-dn", metavar="DN", help="subject DN of the site's client "
                   "certificate, as nginx passes it")
    _data_dir(p)
    p.set_defaults(func=local.cmd_add_site)

    p = sub.add_parser("join", formatter_class=fmt, help="make this server a client site",
                       description="Make the server on DIR a client site of a master: check "
                       "the site key with the master (exit 1 with the reason when it is "
                       "wrong or the master cannot be reached), then write the [site] table "
                       "into DIR/iceprod.toml. From then on `serve` pulls work from the "
                       "master for local pilots and pushes every change back. The site id "
                       "and key come from `add-site` on the master.",
                       epilog=_examples(f"""
                           {PROG} join --data-dir var --master https://master.example:443 \
                               --site-id 0190f3c2a1b000000a --key "$SITE_KEY"
                           """))
    _data_dir(p, db_url=False)
    p.add_argument("--master", required=True, metavar="URL",
                   help="the master's base URL (http://HOST:PORT) or its /jsonrpc URL")
    p.add_argument("--site-id", required=True, metavar="ID", help="this site's id there")
    p.add_argument("--key", required=True, metavar="KEY", help="this site's key there")
    p.set_defaults(func=site.cmd_join)

    p = sub.add_parser("leave", formatter_class=fmt, help="stop being a client site",
                       description="Remove the [site] table from DIR/iceprod.toml. Refused "
                       "(exit 1) while tasks pulled from the master are unfinished here or "
                       "changes wait in the outbox; restart `serve` afterwards.",
                       epilog=_examples(f"{PROG} leave --data-dir var"))
    _data_dir(p, db_url=False)
    p.set_defaults(func=site.cmd_leave)

    p = sub.add_parser("passkey", formatter_class=fmt, help="issue, revoke or list passkeys",
                       description="Passkeys authenticate pilots and scripts "
                       "(Authorization: Bearer KEY).",
                       epilog=_examples(f"""
                           {PROG} passkey issue --data-dir var --role pilot --expires 86400
                           {PROG} passkey issue --data-dir var --role user --user alice
                           {PROG} passkey list --data-dir var
                           {PROG} passkey revoke --data-dir var KEY_ID
                           """))
    psub = p.add_subparsers(dest="passkey_command", metavar="ACTION", required=True)
    q = psub.add_parser("issue", formatter_class=fmt, help="issue a passkey; prints only the key",
                        description="Issue a passkey and print it (only the key, one line). A "
                        "user key carries that user's rights; an admin key needs an admin user.",
                        epilog=_examples(f"""
                            KEY=$({PROG} passkey issue --data-dir var --role pilot)
                            {PROG} passkey issue --data-dir var --role admin --user admin \\
                                --expires 3600
                            {PROG} passkey issue --data-dir var --role pilot --lease 600 \\
                                --description "iceprod-pilot, heartbeat every 60 s"
                            """))
    q.add_argument("--role", required=True, choices=("pilot", "user", "admin"))
    q.add_argument("--user", metavar="NAME", help="the user the key acts for")
    q.add_argument("--expires", metavar="SECONDS", type=float,
                   help="lifetime in seconds (default: no expiry)")
    q.add_argument("--description", default="", help="a note shown by passkey list")
    q.add_argument("--lease", metavar="SECONDS", type=float,
                   help="seconds a task claimed with this key may go without a call about "
                        "it before it is reset as lost (default: the server's "
                        "lease_seconds, 7200)")
    _data_dir(q)
    q.set_defaults(func=local.cmd_passkey_issue)
    q = psub.add_parser("revoke", formatter_class=fmt, help="revoke a passkey",
                        description="Revoke a passkey by its id, or by the key itself. Running "
                        "servers refuse it within a second.",
                        epilog=_examples(f"""
                            {PROG} passkey revoke --data-dir var 0190f3c2a1b000000a
                            {PROG} passkey revoke --data-dir var --key "$KEY"
                            """))
    q.add_argument("key_id", nargs="?", metavar="KEY_ID", help="the key's id (passkey list)")
    q.add_argument("--key", help="the key itself")
    _data_dir(q)
    q.set_defaults(func=local.cmd_passkey_revoke)
    q = psub.add_parser("list", formatter_class=fmt, help="list passkeys (never the keys)",
                        epilog=_examples(f"{PROG} passkey list --data-dir var"))
    _data_dir(q)
    q.set_defaults(func=local.cmd_passkey_list)

    p = sub.add_parser("backup", formatter_class=fmt, help="copy the database while serving",
                       description="Write a consistent copy of the database to FILE while "
                       "the server keeps serving: SQLite's VACUUM INTO, or mariadb-dump "
                       "--single-transaction for MariaDB/MySQL (needs the mariadb client "
                       "tools). Every change committed before the backup began is in it.",
                       epilog=_examples(f"""
                           {PROG} backup --data-dir var --out /backup/iceprod-$(date +%F).db
                           """))
    _data_dir(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the backup file to write "
                   "(written under a temporary name, then renamed)")
    p.set_defaults(func=local.cmd_backup)

    p = sub.add_parser("restore", formatter_class=fmt, help="put a backup back",
                       description="Replace the database of a data directory made by init "
                       "with a backup written by `backup`. Stop the servers of that data "
                       "directory first. The file must be the kind the database takes (a "
                       "SQLite backup for SQLite, a dump for MariaDB/MySQL).",
                       epilog=_examples(f"""
                           {PROG} init --data-dir var2
                           {PROG} restore --data-dir var2 --from /backup/iceprod-2026-12-05.db
                           """))
    _data_dir(p)
    p.add_argument("--from", dest="source", required=True, metavar="FILE",
                   help="the backup file")
    p.set_defaults(func=local.cmd_restore)

    p = sub.add_parser("submit", formatter_class=fmt, help="submit a dataset to a server",
                       description="Submit a dataset config (IceProd JSON, version 3) and "
                       "print its dataset id. Validation problems are printed one per line.",
                       epilog=_examples(f"""
                           {PROG} submit conf/examples/two_tasks.json --njobs 20 \\
                               --url http://127.0.0.1:8080 --passkey $KEY
                           {PROG} submit sim.json --njobs 1000 --priority 2 --group simprod
                           """) + _bundled_examples())
    p.add_argument("config", metavar="CONFIG.json", help="dataset config file")
    p.add_argument("--njobs", type=int, required=True, help="number of jobs")
    p.add_argument("--description", help="description (default: the config's)")
    p.add_argument("--priority", type=float, default=0.0, help="dataset priority (default 0)")
    p.add_argument("--group", default="", help="group whose share the dataset uses")
    p.add_argument("--debug", action="store_true",
                   help="debug dataset: a failing task is suspended, not retried")
    p.add_argument("--gridspec", default="", help="restrict the dataset to a grid")
    p.add_argument("--stat-key", action="append", metavar="KEY",
                   help="a statistic to keep from each finished task (repeatable)")
    _remote(p, passkey_required=True)
    p.set_defaults(func=remote.cmd_submit)

    p = sub.add_parser("status", formatter_class=fmt, help="show datasets and task counts",
                       description="Without DATASET: every dataset with its task counts. With "
                       "DATASET: its task counts by state and by task name. With --watch: "
                       "the dataset's progress live, a bar per task name and one for the "
                       "dataset with rates and time left, until it is complete (exit 0), "
                       "stops with failed or suspended tasks and nothing running (exit 1), "
                       "or Ctrl-C (exit 130).",
                       epilog=_examples(f"""
                           {PROG} status --url http://127.0.0.1:8080
                           {PROG} status --url http://127.0.0.1:8080 0190f3c2a1b000000a
                           {PROG} status --url http://127.0.0.1:8080 --watch 0190f3c2a1b000000a
                           """))
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="a dataset id")
    p.add_argument("--watch", nargs="?", const="", metavar="DATASET",
                   help="follow DATASET's progress live until it is done")
    p.add_argument("--interval", type=float, default=1.5, metavar="SECONDS",
                   help="with --watch: seconds between updates (default 1.5)")
    _remote(p, passkey_required=False)
    p.set_defaults(func=remote.cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "data_dir") and not args.data_dir:
        args.data_dir = os.environ.get("ICEPROD_DATA_DIR") or "./var"
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s: %(message)s")
    try:
        args.func(args)
    except CLIError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    sys.exit(0)


if __name__ == "__main__":
    main()
