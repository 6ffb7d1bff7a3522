"""Benchmark: GridFTP throughput of the two client backends, ``library`` and ``url-copy``.

One ``globus-gridftp-server`` per scheme on loopback (anonymous ``ftp://``, and
``gsiftp://`` with throwaway certificates), and one file of random bytes (1 GiB; 64 MiB
with ``--quick``). Each backend, in the same run, does three things with that file:

- ``put``: upload it from a local file;
- ``get``: download it to a local file;
- ``stream``: download it to a callback that only counts the bytes (the file proxy's way).

The operations are timed in rounds, both backends back to back, the first one alternating
between rounds, and each figure is the median of its rounds, so that load from other users
of the machine does not fall on one backend only. A ratio library/url-copy above 1 means
the library is faster. Every transfer is checked: sizes each time, the bytes themselves once.

Run it alone with ``python -m bench.gridftp [--quick]``; the servers are started with the
helpers of the test suite (:mod:`tests.support.gridftp` and :mod:`tests.support.gsi_ca`).
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import BenchError, Cleanup, interrupt_on_sigterm, temp_dir
from iceprod_server.gsiftp import BACKENDS, GridFTPClient, GridFTPError, make_client
from tests.support import gridftp, gsi_ca

MiB = 1024 * 1024
MB = 1_000_000
OPERATIONS = ("put", "get", "stream")
SCHEMES = ("ftp", "gsiftp")


@dataclass(frozen=True)
class Settings:
    size_mib: int = 1024
    rounds: int = 4  # even: each backend goes first as often as the other
    schemes: tuple[str, ...] = SCHEMES
    timeout: float = 1800.0


QUICK = Settings(size_mib=64, rounds=2)


@dataclass
class _Files:
    source: Path  # the local file that is uploaded
    remote: Path  # where the server keeps it (the same machine)
    download: Path  # where get writes


def _write_source(path: Path, size: int) -> None:
    block = random.Random(1).randbytes(MiB)
    with path.open("wb") as f:
        for offset in range(0, size, MiB):
            f.write((offset.to_bytes(8, "big") + block[8:])[:size - offset])


async def _timed_operation(client: GridFTPClient, operation: str, url: str,
                           files: _Files) -> float:
    """Seconds for one operation, after checking that it moved the whole file."""
    size = files.source.stat().st_size
    started = time.perf_counter()
    if operation == "put":
        sent = await client.put(url, path=files.source)
        took = time.perf_counter() - started
        moved = files.remote.stat().st_size
        if sent != size:
            raise BenchError(f"put reported {sent} bytes of {size}")
    elif operation == "get":
        await client.get(url, path=files.download)
        took = time.perf_counter() - started
        moved = files.download.stat().st_size
        files.download.unlink()
    else:
        counted = 0

        def count(chunk: bytes) -> None:
            nonlocal counted
            counted += len(chunk)

        await client.get(url, callback=count)
        took = time.perf_counter() - started
        moved = counted
    if moved != size:
        raise BenchError(f"{operation} moved {moved} bytes of {size}")
    return took


async def _verify(client: GridFTPClient, url: str, files: _Files) -> None:
    """The bytes themselves, once per backend: uploaded, then downloaded again."""
    await client.put(url, path=files.source)
    if not filecmp.cmp(files.source, files.remote, shallow=False):
        raise BenchError(f"{url}: the uploaded file differs from the original")
    await client.get(url, path=files.download)
    same = filecmp.cmp(files.source, files.download, shallow=False)
    files.download.unlink()
    if not same:
        raise BenchError(f"{url}: the downloaded file differs from the original")


async def _measure(server: gridftp.GridFTPServer, files: _Files,
                   s: Settings) -> dict[str, dict[str, list[float]]]:
    url = server.url(files.remote)
    clients = {backend: make_client(backend, timeout=s.timeout) for backend in BACKENDS}
    seconds: dict[str, dict[str, list[float]]] = {
        b: {op: [] for op in OPERATIONS} for b in BACKENDS}
    try:
        for client in clients.values():
            await _verify(client, url, files)
        for r in range(s.rounds):
            # each operation by both backends back to back, the first one alternating by
            # round: what ran just before matters (a get to a file writes fast into memory
            # that the previous get's deleted file freed, slowly into memory this virtual
            # machine gave back to its host), so each backend gets each position equally
            order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]
            pairs = [(b, op) for op in OPERATIONS for b in order]
            for backend, operation in pairs:
                print(f"    {server.scheme} round {r + 1}/{s.rounds}: {backend} {operation}",
                      flush=True)
                took = await _timed_operation(clients[backend], operation, url, files)
                seconds[backend][operation].append(took)
    except GridFTPError as e:
        raise BenchError(f"GridFTP failed: {type(e).__name__}: {e}") from e
    finally:
        for client in clients.values():
            await client.close()
    return seconds


def _credentials(cleanup: Cleanup) -> gsi_ca.GSICredentials:
    """Throwaway certificates, checked, and the test user's put into this process's
    environment, where both backends look for them."""
    directory = Path(tempfile.mkdtemp(prefix="iceprod-bench-gsi-"))
    cleanup.push(f"directory {directory}", lambda: shutil.rmtree(directory, True))
    directory.chmod(0o755)  # the server checks certificates as user nobody
    try:
        creds = gsi_ca.make_credentials(directory / "credentials")
    except gridftp.GridFTPSetupError as e:
        raise BenchError(f"cannot make certificates for gsiftp: {e}") from e
    problem = gsi_ca.check_gsi(creds, directory / "check")
    if problem is not None:
        raise BenchError(f"gsiftp does not work with throwaway certificates: {problem}")
    for name in gridftp.X509_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(creds.client_env())
    return creds


def run(cleanup: Cleanup, s: Settings) -> dict[str, Any]:
    if shutil.which(gridftp.SERVER_PROGRAM) is None:
        raise BenchError(f"{gridftp.SERVER_PROGRAM} is not installed "
                         "(apt-get install -y globus-gridftp-server-progs)")
    size = s.size_mib * MiB
    local = temp_dir(cleanup, "gridftp")
    served = temp_dir(cleanup, "gridftp-served")
    served.chmod(0o777)  # the server works as user nobody
    files = _Files(local / "source.bin", served / "remote.bin", local / "download.bin")
    print(f"    writing a file of {s.size_mib} MiB", flush=True)
    _write_source(files.source, size)
    figures: dict[str, Any] = {}
    for scheme in s.schemes:
        creds = _credentials(cleanup) if scheme == "gsiftp" else None
        try:
            server = gridftp.start_server(local / "logs", creds)
        except gridftp.GridFTPSetupError as e:
            raise BenchError(str(e)) from e
        cleanup.push(f"{gridftp.SERVER_PROGRAM} on port {server.port}", server.stop)
        seconds = asyncio.run(_measure(server, files, s))
        server.stop()
        rates = {b: {op: size / MB / statistics.median(seconds[b][op]) for op in OPERATIONS}
                 for b in BACKENDS}
        figures[scheme] = {
            "mb_per_s": rates,
            "seconds": seconds,
            "ratios": {f"{op}_library/url-copy": report.ratio(rates["library"][op],
                                                              rates["url-copy"][op])
                       for op in OPERATIONS},
        }
    result = {"settings": {"size_mib": s.size_mib, "rounds": s.rounds,
                           "schemes": list(s.schemes)},
              "schemes": figures}
    print_result(result)
    return result


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    labels = {"put": "put from a file", "get": "get to a file",
              "stream": "get to a callback"}
    for scheme, f in result["schemes"].items():
        rows = [[labels[op], f["mb_per_s"]["library"][op], f["mb_per_s"]["url-copy"][op],
                 report.fmt_ratio(f["ratios"][f"{op}_library/url-copy"])]
                for op in OPERATIONS]
        print()
        print(report.table(
            f"GridFTP {scheme}://, one file of {st['size_mib']} MiB on loopback, "
            f"{st['rounds']} round(s) (median MB/s)",
            ["operation", "library MB/s", "url-copy MB/s", "library / url-copy"], rows))
    print()


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per scheme for the summary of ``python -m bench``."""
    return [f"  gridftp {scheme}, library / url-copy MB/s: " + ", ".join(
        f"{op} {report.fmt_ratio(f['ratios'][f'{op}_library/url-copy'])}"
        for op in OPERATIONS) for scheme, f in result["schemes"].items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gridftp",
        description="GridFTP throughput of the library and url-copy backends against a "
                    "local globus-gridftp-server, with ratios library/url-copy.")
    parser.add_argument("--quick", action="store_true", help="64 MiB, one round")
    parser.add_argument("--size-mib", type=int, help="the file's size (default 1024)")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 4; keep it even)")
    parser.add_argument("--schemes", default=",".join(SCHEMES),
                        help="comma-separated: ftp,gsiftp (default both)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()
    schemes = tuple(x.strip() for x in args.schemes.split(",") if x.strip())
    if not schemes or set(schemes) - set(SCHEMES):
        parser.error(f"--schemes takes ftp and/or gsiftp, not {args.schemes!r}")
    s = Settings(size_mib=args.size_mib or s.size_mib, rounds=args.rounds or s.rounds,
                 schemes=schemes)
    interrupt_on_sigterm()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "quick": args.quick, "machine": report.machine(),
                               "benchmarks": {}}
    try:
        with Cleanup() as cleanup:
            results["benchmarks"]["gridftp"] = run(cleanup, s)
    except KeyboardInterrupt:
        print("\ninterrupted: every server started was stopped", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(results["benchmarks"]["gridftp"])))
    print(f"figures saved to {report.write_results(report.clean_nan(results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
