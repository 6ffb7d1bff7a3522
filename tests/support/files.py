"""A server's files directory as the download and upload tests see it.

- :func:`serving_files`: a server of its own on a throwaway SQLite database (the database
  matters here only for passkeys and logins), with a passkey per role;
- :class:`Files`: that server's files directory, with files placed on disk as an operator
  would, downloads and uploads as a client makes them;
- :data:`ACCESS`: the access rules the tests run under: any passkey by default,
  ``public/`` for anyone, ``outputs/`` for pilots and admins only;
- :func:`entries`: what a directory holds, to show that nothing was left behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.databases import throwaway_database
from tests.support.http import Reply, fetch, sha512
from tests.support.servers import ServerProcess

ACCESS = "=any;public=anonymous;outputs=pilot,admin"
MB = 1024 * 1024


def entries(directory: Path) -> list[str]:
    """What ``directory`` holds, leaving out the empty ``public`` folder that
    ``iceprod-server init`` makes in the files directory."""
    if not directory.exists():
        return []
    return sorted(name for name in os.listdir(directory)
                  if not (name == "public" and (directory / name).is_dir()
                          and not any((directory / name).iterdir())))


@dataclass
class Files:
    srv: ServerProcess
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.srv.data_dir / "files"

    @property
    def port(self) -> int:
        return self.srv.port

    def put_file(self, relpath: str, data: bytes) -> Path:
        """A file placed on disk, as an operator (or an earlier upload) would."""
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def get(self, path: str, headers: dict[str, str] | None = None,
            who: str | None = "pilot", method: str = "GET") -> Reply:
        return fetch(self.port, method, path, headers=headers,
                     key=self.keys[who] if who else None)

    def upload(self, relpath: str, data: bytes | Iterable[bytes],
               headers: dict[str, str] | None = None, who: str | None = "pilot",
               checksum: bool = True) -> Reply:
        headers = dict(headers or {})
        if checksum and isinstance(data, bytes):
            headers.setdefault("X-Checksum", f"sha512={sha512(data)}")
        return fetch(self.port, "PUT", "/upload/" + relpath, data, headers,
                     self.keys[who] if who else None)


@contextmanager
def serving_files(module_server: Callable[..., ServerProcess], db_dir: Path,
                  env: dict[str, str],
                  roles: tuple[str, ...] = ("pilot", "user", "admin")) -> Iterator[Files]:
    """A server started by ``module_server`` with ``env``, and a passkey for each role."""
    with throwaway_database("sqlite", db_dir) as url:
        srv = module_server(url, env=env)
        yield Files(srv, {role: srv.deployment.passkey(role) for role in roles})
