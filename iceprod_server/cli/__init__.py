"""``iceprod-server``: set up, run and use an IceProd server from the command line.

Commands that work on a server's own files or database (``init``, ``serve``, ``migrate``,
``add-user``, ``add-site``, ``passkey``) take ``--data-dir DIR`` (default ``./var``) and call
the units of work in :mod:`iceprod_server.db` directly. Commands that talk to a running
server (``submit``, ``status``) take ``--url`` and go through JSON-RPC.

Exit codes: 0 success, 1 error, 2 usage error or database schema not at this version,
3 the user, site or key named already exists.
"""

from iceprod_server.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
