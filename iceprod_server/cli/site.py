"""``join`` and ``leave``: make this server a client site of a master, or stop being one.

``join`` checks the site key against the master (``whoami`` must answer role ``site`` with
the same site id) and then writes the ``[site]`` table into ``iceprod.toml``; ``serve``
runs the link from then on. ``leave`` removes the table again, only when nothing pulled
from the master is still unfinished here and the outbox is empty.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from iceprod_server.cli.common import CLIError
from iceprod_server.cli.local import _config, _run
from iceprod_server.config import CONFIG_FILE
from iceprod_server.errors import NOT_AUTHENTICATED

_TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"]+)\s*\]\]?\s*(#.*)?$")


def _without_site_table(text: str) -> str:
    """``text`` with its ``[site]`` table (header to the next header) removed."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        m = _TABLE_HEADER.match(line)
        if m:
            skipping = m.group(1).strip('"') == "site"
        if not skipping:
            out.append(line)
    return "".join(out).rstrip("\n") + "\n"


def _check_key(url: str, site_id: str, key: str) -> None:
    from iceprod_server.client import IceProdClient, RPCError

    client = IceProdClient(url, passkey=key, timeout=15.0, retries=1)
    try:
        who = client.call("whoami")
    except RPCError as e:
        if e.code == NOT_AUTHENTICATED:
            raise CLIError(f"the master at {client.url} refused the site key: "
                           f"{e.reason}") from e
        raise CLIError(f"cannot check the key with the master at {client.url}: {e}") from e
    finally:
        client.close()
    if not isinstance(who, dict) or who.get("role") != "site":
        raise CLIError(f"the master at {client.url} does not take this key as a site key "
                       f"(it says role {who.get('role') if isinstance(who, dict) else who!r})")
    if who.get("site_id") != site_id:
        raise CLIError(f"the key belongs to site {who.get('site_id')}, not {site_id}")


def cmd_join(args: argparse.Namespace) -> None:
    from iceprod_server.client import jsonrpc_url
    from iceprod_server.db.migrate import check_schema

    config = _config(args)
    # the database must be ready before the master is asked anything
    _run(config, lambda s: check_schema(s.connection(), config.data_dir), write=False)
    if config.site_master:
        raise CLIError(f"this site has joined {config.site_master} already; run "
                       "`iceprod-server leave` first")
    try:
        url = jsonrpc_url(args.master)
    except ValueError as e:
        raise CLIError(f"--master: {e}") from e
    _check_key(url, args.site_id, args.key)
    conf = Path(config.data_dir) / CONFIG_FILE
    text = conf.read_text() if conf.exists() else ""
    text = _without_site_table(text) if text.strip() else ""
    text += ("\n[site]\n# written by `iceprod-server join`; `iceprod-server leave` removes it\n"
             f"master = {json.dumps(url)}\nid = {json.dumps(args.site_id)}\n"
             f"key = {json.dumps(args.key)}\n")
    tmp = conf.with_name(conf.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, conf)
    print(f"joined {url} as site {args.site_id}")


def cmd_leave(args: argparse.Namespace) -> None:
    from iceprod_server.db import sync_client

    config = _config(args)
    if not config.site_master:
        raise CLIError("this site has not joined a master")
    held = _run(config, sync_client.held_counts, write=False)
    if held["unfinished"] or held["outbox"]:
        raise CLIError(f"{held['unfinished']} tasks pulled from the master are unfinished "
                       f"here and {held['outbox']} changes are not pushed yet; let them "
                       "finish (or the master reclaim them) first")
    conf = Path(config.data_dir) / CONFIG_FILE
    conf.write_text(_without_site_table(conf.read_text()))
    print(f"left {config.site_master}")
