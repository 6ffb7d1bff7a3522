"""The web side's defences, at the HTTP level (no browser), on SQLite and on MariaDB:

- XSRF: a logged-in browser session's POST /jsonrpc needs the X-XSRFToken header; a passkey
  caller does not;
- a user cannot act on another user's dataset, from a login session or with a passkey, and a
  refused call changes nothing;
- user content (a dataset description, a log) is escaped on every page that shows it;
- login attempts are rate limited, across server processes too; a login made through one
  process is valid on another; the session cookie is HttpOnly, /logout ends the session;
- with public_read off, pages redirect to /login and public methods need a key.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from iceprod_server.client import IceProdClient
from tests.support.databases import throwaway_database
from tests.support.datasets import claim_one, config, wait_until
from tests.support.jsonrpc import expect_error
from tests.support.servers import PASSWORD, ServerProcess

PAYLOAD = "<script>window.__pwned=1</script><img src=x onerror=alert(1)>"
LOG_PAYLOAD = "<script>window.__pwned=2</script><img src=y onerror=alert(2)>"
RAW_MARKUP = re.compile(r"<script>window\.__pwned|<img src=[xy] onerror")
FORBIDDEN = -32002
NOT_AUTHENTICATED = -32001


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_cookies(self) -> dict[str, str]:
        """Each Set-Cookie of the reply, by cookie name: the whole header value."""
        out = {}
        for k, v in self.headers:
            if k.lower() == "set-cookie":
                out[v.split("=", 1)[0].strip()] = v
        return out

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Browserless:
    """What a browser does with cookies, by hand: enough to log in and call /jsonrpc as a
    page does (session cookie, XSRF cookie and header)."""

    url: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Reply:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body or None, headers=all_headers)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()
        for name, header in reply.set_cookies().items():
            value = header.split(";", 1)[0].split("=", 1)[1].strip().strip('"')
            expired = re.search(r"expires=[^;]*19[0-9]{2}", header, re.I) or \
                re.search(r"max-age=0\b", header, re.I)
            if value and not expired:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path, headers={"Accept": "text/html"})

    def post_form(self, path: str, fields: dict[str, str]) -> Reply:
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded",
                             "Accept": "text/html"})

    def login(self, username: str, password: str = PASSWORD) -> Reply:
        return self.post_form("/login", {"username": username, "password": password})

    def xsrf(self) -> str:
        """The XSRF token a page carries; loading a page sets the cookie it matches."""
        if "_xsrf" not in self.cookies:
            self.get("/login")
        return self.cookies["_xsrf"]

    def whoami(self) -> str | None:
        """The user name this browser is logged in as, as /jsonrpc sees it."""
        status, answer = self.rpc("whoami")
        assert status == 200 and answer and "result" in answer, (status, answer)
        username: str | None = answer["result"]["username"]
        return username

    def rpc(self, method: str, params: dict[str, Any] | None = None,
            token: str | None = "auto") -> tuple[int, dict[str, Any] | None]:
        """POST /jsonrpc as a page does; ``token`` None sends no X-XSRFToken header."""
        headers = {"Content-Type": "application/json"}
        if token == "auto":
            token = self.xsrf()
        if token is not None:
            headers["X-XSRFToken"] = token
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {},
                           "id": 1}).encode()
        reply = self.request("POST", "/jsonrpc", body, headers)
        return reply.status, (json.loads(reply.body) if reply.status == 200 else None)


@dataclass
class Web:
    srv: ServerProcess
    keys: dict[str, str]
    pilot_key: str

    def client(self, who: str | None = None) -> IceProdClient:
        return self.srv.client(self.keys[who] if who else None, retries=0)

    def session(self, who: str | None = None) -> Browserless:
        browser = Browserless(self.srv.url)
        if who:
            reply = browser.login(who)
            assert reply.status == 302, f"login as {who}: HTTP {reply.status} {reply.text[:300]}"
        return browser

    def submit(self, owner: str, njobs: int = 2, description: str = "web security") -> str:
        dataset_id: str = self.client(owner).call("submit_dataset", config=config(),
                                                  njobs=njobs, description=description)
        return dataset_id

    def snapshot(self, dataset_id: str) -> dict[str, Any]:
        """What a refused call must leave as it was."""
        public = self.client()
        info = public.call("public_get_dataset", dataset_id=dataset_id)
        counts: dict[str, int] = {}
        for state, n in public.call("public_get_number_of_tasks_in_each_state",
                                    dataset_id=dataset_id).items():
            # the scheduler moves tasks from idle to waiting and queued on its own
            key = "not started" if state in ("idle", "waiting", "queued") else state
            counts[key] = counts.get(key, 0) + n
        return {
            "dataset": {k: info[k] for k in ("status", "priority", "njobs", "description")},
            "config": public.call("public_get_dataset_config", dataset_id=dataset_id),
            "counts": counts,
            "audit": len(self.client("admin1").call("list_audit_log", limit=1000)["items"]),
        }


def start_web(module_server: Any, url: str, env: dict[str, str] | None = None) -> Web:
    srv: ServerProcess = module_server(url, env=env)
    keys = {"admin1": srv.deployment.passkey("admin", "admin1")}
    admin = srv.client(keys["admin1"])
    for name in ("alice", "bob", "carol"):
        admin.call("create_user", username=name, password=PASSWORD, role="user")
        keys[name] = admin.call("issue_passkey", role="user", username=name)["passkey"]
    pilot_key = admin.call("issue_passkey", role="pilot")["passkey"]
    return Web(srv, keys, pilot_key)


LIMITED = {"ICEPROD_LOGIN_ATTEMPTS_PER_MINUTE": "3"}


@pytest.fixture(scope="module")
def web(module_server: Any, module_db_url: str) -> Web:
    return start_web(module_server, module_db_url, LIMITED)


def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "mariadb"


# -- XSRF ----------------------------------------------------------------------------------

def test_a_session_needs_the_xsrf_header_and_a_passkey_does_not(web: Web) -> None:
    dataset_id = web.submit("alice")
    alice = web.session("alice")
    assert alice.whoami() == "alice"
    before = web.snapshot(dataset_id)

    status, answer = alice.rpc("suspend_dataset", {"dataset_id": dataset_id}, token=None)
    assert status == 403, f"no X-XSRFToken header: expected HTTP 403, got {status} {answer}"
    status, answer = alice.rpc("suspend_dataset", {"dataset_id": dataset_id},
                               token="2|00000000|" + "0" * 32 + "|1700000000")
    assert status == 403, f"a wrong X-XSRFToken: expected HTTP 403, got {status} {answer}"
    assert web.snapshot(dataset_id) == before, "a refused call changed something"

    status, answer = alice.rpc("suspend_dataset", {"dataset_id": dataset_id})
    assert status == 200 and answer and "result" in answer, (status, answer)
    assert answer["result"]["status"] == "suspended", answer

    # a passkey caller sends no cookie and no token
    result = web.client("alice").call("resume_dataset", dataset_id=dataset_id)
    assert result["status"] == "processing", result


def test_the_xsrf_cookie_of_one_session_does_not_serve_another(web: Web) -> None:
    dataset_id = web.submit("alice")
    alice, other = web.session("alice"), web.session()
    foreign = other.xsrf()
    before = web.snapshot(dataset_id)
    alice.xsrf()
    status, _ = alice.rpc("suspend_dataset", {"dataset_id": dataset_id}, token=foreign)
    assert status == 403, f"another browser's token was accepted (HTTP {status})"
    assert web.snapshot(dataset_id) == before


# -- another user's dataset ----------------------------------------------------------------

def test_a_user_cannot_act_on_another_users_dataset(web: Web) -> None:
    dataset_id = web.submit("alice", njobs=3)
    public = web.client()
    wait_until("alice's tasks to exist", lambda: public.call(
        "public_get_tasks", dataset_id=dataset_id)["items"], timeout=15)
    task_ids = [t["task_id"] for t in public.call("public_get_tasks",
                                                  dataset_id=dataset_id)["items"]]
    job_ids = [j["job_id"] for j in public.call("public_get_jobs",
                                                dataset_id=dataset_id)["items"]]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("suspend_dataset", {"dataset_id": dataset_id}),
        ("resume_dataset", {"dataset_id": dataset_id}),
        ("reset_dataset", {"dataset_id": dataset_id}),
        ("hard_reset_dataset", {"dataset_id": dataset_id}),
        ("truncate_dataset", {"dataset_id": dataset_id}),
        ("set_dataset_priority", {"dataset_id": dataset_id, "priority": 99}),
        ("update_dataset_config", {"dataset_id": dataset_id, "config": config(),
                                   "description": "bob was here"}),
        ("reset_tasks", {"task_ids": task_ids}),
        ("suspend_tasks", {"task_ids": task_ids}),
        ("resume_tasks", {"task_ids": task_ids}),
        ("reset_tasks", {"dataset_id": dataset_id}),
        ("suspend_tasks", {"dataset_id": dataset_id, "status": "queued"}),
        ("reset_jobs", {"job_ids": job_ids}),
        ("hard_reset_jobs", {"job_ids": job_ids}),
        ("suspend_jobs", {"dataset_id": dataset_id}),
    ]
    before = web.snapshot(dataset_id)
    bob_key, bob_session = web.client("bob"), web.session("bob")
    for method, params in calls:
        expect_error(FORBIDDEN, bob_key.call, method, **params)
        status, answer = bob_session.rpc(method, params)
        assert status == 200 and answer, (method, status)
        assert answer.get("error", {}).get("code") == FORBIDDEN, \
            f"{method} from bob's login session: {answer}"
    assert web.snapshot(dataset_id) == before, "a refused call changed something"

    # the pages offer bob nothing to press
    page = bob_session.get(f"/dataset/{dataset_id}")
    assert page.status == 200, page.status
    assert not re.search(r"""id=["']?action-""", page.text), \
        "bob's view of alice's dataset has action buttons"
    task_page = bob_session.get(f"/task/{task_ids[0]}")
    assert task_page.status == 200, task_page.status
    assert not re.search(r"""id=["']?action-""", task_page.text), \
        "bob's view of alice's task has action buttons"
    # while alice's does
    alice_page = web.session("alice").get(f"/dataset/{dataset_id}")
    assert re.search(r"""id=["']?action-suspend""", alice_page.text), \
        "alice's own dataset page should offer her the actions"


# -- escaping ------------------------------------------------------------------------------

def test_every_page_escapes_user_content(web: Web) -> None:
    cfg = config(description=PAYLOAD)
    dataset_id: str = web.client("alice").call("submit_dataset", config=cfg, njobs=2,
                                               description=PAYLOAD)
    pilot = web.srv.client(web.pilot_key, pilot_ref="escaping")
    task_id = claim_one(pilot)["options"]["task_id"]
    pilot.call("upload_logfile", task=task_id, name="stdout", data=f"before\n{LOG_PAYLOAD}\n")
    pilot.call("finish_task", task_id=task_id, stats={})
    job_id = web.client().call("public_get_task", task_id=task_id)["job_id"]

    shows = {"/dataset": PAYLOAD, f"/dataset/{dataset_id}": PAYLOAD, "/": None,
             f"/dataset/{dataset_id}/tasks": None, f"/dataset/{dataset_id}/jobs": None,
             f"/job/{job_id}": None, f"/task/{task_id}": LOG_PAYLOAD,
             f"/log/{task_id}/stdout": LOG_PAYLOAD}
    problems = []
    for who in (None, "alice", "admin1"):
        browser = web.session(who)
        for path, expected in shows.items():
            reply = browser.get(path)
            if reply.status != 200:
                problems.append(f"{path} as {who}: HTTP {reply.status}")
                continue
            if "html" not in (reply.header("Content-Type") or ""):
                # served as text (a log): shown as it is, never interpreted
                if expected and expected not in reply.text:
                    problems.append(f"{path} as {who}: the log text is missing")
                continue
            if RAW_MARKUP.search(reply.text):
                problems.append(f"{path} as {who}: the raw markup is in the page")
            if expected and html.escape(expected, quote=False) not in _quotes_plain(reply.text):
                problems.append(f"{path} as {who}: {expected!r} is not shown escaped")
    assert not problems, "\n".join(problems)


def _quotes_plain(text: str) -> str:
    """Quotes written as entities (``&#39;``, ``&quot;``...) back to plain quotes, so the
    escaped payload compares equal however the page chose to escape them."""
    text = re.sub(r"&#(x27|39);", "'", text)
    return re.sub(r"&(quot|#34|#x22);", '"', text)


# -- login ---------------------------------------------------------------------------------

def test_login_attempts_are_limited(web: Web) -> None:
    browser = web.session()
    for attempt in range(3):
        reply = browser.login("carol", "wrong password")
        assert reply.status == 401, f"failed attempt {attempt + 1}: HTTP {reply.status}"
        assert "Wrong user name or password" in reply.text
    reply = browser.login("carol", "wrong password")
    assert reply.status == 429, f"the 4th failed attempt in a minute: HTTP {reply.status}"
    reply = browser.login("carol")
    assert reply.status == 429, "past the limit even the right password waits"
    assert "Too many failed attempts" in reply.text
    assert "iceprod_session" not in browser.cookies


def test_login_limit_and_sessions_hold_across_processes(web: Web, module_server: Any) -> None:
    """Two processes on one database share the failed-attempt count and the logins."""
    second = module_server.another(web.srv, env=LIMITED)
    first_browser, second_browser = Browserless(web.srv.url), Browserless(second.url)
    for attempt, browser in enumerate((first_browser, second_browser, first_browser)):
        reply = browser.login("dave", "wrong password")
        assert reply.status == 401, f"failed attempt {attempt + 1}: HTTP {reply.status}"
    for browser in (second_browser, first_browser):
        reply = browser.login("dave", "wrong password")
        assert reply.status == 429, \
            f"the 4th failed attempt, made on either process: HTTP {reply.status}"

    # a login made through one process is a login on the other (one cookie secret)
    assert first_browser.login("alice").status == 302
    on_second = Browserless(second.url, dict(first_browser.cookies))
    assert on_second.whoami() == "alice"
    status, answer = on_second.rpc("suspend_dataset", {"dataset_id": web.submit("alice")})
    assert status == 200 and answer and answer["result"]["status"] == "suspended", answer


def test_parallel_wrong_passwords_are_checked_at_most_the_limit(
        web: Web, module_server: Any) -> None:
    """40 wrong passwords for one user from one address, sent at once, half of them to each
    of two processes on one database: at most the limit (3) are checked (401), the rest
    are refused unchecked (429)."""
    second = module_server.another(web.srv, env=LIMITED)
    web.client("admin1").call("create_user", username="frank", password=PASSWORD,
                              role="user")
    urls = [web.srv.url, second.url] * 20
    start = threading.Barrier(len(urls))

    def attempt(url: str) -> int:
        browser = Browserless(url)
        start.wait(30)
        return browser.login("frank", "wrong password").status

    with ThreadPoolExecutor(len(urls)) as pool:
        statuses = list(pool.map(attempt, urls))
    assert set(statuses) <= {401, 429}, statuses
    checked = statuses.count(401)
    assert checked <= 3, f"{checked} of 40 wrong passwords sent at once were checked " \
        "(the limit is 3 a minute)"


@pytest.mark.parametrize("target", ["/\\evil.example", "/\\/evil.example",
                                    "/\\\\evil.example/path"])
def test_login_returns_only_to_this_server(web: Web, target: str) -> None:
    """Browsers read a backslash in a Location as a slash: ``/\\evil.example`` would go
    to another site. The login form and the redirect after logging in fall back to /."""
    browser = Browserless(web.srv.url)
    page = browser.get("/login?" + urlencode({"next": target}))
    assert page.status == 200, page.status
    hidden = re.search(r'name="next" value="([^"]*)"', page.text)
    assert hidden and html.unescape(hidden.group(1)) == "/", hidden and hidden.group(0)
    reply = browser.post_form("/login", {"username": "alice", "password": PASSWORD,
                                         "next": target})
    assert reply.status == 302, reply.status
    assert reply.header("Location") == "/", reply.header("Location")
    # a path on this server is still where the login returns to
    reply = Browserless(web.srv.url).post_form(
        "/login", {"username": "alice", "password": PASSWORD, "next": "/dataset?x=1"})
    assert reply.status == 302 and reply.header("Location") == "/dataset?x=1", \
        reply.header("Location")


def test_the_session_cookie_is_httponly_and_logout_ends_the_session(web: Web) -> None:
    browser = Browserless(web.srv.url)
    reply = browser.login("alice")
    assert reply.status == 302, reply.status
    cookie = reply.set_cookies().get("iceprod_session")
    assert cookie, f"no session cookie: {reply.headers}"
    flags = {part.strip().split("=", 1)[0].lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags, f"the session cookie must be HttpOnly: {cookie}"
    assert "samesite" in flags, f"the session cookie should say SameSite: {cookie}"
    assert browser.whoami() == "alice"

    reply = browser.get("/logout")
    assert reply.status in (302, 303), reply.status
    assert "iceprod_session" not in browser.cookies, "logout should clear the session cookie"
    assert browser.whoami() is None, "still logged in after /logout"
    assert "Log in" in browser.get("/").text


def test_a_logged_out_session_cookie_no_longer_works(web: Web) -> None:
    browser = web.session("bob")
    copied = browser.cookies["iceprod_session"]
    assert browser.get("/logout").status in (302, 303)
    # the cookie of the ended session, sent again (as someone who copied it from a shared
    # machine or a log would), must not be a login any more
    replay = Browserless(web.srv.url, {"iceprod_session": copied})
    assert replay.whoami() is None, \
        "a session cookie still logs in after its session was logged out"


# -- public_read off -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_web(module_server: Any, module_db_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    with throwaway_database(backend(module_db_url), tmp_path_factory.mktemp("db")) as url:
        yield start_web(module_server, url, {"ICEPROD_PUBLIC_READ": "0"})


def test_without_public_read_pages_and_reads_need_a_login(private_web: Web) -> None:
    web = private_web
    dataset_id = web.submit("alice")
    alice_key = web.client("alice")
    wait_until("a task to exist", lambda: alice_key.call(
        "public_get_tasks", dataset_id=dataset_id)["items"], timeout=15)
    task = alice_key.call("public_get_tasks", dataset_id=dataset_id)["items"][0]
    pages = ["/", "/dataset", f"/dataset/{dataset_id}", f"/dataset/{dataset_id}/jobs",
             f"/dataset/{dataset_id}/tasks", f"/job/{task['job_id']}",
             f"/task/{task['task_id']}", f"/log/{task['task_id']}/stdout"]
    anonymous, alice = web.session(), web.session("alice")
    for path in pages:
        reply = anonymous.get(path)
        location = reply.header("Location") or ""
        assert reply.status in (302, 303) and location.startswith("/login"), \
            f"{path} without a login: HTTP {reply.status} Location {location!r}"
        assert "next=" in location, location
        reply = alice.get(path)
        # the task has run nothing yet: its log page may say there is no log (404)
        expected = (200, 404) if path.startswith("/log/") else (200,)
        assert reply.status in expected, f"{path} for alice: HTTP {reply.status}"
    assert anonymous.get("/login").status == 200

    expect_error(NOT_AUTHENTICATED, web.client().call, "public_get_datasets")
    expect_error(NOT_AUTHENTICATED, web.client().call, "public_get_dataset",
                 dataset_id=dataset_id)
    status, answer = anonymous.rpc("public_get_dataset", {"dataset_id": dataset_id})
    assert answer and answer["error"]["code"] == NOT_AUTHENTICATED, (status, answer)
    assert alice_key.call("public_get_dataset", dataset_id=dataset_id)["owner"] == "alice"
    status, answer = alice.rpc("public_get_dataset", {"dataset_id": dataset_id})
    assert answer and answer["result"]["owner"] == "alice", (status, answer)
