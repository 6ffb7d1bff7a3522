"""``--log-format json``: one JSON object per line; each request's lines carry the id that
its answer returns in ``X-Request-Id``; an id from nginx is kept, one from anyone else is
replaced; secrets never appear."""

from __future__ import annotations

import json
from typing import Any

from tests.support.datasets import wait_until
from tests.support.http import fetch


def echo(srv: Any, key: str | None = None, headers: dict[str, str] | None = None) -> Any:
    return fetch(srv.port, "POST", "/jsonrpc", key=key, headers=headers,
                 body=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo",
                                  "params": {"value": "hi"}}).encode())


def json_lines(srv: Any) -> list[dict[str, Any]]:
    lines = [line for line in srv.log_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
    return parsed


def test_json_lines_with_request_ids(server: Any, sqlite_url: str) -> None:
    srv = server(sqlite_url, env={"ICEPROD_LOG_FORMAT": "json"})
    key = srv.deployment.passkey("pilot")
    reply = echo(srv, key=key)
    assert reply.status == 200 and reply.json()["result"] == "hi"
    request_id = reply.headers["X-Request-Id"]
    assert request_id

    def access_line() -> dict[str, Any] | None:
        return next((line for line in json_lines(srv) if line.get("logger") ==
                     "iceprod_server.access" and line.get("request_id") == request_id), None)

    line = wait_until("the access line of the call", access_line, timeout=10)
    assert {"time", "level", "logger", "message"} <= set(line)
    assert (line["method"], line["path"], line["status"], line["role"]) == \
        ("POST", "/jsonrpc", 200, "pilot")
    assert isinstance(line["ms"], float)
    assert all({"time", "level", "logger", "message"} <= set(x) for x in json_lines(srv))
    assert key not in srv.log_text()

    # an X-Request-Id from a client that is not the trusted proxy is not believed
    other = echo(srv, headers={"X-Request-Id": "forged-id"})
    assert other.headers["X-Request-Id"] != "forged-id"


def test_request_id_from_the_trusted_proxy_is_kept(server: Any, sqlite_url: str) -> None:
    srv = server(sqlite_url, env={"ICEPROD_TRUSTED_PROXY": "127.0.0.1"})
    reply = echo(srv, headers={"X-Request-Id": "nginx-0f3a9c"})
    assert reply.headers["X-Request-Id"] == "nginx-0f3a9c"
    wait_until("the id in the text log", lambda: "[request nginx-0f3a9c]" in srv.log_text(),
               timeout=10)
    # an id that could break a log line is replaced
    odd = echo(srv, headers={"X-Request-Id": "a b\tc"})
    assert odd.headers["X-Request-Id"] != "a b\tc"
