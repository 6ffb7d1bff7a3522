"""Database triggers that fill the outbox of a client site.

A task pulled from the master carries the master's attempt in ``tasks.site_attempt``. Every
outcome of such a task (complete, failed, suspended, a failure counted) and every stat or
log row written for it adds an outbox row in the same transaction, whichever statement made
the change. Local tasks, and the master's own tasks, have no ``site_attempt`` and cost one
cheap condition per update.
"""

from __future__ import annotations

_COLUMNS = "(table_name, row_key, task_id, site_attempt, created, version)"
_NOW = {"sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
        "mysql": "UNIX_TIMESTAMP(NOW(6))"}
_TASK_CHANGED = ("NEW.site_attempt IS NOT NULL AND OLD.site_attempt = NEW.site_attempt AND "
                 "(OLD.status <> NEW.status AND NEW.status IN ('complete', 'failed', "
                 "'suspended') OR OLD.failures <> NEW.failures)")


def _task_insert(now: str) -> str:
    return (f"INSERT INTO outbox {_COLUMNS} VALUES ('tasks', NEW.task_id, NEW.task_id, "
            f"NEW.site_attempt, {now}, NULL);")


def _child_insert(table: str, key: str, now: str) -> str:
    return (f"INSERT INTO outbox {_COLUMNS} SELECT '{table}', NEW.{key}, NEW.task_id, "
            f"site_attempt, {now}, NULL FROM tasks WHERE task_id = NEW.task_id "
            "AND site_attempt IS NOT NULL;")


def create_statements(dialect: str) -> list[str]:
    if dialect == "sqlite":
        now = _NOW["sqlite"]
        return [
            "CREATE TRIGGER trg_outbox_tasks AFTER UPDATE ON tasks "
            f"WHEN {_TASK_CHANGED} BEGIN {_task_insert(now)} END",
            "CREATE TRIGGER trg_outbox_task_stats AFTER INSERT ON task_stats BEGIN "
            f"{_child_insert('task_stats', 'stat_id', now)} END",
            "CREATE TRIGGER trg_outbox_task_logs AFTER INSERT ON task_logs BEGIN "
            f"{_child_insert('task_logs', 'log_id', now)} END",
        ]
    now = _NOW["mysql"]
    return [
        "CREATE TRIGGER trg_outbox_tasks AFTER UPDATE ON tasks FOR EACH ROW BEGIN "
        f"IF {_TASK_CHANGED} THEN {_task_insert(now)} END IF; END",
        "CREATE TRIGGER trg_outbox_task_stats AFTER INSERT ON task_stats FOR EACH ROW "
        + _child_insert("task_stats", "stat_id", now).rstrip(";"),
        "CREATE TRIGGER trg_outbox_task_logs AFTER INSERT ON task_logs FOR EACH ROW "
        + _child_insert("task_logs", "log_id", now).rstrip(";"),
    ]


NAMES = ["trg_outbox_tasks", "trg_outbox_task_stats", "trg_outbox_task_logs"]


def drop_statements(dialect: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {name}" for name in NAMES]
