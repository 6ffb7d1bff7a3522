"""The access rules per directory of the files directory, for downloads and uploads alike:
passkeys by role, anonymous callers, a symlink into a stricter directory, and a login
session with its XSRF token.

The rules are tests.support.files.ACCESS: any passkey by default, ``public/`` for anyone,
``outputs/`` for pilots and admins only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.files import ACCESS, Files, serving_files
from tests.support.http import BrowserSession


@pytest.fixture(scope="module")
def files(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    with serving_files(module_server, tmp_path_factory.mktemp("db"),
                       {"ICEPROD_FILES_ACCESS": ACCESS}) as served:
        yield served


@pytest.mark.parametrize(("who", "path", "expected"), [
    (None, "plain/a.txt", 401),
    ("pilot", "plain/a.txt", 200),
    ("user", "plain/a.txt", 200),
    (None, "public/a.txt", 200),
    ("user", "public/a.txt", 200),
    (None, "outputs/a.txt", 401),
    ("user", "outputs/a.txt", 403),
    ("pilot", "outputs/a.txt", 200),
    ("admin", "outputs/sub/a.txt", 200),
    ("user", "outputs/sub/a.txt", 403),
    ("bad", "plain/a.txt", 401),
    ("bad", "public/a.txt", 401),
])
def test_access_rules_per_directory(files: Files, who: str | None, path: str,
                                    expected: int) -> None:
    files.keys.setdefault("bad", "not-a-passkey")
    files.put_file(path, b"content")
    reply = files.get("/download/" + path, who=who)
    assert reply.status == expected, (who, path, reply.body)
    if expected == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    target = f"{path}.{who}.up"
    upload = files.upload(target, b"up", who=who)
    assert upload.status == (201 if expected == 200 else expected), (who, path, upload.body)
    assert (files.root / target).exists() == (expected == 200)


def test_a_symlink_does_not_open_a_stricter_directory(files: Files) -> None:
    files.put_file("outputs/secret.txt", b"secret")
    link = files.root / "public" / "secret-link.txt"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to("../outputs/secret.txt")
    assert files.get("/download/public/secret-link.txt", who=None).status == 401
    assert files.get("/download/public/secret-link.txt", who="user").status == 403
    assert files.get("/download/public/secret-link.txt", who="pilot").body == b"secret"


def test_a_login_session_downloads_and_uploads_with_its_xsrf_token(files: Files) -> None:
    files.srv.deployment.add_user("alice")
    browser = BrowserSession(files.port, "alice")
    files.put_file("session/a.txt", b"for alice")
    assert browser.request("GET", "/download/session/a.txt").body == b"for alice"

    refused = browser.request("PUT", "/upload/session/b.txt", b"data")
    assert refused.status == 403
    assert not (files.root / "session/b.txt").exists()
    stored = browser.request("PUT", "/upload/session/b.txt", b"data",
                             {"X-XSRFToken": browser.cookies["_xsrf"]})
    assert stored.status == 201, stored.body
    assert (files.root / "session/b.txt").read_bytes() == b"data"
    assert browser.request("PUT", "/upload/outputs/c.txt", b"data",
                           {"X-XSRFToken": browser.cookies["_xsrf"]}).status == 403

