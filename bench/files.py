"""Benchmark: the file proxy on a 1 GB file, against the server serving the file itself.

One file under ``<data-dir>/files/bench/`` is fetched with ``curl -o /dev/null`` four ways:

- ``direct``: ``GET /download/bench/<file>``, the server's own download handler;
- ``proxy``: ``GET /proxy?url=...`` without the cache: the server fetches the file from a
  local nginx (serving the same directory) and streams it through;
- ``proxy cold``: the same with ``cache=1`` for a URL not yet cached: fetched from nginx
  and written into the cache while it streams;
- ``proxy cached``: ``cache=1`` again: streamed from the cache directory.

Each target is fetched ``rounds`` times, in a rotating order (every cold round uses a URL
of its own, ``?round=N``, which nginx ignores), and each figure is the median. Memory is
the server's peak resident size during the transfer: ``VmHWM`` after resetting it through
``/proc/PID/clear_refs`` (when the kernel allows), and the highest ``VmRSS`` sampled every
20 ms. The ratios proxy/direct say what the proxy costs over serving a local file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.backends import install
from bench.procs import HOST, BenchError, Cleanup, Process, free_port, start_server

MiB = 1024 * 1024
FILE = "bench/big.bin"
TARGETS = ("direct", "proxy", "proxy_cold", "proxy_cached")
LABELS = {"direct": "GET /download (direct)", "proxy": "proxy, no cache",
          "proxy_cold": "proxy, cache on, cold", "proxy_cached": "proxy, cached"}
NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""


@dataclass(frozen=True)
class Settings:
    size_mb: int = 1024
    rounds: int = 3


QUICK = Settings(size_mb=64, rounds=1)


def write_file(path: Path, size: int) -> str:
    """``size`` bytes (a random block repeated), and their SHA-512."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 * MiB)
    hasher = hashlib.sha512()
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[:left]
            f.write(piece)
            hasher.update(piece)
            left -= len(piece)
    return hasher.hexdigest()


def start_nginx(cleanup: Cleanup, root: Path, workdir: Path) -> str:
    """nginx serving ``root`` on a free port; its base URL."""
    program = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(program).exists():
        raise BenchError("nginx is not installed (apt-get install -y nginx)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    # as root, nginx's workers would run as nobody, who cannot enter a private temp dir
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, dir=workdir, host=HOST, port=port,
                                      root=root))
    argv = [program, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log"),
            "-g", "daemon off;"]
    proc = Process("nginx", argv, workdir / "nginx.out")
    cleanup.push(f"nginx (pid {proc.pid})", proc.stop)
    base = f"http://{HOST}:{port}"
    proc.wait_ready(f"{base}/{FILE}", timeout=30)
    return base


class MemoryWatch:
    """Peak resident memory of a process while a ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_kib = 0
        self.hwm_kib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, self._status("VmRSS"))
            self._stop.wait(0.02)

    def __enter__(self) -> MemoryWatch:
        self.before_kib = self._status("VmRSS")
        try:
            # "5" resets the peak (VmHWM) to the current resident size
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_kib = max(self.peak_rss_kib, self._status("VmRSS"))
        if self._hwm_reset:
            self.hwm_kib = self._status("VmHWM")


def curl(url: str, passkey: str, expected_size: int) -> float:
    """Download ``url`` to /dev/null; the seconds it took."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} "
            "%{time_total}", "-H", f"Authorization: Bearer {passkey}", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) != 3 or fields[0] != "200" or \
            int(fields[1]) != expected_size:
        raise BenchError(f"curl {url} failed ({proc.returncode}): {proc.stdout.strip()} "
                         f"{proc.stderr.strip()}")
    return float(fields[2])


def _proxy_url(base: str, source: str, cache: bool, kind: str = "download") -> str:
    query = {"url": source, "type": kind, **({"cache": "1"} if cache else {})}
    return f"{base}/proxy?{urllib.parse.urlencode(query)}"


def run(cleanup: Cleanup, s: Settings) -> dict[str, Any]:
    if shutil.which("curl") is None:
        raise BenchError("curl is not installed (apt-get install -y curl)")
    inst = install(cleanup, "sqlite", "files")
    size = s.size_mb * MiB
    print(f"    writing a {s.size_mb} MB file", flush=True)
    sha512 = write_file(inst.data_dir / "files" / FILE, size)
    nginx = start_nginx(cleanup, inst.data_dir / "files", inst.data_dir / "nginx")
    server, base = start_server(cleanup, inst.data_dir, {
        "ICEPROD_PROXY_ALLOW": nginx + "/bench/",
        "ICEPROD_PROXY_CACHE_MAX_BYTES": str((s.rounds + 2) * size),
        "ICEPROD_PROXY_CACHE_RESERVE_BYTES": str(1024 * MiB)}, name="iceprod-server")
    source = f"{nginx}/{FILE}"

    def url_of(target: str, r: int) -> str:
        if target == "direct":
            return f"{base}/download/{FILE}"
        if target == "proxy":
            return _proxy_url(base, source, cache=False)
        if target == "proxy_cold":
            return _proxy_url(base, f"{source}?round={r}", cache=True)
        return _proxy_url(base, f"{source}?round=0", cache=True)

    # fill the entry the cached rounds read (and check it), and warm the page cache
    curl(url_of("proxy_cold", 0), inst.pilot_key, size)
    cached_sum = subprocess.run(
        ["curl", "-sS", "-H", f"Authorization: Bearer {inst.pilot_key}",
         _proxy_url(base, f"{source}?round=0", cache=True, kind="checksum")],
        capture_output=True, text=True, timeout=60, check=False).stdout
    if json.loads(cached_sum or "{}").get("checksum") != sha512:
        raise BenchError(f"the cached file's checksum is wrong: {cached_sum[:300]}")
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for r in range(s.rounds):
        order = TARGETS[r % len(TARGETS):] + TARGETS[:r % len(TARGETS)]
        for target in order:
            print(f"    round {r + 1}/{s.rounds}: {LABELS[target]}", flush=True)
            with MemoryWatch(server.pid) as memory:
                seconds = curl(url_of(target, r + 1), inst.pilot_key, size)
            runs[target].append({
                "seconds": seconds, "mb_per_s": size / MiB / seconds,
                "rss_before_mb": memory.before_kib / 1024,
                "peak_rss_mb": memory.peak_rss_kib / 1024,
                "hwm_mb": memory.hwm_kib / 1024 if memory.hwm_kib is not None else None})
    figures = {t: _median(rs) for t, rs in runs.items()}
    direct = figures["direct"]["mb_per_s"]
    result = {
        "settings": {"size_mb": s.size_mb, "rounds": s.rounds},
        "targets": figures,
        "runs": runs,
        "ratios": {f"{t}/direct": report.ratio(figures[t]["mb_per_s"], direct)
                   for t in TARGETS if t != "direct"},
    }
    print_result(result)
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    hwm = [r["hwm_mb"] for r in runs if r["hwm_mb"] is not None]
    return {"mb_per_s": statistics.median(r["mb_per_s"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "rss_before_mb": min(r["rss_before_mb"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "hwm_mb": max(hwm) if hwm else None}


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    t = result["targets"]
    direct = t["direct"]["mb_per_s"]
    rows = [[LABELS[name], f["mb_per_s"], f["seconds"], f["rss_before_mb"],
             f["peak_rss_mb"], f["hwm_mb"],
             report.fmt_ratio(report.ratio(f["mb_per_s"], direct))]
            for name, f in t.items()]
    print()
    print(report.table(
        f"file proxy vs direct download: a {st['size_mb']} MB file with curl, "
        f"{st['rounds']} round(s) per target (median MB/s; memory of the server process)",
        ["target", "MB/s", "seconds", "RSS before MB", "peak RSS MB", "VmHWM MB",
         "ratio to direct"], rows))
    print()


def main() -> None:
    """``python -m bench.files [--quick]``: this benchmark alone."""
    import sys

    from bench.procs import interrupt_on_sigterm

    interrupt_on_sigterm()
    with Cleanup() as cleanup:
        run(cleanup, QUICK if "--quick" in sys.argv[1:] else Settings())


if __name__ == "__main__":
    main()
