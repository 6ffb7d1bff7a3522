"""The authorization matrix: every method of the registry, called by every kind of caller.

Who may call what is written down here, in ``EXPECTED_ROLES``, one line per method, reviewed
by hand; the server's own ``rpc.discover`` only supplies parameter schemas, and a test fails
when the server has a method this table lacks or declares roles that differ from it. Each
method is called with plausible params built from its parameter schemas, so an allowed
caller gets a result or a domain error, never -32001/-32002:

- no key: -32001 unless the method is public (``public_read`` is on) or open to anyone;
- an expired or a revoked key: -32001 for every method, public ones and unknown ones too;
- a pilot, user, admin or site credential: -32002 when its role is not allowed; a site
  calls with its key as ``Authorization: Bearer`` (as ``join`` and the link do) and with
  the legacy ``site_id`` + ``passkey`` params, and both get the same answers;
- a user acting on another user's dataset: -32002 for every dataset, job and task action.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy

from tests.support import databases, jsonrpc
from tests.support.datasets import config, submit, task, wait_until
from tests.support.servers import ServerProcess

AUTH_ERRORS = (-32001, -32002)
# errors that mean the server did not even try: a bug whoever the caller is
NEVER = (-32601, -32603)
# the params that name what a dataset, job or task action acts on
TARGETS = ("dataset_id", "task_ids", "job_ids")

# Who may call each method. "public": anyone while public_read is on (any key always);
# "anyone": always, anonymous included. Admins may do everything. Edit by hand, one line
# per method, when a method is added or its roles change on purpose.
EXPECTED_ROLES: dict[str, set[str]] = {
    "create_group": {"admin"},
    "create_user": {"admin"},
    "disable_user": {"admin"},
    "echo": {"anyone"},
    "finish_task": {"admin", "pilot"},
    "get_groups": {"admin"},
    "get_user_roles": {"admin"},
    "hard_reset_dataset": {"admin", "user"},
    "hard_reset_jobs": {"admin", "user"},
    "issue_passkey": {"admin"},
    "list_audit_log": {"admin"},
    "list_groups": {"admin"},
    "list_passkeys": {"admin"},
    "list_sites": {"admin"},
    "list_users": {"admin"},
    "master_get_tables": {"site"},
    "master_update": {"site"},
    "new_task": {"admin", "pilot"},
    "public_get_all_config": {"public"},
    "public_get_all_dataset_completion": {"public"},
    "public_get_config": {"public"},
    "public_get_cpu_gpu_usage": {"public"},
    "public_get_dataset": {"public"},
    "public_get_dataset_completion": {"public"},
    "public_get_dataset_config": {"public"},
    "public_get_dataset_description": {"public"},
    "public_get_dataset_steering": {"public"},
    "public_get_datasets": {"public"},
    "public_get_datasets_by_status": {"public"},
    "public_get_graphs": {"public"},
    "public_get_job": {"public"},
    "public_get_jobs": {"public"},
    "public_get_number_of_tasks_by_name": {"public"},
    "public_get_number_of_tasks_in_each_state": {"public"},
    "public_get_site_id": {"public"},
    "public_get_task": {"public"},
    "public_get_task_ids": {"public"},
    "public_get_task_stats": {"public"},
    "public_get_task_walltime": {"public"},
    "public_get_tasks": {"public"},
    "public_get_tasks_by_name": {"public"},
    "public_get_tasks_by_requirements": {"public"},
    "public_get_throughput": {"public"},
    "queue_master": {"site"},
    "register_site": {"admin"},
    "reset_dataset": {"admin", "user"},
    "reset_jobs": {"admin", "user"},
    "reset_task": {"admin", "user"},
    "reset_tasks": {"admin", "user"},
    "resume_dataset": {"admin", "user"},
    "resume_task": {"admin", "user"},
    "resume_tasks": {"admin", "user"},
    "revoke_passkey": {"admin"},
    "rotate_site_key": {"admin"},
    "rpc.discover": {"anyone"},
    "set_dataset_priority": {"admin", "user"},
    "set_dataset_status": {"admin", "user"},
    "set_group_priority": {"admin"},
    "set_groups": {"admin"},
    "set_processing": {"admin", "pilot"},
    "set_site_cert_dn": {"admin"},
    "set_user_role": {"admin"},
    "set_user_roles": {"admin"},
    "site_status": {"admin"},
    "stillrunning": {"admin", "pilot"},
    "submit_dataset": {"admin", "user"},
    "suspend_dataset": {"admin", "user"},
    "suspend_jobs": {"admin", "user"},
    "suspend_task": {"admin", "user"},
    "suspend_tasks": {"admin", "user"},
    "task_error": {"admin", "pilot"},
    "truncate_dataset": {"admin", "user"},
    "update_dataset_config": {"admin", "user"},
    "update_pilot": {"admin", "pilot"},
    "upload_logfile": {"admin", "pilot"},
    "whoami": {"anyone"},
}


@dataclass
class Target:
    """A dataset with materialised jobs and tasks, owned by one user."""

    dataset_id: str
    job_id: str
    task_id: str


@dataclass
class World:
    server: ServerProcess
    methods: dict[str, dict[str, Any]]
    keys: dict[str, str]
    site: tuple[str, str]  # site_id, site key
    own: Target  # alice's dataset
    other: Target  # bob's dataset


def _target(client: Any, dataset_id: str) -> Target:
    def first_task() -> dict[str, Any] | None:
        page = client.call("public_get_tasks", dataset_id=dataset_id, limit=10)
        return page["items"][0] if page["items"] else None

    t = wait_until("the dataset's tasks to be made", first_task)
    return Target(dataset_id, str(t["job_id"]), str(t["task_id"]))


@pytest.fixture(scope="module")
def world(module_server: Any, module_db_url: str) -> World:
    srv: ServerProcess = module_server(module_db_url)
    dep = srv.deployment
    keys = {}
    # issued first so that it has run out by the time the matrix runs
    keys["expired"] = dep.passkey("pilot", expires=3)
    expires_at = time.time() + 3
    keys["admin"] = dep.passkey("admin", "admin1")
    keys["user"] = dep.passkey("user", "alice")
    keys["bob"] = dep.passkey("user", "bob")
    keys["pilot"] = dep.passkey("pilot")
    keys["revoked"] = dep.passkey("user", "alice")
    assert srv.client(keys["revoked"]).call("whoami")["username"] == "alice"
    dep.revoke(keys["revoked"])
    out = dep.cli("add-site", "peer-site").stdout
    fields = dict(line.split("=", 1) for line in out.split() if "=" in line)
    site = (fields["site_id"], fields["site_key"])

    two = config(task("first"), task("second", depends=["first"]))
    own = _target(srv.client(), submit(srv.client(keys["user"]), two, njobs=2))
    other = _target(srv.client(), submit(srv.client(keys["bob"]), two, njobs=2))
    doc = srv.client().call("rpc.discover")
    assert doc["openrpc"].startswith("1."), doc.get("openrpc")
    methods = {m["name"]: m for m in doc["methods"]}
    time.sleep(max(0.0, expires_at + 0.2 - time.time()))
    return World(srv, methods, keys, site, own, other)


# -- plausible params ---------------------------------------------------------------------

def _valid_config() -> dict[str, Any]:
    return config(task("only"))


def _value(name: str, schema: dict[str, Any], target: Target) -> Any:
    """A value that passes the parameter's schema and points at ``target``."""
    by_name: dict[str, Any] = {
        "dataset_id": target.dataset_id, "task_id": target.task_id, "task": target.task_id,
        "job_id": target.job_id, "task_ids": [target.task_id], "job_ids": [target.job_id],
        "config": _valid_config(), "username": "nobody-" + secrets.token_hex(3),
        "password": "long-enough-password", "name": "n" + secrets.token_hex(3),
        "pilot_id": "pilot-" + secrets.token_hex(3), "data": "log text\n",
        "key_id": "00000000000000000000", "site_id": "00000000000000000000",
        "njobs": 1, "priority": 1.0, "cert_dn": None,
    }
    if name in by_name:
        return by_name[name]
    if "enum" in schema:
        return schema["enum"][0]
    if "oneOf" in schema:
        options = [s for s in schema["oneOf"] if s.get("type") != "null"]
        return _value(name, options[0], target) if options else None
    kind = str(schema.get("type"))
    return {"string": "x", "integer": 1, "number": 1.0, "boolean": False, "array": [],
            "object": {}}.get(kind, "x")


def params_for(method: dict[str, Any], target: Target) -> dict[str, Any]:
    """Required params, plus whatever names the target of an action."""
    params = {}
    for p in method["params"]:
        if p["required"] or p["name"] in ("dataset_id", "task_ids", "job_ids", "task_id"):
            params[p["name"]] = _value(p["name"], p.get("schema", {}), target)
    return params


# -- callers ------------------------------------------------------------------------------

def call(world: World, caller: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    key: str | None = None
    if caller == "site-legacy":
        params["site_id"], params["passkey"] = world.site
    elif caller == "site-bearer":
        key = world.site[1]
    elif caller != "none":
        key = world.keys[caller]
    return jsonrpc.request(world.server.rpc_url, name, params, passkey=key)


def allowed(roles: list[str], caller: str) -> bool:
    if "anyone" in roles or "public" in roles:
        return True  # public_read is on
    return caller in roles


def check_matrix(world: World, caller: str, role: str, target: Target,
                 expect_allowed: Any) -> list[str]:
    """Call every method; return a line for every outcome that is not the expected one."""
    wrong = []
    for name, method in sorted(world.methods.items()):
        roles = sorted(EXPECTED_ROLES.get(name, ()))
        response = call(world, caller, name, params_for(method, target))
        code = jsonrpc.error_code(response)
        ok = expect_allowed(roles, role)
        if ok is True and code in AUTH_ERRORS + NEVER:
            wrong.append(f"{name} (roles {roles}): expected allowed, got {response['error']}")
        elif ok is not True and code != ok:
            got = response.get("error", {"result": response.get("result")})
            wrong.append(f"{name} (roles {roles}): expected {ok}, got {got}")
    return wrong


def _role_outcome(roles: list[str], role: str) -> Any:
    if allowed(roles, role):
        return True
    return -32001 if role == "none" else -32002


def test_registry_matches_the_table(world: World) -> None:
    """The server's methods and roles are exactly the ones written down above."""
    served = {name: set(m["x-roles"]) for name, m in world.methods.items()}
    missing = sorted(set(served) - set(EXPECTED_ROLES))
    gone = sorted(set(EXPECTED_ROLES) - set(served))
    differ = [f"{name}: served {sorted(served[name])}, table {sorted(roles)}"
              for name, roles in sorted(EXPECTED_ROLES.items())
              if name in served and served[name] != roles]
    assert not missing, f"methods served but not in EXPECTED_ROLES: {missing}"
    assert not gone, f"methods in EXPECTED_ROLES the server does not have: {gone}"
    assert not differ, "roles differ from EXPECTED_ROLES:\n" + "\n".join(differ)


@pytest.mark.parametrize("caller, role", [
    ("none", "none"), ("pilot", "pilot"), ("user", "user"), ("admin", "admin"),
    ("site-legacy", "site"), ("site-bearer", "site")])
def test_each_role_on_every_method(world: World, caller: str, role: str) -> None:
    wrong = check_matrix(world, caller, role, world.own, _role_outcome)
    assert not wrong, f"{len(wrong)} methods answered a {caller} caller wrongly:\n" + \
        "\n".join(wrong)


@pytest.mark.parametrize("caller", ["expired", "revoked"])
def test_bad_keys_are_refused_everywhere(world: World, caller: str) -> None:
    wrong = check_matrix(world, caller, caller, world.own, lambda roles, role: -32001)
    assert not wrong, f"{len(wrong)} methods accepted an {caller} key:\n" + "\n".join(wrong)
    # authentication comes first: an unknown method and bad params still get -32001
    for name, params in (("no_such_method", {}), ("echo", {"bogus": 1}),
                         ("public_get_dataset", {"dataset_id": [1]})):
        response = call(world, caller, name, params)
        assert jsonrpc.error_code(response) == -32001, (name, response)


def test_revoked_key_stops_working_at_once(world: World) -> None:
    dep = world.server.deployment
    key = dep.passkey("pilot")
    assert world.server.client(key).call("whoami")["role"] == "pilot"
    dep.revoke(key)
    revoked = time.monotonic()

    def refused() -> bool:
        response = jsonrpc.request(world.server.rpc_url, "whoami", {}, passkey=key)
        return jsonrpc.error_code(response) == -32001

    wait_until("the revoked key to be refused", refused, timeout=10, interval=0.05)
    took = time.monotonic() - revoked
    # the lookup cache lives auth_cache_seconds (0.5 s); the rest is room for a busy machine
    assert took < 5, f"a revoked key kept working for {took:.1f} s"


def test_key_works_until_it_expires(world: World) -> None:
    key = world.server.deployment.passkey("pilot", expires=6)
    issued = time.time()
    whoami = jsonrpc.request(world.server.rpc_url, "whoami", {}, passkey=key)
    assert whoami.get("result", {}).get("role") == "pilot", \
        f"a key issued with --expires 6 was refused at once: {whoami}"
    time.sleep(max(0.0, issued + 6.5 - time.time()))
    assert jsonrpc.error_code(jsonrpc.request(world.server.rpc_url, "whoami", {},
                                              passkey=key)) == -32001


def test_bad_key_in_header_and_legacy_param(world: World) -> None:
    # an empty Bearer value is a credential that is wrong, not an anonymous caller
    for key in ("", "x" * 600, "definitely-not-a-key"):
        response = jsonrpc.request(world.server.rpc_url, "echo", {"value": 1},
                                   headers={"Authorization": f"Bearer {key}"})
        assert jsonrpc.error_code(response) == -32001, (key[:20], response)
    response = jsonrpc.request(world.server.rpc_url, "public_get_datasets_by_status",
                               {"passkey": world.keys["expired"]})
    assert jsonrpc.error_code(response) == -32001, response
    response = jsonrpc.request(world.server.rpc_url, "echo", {"value": 1, "passkey": 12})
    assert jsonrpc.error_code(response) == -32001, response


def _dataset_actions(world: World) -> list[str]:
    names = [name for name, m in world.methods.items()
             if EXPECTED_ROLES.get(name, set()) & {"user"}
             and not EXPECTED_ROLES[name] & {"public", "anyone"}
             and any(p["name"] in TARGETS for p in m["params"])]
    expected = {"suspend_dataset", "resume_dataset", "reset_dataset", "hard_reset_dataset",
                "truncate_dataset", "set_dataset_priority", "update_dataset_config",
                "reset_tasks", "resume_tasks", "suspend_tasks", "reset_jobs",
                "hard_reset_jobs", "suspend_jobs"}
    assert expected <= set(names), f"dataset actions missing: {sorted(expected - set(names))}"
    return sorted(names)


def test_user_on_another_users_dataset_is_forbidden(world: World) -> None:
    wrong = []
    for name in _dataset_actions(world):
        method = world.methods[name]
        names = {p["name"] for p in method["params"]}
        variants = []
        for by in ("task_ids", "job_ids"):
            if by in names:  # choose by ids, then by the dataset filter
                variants.append({by: _value(by, {}, world.other)})
        variants.append({k: v for k, v in params_for(method, world.other).items()
                         if k not in ("task_ids", "job_ids")})
        for params in variants:
            response = call(world, "user", name, params)
            if jsonrpc.error_code(response) != -32002:
                wrong.append(f"{name}({params}): expected -32002, got "
                             f"{response.get('error', response.get('result'))}")
    assert not wrong, "alice acted on bob's dataset:\n" + "\n".join(wrong)
    # nothing of bob's changed hands: his dataset is still processing
    by_status = world.server.client().call("public_get_datasets_by_status")
    assert world.other.dataset_id in by_status.get("processing", []), by_status


def test_admin_acts_on_any_dataset(world: World) -> None:
    client = world.server.client(world.keys["admin"])
    client.call("suspend_dataset", dataset_id=world.other.dataset_id)
    by_status = world.server.client().call("public_get_datasets_by_status")
    assert world.other.dataset_id in by_status.get("suspended", []), by_status
    counts = world.server.client().call("public_get_number_of_tasks_in_each_state",
                                        dataset_id=world.other.dataset_id)
    assert set(counts) <= {"suspended", "complete", "failed"}, counts
    client.call("resume_dataset", dataset_id=world.other.dataset_id)
    by_status = world.server.client().call("public_get_datasets_by_status")
    assert world.other.dataset_id in by_status.get("processing", []), by_status


def test_public_read_off_needs_a_credential(server: Any, db_url: str) -> None:
    srv = server(db_url, env={"ICEPROD_PUBLIC_READ": "false"})
    pilot = srv.deployment.passkey("pilot")
    doc = srv.client().call("rpc.discover")  # open to anyone, whatever public_read says
    public = [m for m in doc["methods"] if "public" in EXPECTED_ROLES.get(m["name"], ())]
    assert public, "no public methods in rpc.discover"
    target = Target("00000000000000000000", "00000000000000000000", "00000000000000000000")
    for method in public:
        params = params_for(method, target)
        anonymous = jsonrpc.request(srv.rpc_url, method["name"], params)
        assert jsonrpc.error_code(anonymous) == -32001, (method["name"], anonymous)
        keyed = jsonrpc.request(srv.rpc_url, method["name"], params, passkey=pilot)
        assert jsonrpc.error_code(keyed) not in AUTH_ERRORS + NEVER, (method["name"], keyed)


def test_a_site_key_as_bearer_is_the_site(world: World) -> None:
    """The site key in ``Authorization: Bearer`` makes the caller that site, on the small
    calls' fast path and on the handler path (a larger body) alike; a wrong key, or the
    right key with another site's id, is -32001."""
    site_id, site_key = world.site
    small = jsonrpc.request(world.server.rpc_url, "whoami", {}, passkey=site_key)
    assert small["result"] == {"role": "site", "username": None, "key_id": None,
                               "site_id": site_id}, small
    large = jsonrpc.request(world.server.rpc_url, "echo", {"value": "x" * 100_000},
                            passkey=site_key)
    assert large.get("result") == "x" * 100_000, str(large)[:300]
    pulled = jsonrpc.request(world.server.rpc_url, "master_get_tables",
                             {"tables": ["datasets"], "since": None}, passkey=site_key)
    assert "cursor" in pulled.get("result", {}), pulled
    status = world.server.client(world.keys["admin"]).call("site_status")
    assert any(s["site_id"] == site_id and s["last_contact"] for s in status), status
    wrong = jsonrpc.request(world.server.rpc_url, "master_get_tables",
                            {"tables": ["datasets"]}, passkey=site_key[:-2] + "xx")
    assert jsonrpc.error_code(wrong) == -32001, wrong
    other_site = jsonrpc.request(world.server.rpc_url, "whoami",
                                 {"site_id": "00000000000000000000"}, passkey=site_key)
    assert jsonrpc.error_code(other_site) == -32001, other_site


def test_passkeys_are_not_bound_to_sites(world: World) -> None:
    """``issue_passkey`` takes no ``site`` (-32602, nothing stored), ``passkey issue``
    no ``--site``, and a key that an older version bound to a site acts as a key of its
    role: whoami names no site, and the site methods are refused."""
    site_id, _ = world.site
    admin = world.server.client(world.keys["admin"])
    keys_before = admin.call("list_passkeys")
    audit_before = admin.call("list_audit_log")["items"]
    response = jsonrpc.request(world.server.rpc_url, "issue_passkey",
                               {"role": "pilot", "site": site_id}, passkey=world.keys["admin"])
    assert jsonrpc.error_code(response) == -32602 and "site" in str(response["error"]), \
        response
    cli = world.server.deployment.cli("passkey", "issue", "--role", "pilot", "--site",
                                      site_id, check=False)
    assert cli.returncode != 0 and "--site" in cli.stderr, (cli.returncode, cli.stderr)
    assert admin.call("list_passkeys") == keys_before
    assert admin.call("list_audit_log")["items"] == audit_before

    # a pilot key as an older version bound it
    key = world.server.deployment.passkey("pilot")
    key_id = next(k["key_id"] for k in admin.call("list_passkeys")
                  if k["key_id"] not in {b["key_id"] for b in keys_before})
    with databases.connect(world.server.db_url) as conn:
        conn.execute(sqlalchemy.text("UPDATE passkeys SET site_id = :s WHERE key_id = :k"),
                     {"s": site_id, "k": key_id})
        conn.commit()
    who = jsonrpc.request(world.server.rpc_url, "whoami", {}, passkey=key)["result"]
    assert who == {"role": "pilot", "username": None, "key_id": key_id, "site_id": None}, who
    for method, params in (("master_get_tables", {"tables": ["tasks"]}),
                           ("queue_master", {"resources": {}, "num": 1})):
        refused = jsonrpc.request(world.server.rpc_url, method, params, passkey=key)
        assert jsonrpc.error_code(refused) == -32002, (method, refused)
