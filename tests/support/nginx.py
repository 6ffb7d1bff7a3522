"""Real nginx for tests, configured from ``deploy/nginx.conf`` itself.

:func:`render_for_syntax_check` changes only what a test machine cannot have (the ``iceprod``
account, the certificate files, ``/srv/iceprod`` and the log and pid paths) so that
``nginx -t`` checks everything else as written. :func:`render_for_test` goes on to serve
plain HTTP on unused ports of 127.0.0.1, proxy to one test server and serve the static
files from this checkout. Every replaced text must be found: when the deploy config
changes, the rendering fails and says what it no longer finds.

nginx runs in the foreground (``-g 'daemon off;'``) under ``-p PREFIX``, as root, with
its workers as root too, since pytest's temporary directories are private to root.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import iceprod_server
from tests.support.servers import stop_process, unused_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONF = REPO / "deploy" / "nginx.conf"
STATIC_DIR = Path(iceprod_server.__file__).resolve().parent / "static"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 15.0


@dataclass
class Certs:
    server_crt: Path
    server_key: Path
    ca: Path


def make_certs(directory: Path) -> Certs:
    """A throwaway self-signed server certificate and a CA certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certs(directory / "server.crt", directory / "server.key", directory / "ca.pem")
    for crt, key, subject in ((certs.server_crt, certs.server_key, "/CN=127.0.0.1"),
                              (certs.ca, directory / "ca.key", "/CN=Test Site CA")):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-days", "2", "-subj", subject, "-keyout", str(key), "-out", str(crt)],
                       check=True, capture_output=True)
    return certs


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise AssertionError(f"deploy/nginx.conf no longer contains {old!r}; "
                             "update tests/support/nginx.py to match")
    return text.replace(old, new)


def render_for_syntax_check(text: str, certs: Certs, directory: Path,
                            uploads: Path | None = None) -> str:
    """The deploy config with the account, certificates, upload directory (``uploads``,
    by default :func:`upload_dir` of ``directory``) and logs moved to what exists on this
    machine."""
    for old, new in (
        ("user iceprod;", "user root;"),
        ("/etc/ssl/iceprod/server.crt", str(certs.server_crt)),
        ("/etc/ssl/iceprod/server.key", str(certs.server_key)),
        ("/etc/ssl/iceprod/site-ca.pem", str(certs.ca)),
        ("/srv/iceprod/nginx-upload", str(uploads or upload_dir(directory))),
        ("pid /run/nginx.pid;", f"pid {directory / 'nginx.pid'};"),
        ("/var/log/nginx/error.log", str(directory / "error.log")),
        ("/var/log/nginx/access.log", str(directory / "access.log")),
    ):
        text = _replace(text, old, new)
    return text


def render_for_test(text: str, certs: Certs, directory: Path, upstream_port: int | list[int],
                    port: int, redirect_port: int, uploads: Path | None = None,
                    https: bool = False) -> str:
    """Plain HTTP on ``port`` (the HTTPS server's locations unchanged), or with ``https``
    TLS as the deploy config has it, proxying to the server(s) on ``upstream_port``, with
    nginx's own temporary files under ``directory``."""
    text = render_for_syntax_check(text, certs, directory, uploads)
    temp_paths = "".join(f"    {name}_temp_path {directory / name};\n"
                         for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    ports = upstream_port if isinstance(upstream_port, list) else [upstream_port]
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=0;\n" for p in ports)
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{port}{' ssl' if https else ''};"),
        ("        listen [::]:443 ssl;\n", ""),
        ("listen 80;", f"listen 127.0.0.1:{redirect_port};"),
        ("        listen [::]:80;\n", ""),
        ("        server 127.0.0.1:8081 max_fails=0;\n        server 127.0.0.1:8082 max_fails=0;\n",
         servers),
        ("/opt/iceprod/.venv/lib/python3.11/site-packages/iceprod_server/static/",
         f"{STATIC_DIR}/"),
        ("http {\n", "http {\n" + temp_paths),
    ):
        text = _replace(text, old, new)
    return text


def upload_dir(directory: Path) -> Path:
    """Where the rendered config has nginx buffer upload bodies."""
    return directory / "nginx-upload"


def check_syntax(conf: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` of ``conf``."""
    return subprocess.run([NGINX, "-t", "-p", str(directory), "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)


@dataclass
class Nginx:
    directory: Path
    port: int
    proc: subprocess.Popen[bytes]
    # where it buffers upload bodies
    upload_dir: Path

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


def start_nginx(directory: Path, upstream_port: int | list[int],
                uploads: Path | None = None, certs: Certs | None = None,
                https: bool = False) -> Nginx:
    """nginx with the test variant of deploy/nginx.conf in front of ``upstream_port``
    (one server or several), buffering upload bodies in ``uploads`` (default:
    :func:`upload_dir` of ``directory``), over TLS with ``certs`` when ``https``; returns
    once it accepts connections."""
    uploads = uploads or upload_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    certs = certs or make_certs(directory / "certs")
    port = unused_port()
    conf = directory / "nginx.conf"
    conf.write_text(render_for_test(DEPLOY_CONF.read_text(), certs, directory, upstream_port,
                                    port, unused_port(), uploads, https))
    proc = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(conf),
                             "-g", "daemon off;"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(directory / "stderr.log").open("wb"))
    nginx = Nginx(directory, port, proc, uploads)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = (directory / "stderr.log").read_text(errors="replace")
            raise AssertionError(f"nginx exited with {proc.returncode}:\n{stderr}\n"
                                 f"{nginx.error_log()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return nginx
        except OSError:
            time.sleep(0.05)
    nginx.stop()
    raise AssertionError(f"nginx did not listen on {port} within {START_TIMEOUT} s:\n"
                         f"{nginx.error_log()[-4000:]}")
