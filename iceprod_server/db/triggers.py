"""Database triggers that keep ``task_counts`` and ``task_stat_hours`` exact.

Every change of a task's status, by whichever statement and whichever process, passes
through these, so the counts need no code on each path and never drift. The SQL differs
between SQLite and MariaDB/MySQL only in the upsert and the trigger body syntax.

Since revision 0006 the counters are sharded: each (dataset, task index, status) count and
each (dataset, hour) tally is spread over up to :data:`SHARDS` rows, and readers sum them.
On MariaDB a transaction adds to and subtracts from the shard of its own connection
(``CONNECTION_ID() % SHARDS``), so two claims or two finishes running at once change
different rows and never wait for each other's counter update. A shard may hold a
negative number (a task counted in one shard and moved on by another connection); only
the sum means anything, and the sum is exact. SQLite has one writer at a time anyway and
keeps every count in shard 0.
"""

from __future__ import annotations

_KEY = "dataset_id = {r}.dataset_id AND task_index = {r}.task_index AND status = {r}.status"

_SQLITE_ADD = ("INSERT INTO task_counts (dataset_id, task_index, status, n) "
               "VALUES (NEW.dataset_id, NEW.task_index, NEW.status, 1) "
               "ON CONFLICT (dataset_id, task_index, status) DO UPDATE SET n = n + 1;")
_MYSQL_ADD = ("INSERT INTO task_counts (dataset_id, task_index, status, n) "
              "VALUES (NEW.dataset_id, NEW.task_index, NEW.status, 1) "
              "ON DUPLICATE KEY UPDATE n = n + 1;")
_SUB = "UPDATE task_counts SET n = n - 1 WHERE " + _KEY.format(r="OLD") + ";"

SQLITE = [
    "CREATE TRIGGER trg_tasks_count_insert AFTER INSERT ON tasks BEGIN "
    + _SQLITE_ADD + " END",
    "CREATE TRIGGER trg_tasks_count_update AFTER UPDATE OF status ON tasks "
    "WHEN OLD.status <> NEW.status BEGIN " + _SUB + " " + _SQLITE_ADD + " END",
    "CREATE TRIGGER trg_tasks_count_delete AFTER DELETE ON tasks BEGIN " + _SUB + " END",
    "CREATE TRIGGER trg_task_stats_hour AFTER INSERT ON task_stats BEGIN "
    "INSERT INTO task_stat_hours (dataset_id, hour, complete, failed) "
    "VALUES (NEW.dataset_id, CAST(NEW.created / 3600 AS INTEGER), "
    "CASE WHEN NEW.error THEN 0 ELSE 1 END, CASE WHEN NEW.error THEN 1 ELSE 0 END) "
    "ON CONFLICT (dataset_id, hour) DO UPDATE SET complete = complete + excluded.complete, "
    "failed = failed + excluded.failed; END",
]

MYSQL = [
    "CREATE TRIGGER trg_tasks_count_insert AFTER INSERT ON tasks FOR EACH ROW " + _MYSQL_ADD,
    "CREATE TRIGGER trg_tasks_count_update AFTER UPDATE ON tasks FOR EACH ROW BEGIN "
    "IF OLD.status <> NEW.status THEN " + _SUB + " " + _MYSQL_ADD + " END IF; END",
    "CREATE TRIGGER trg_tasks_count_delete AFTER DELETE ON tasks FOR EACH ROW " + _SUB,
    "CREATE TRIGGER trg_task_stats_hour AFTER INSERT ON task_stats FOR EACH ROW "
    "INSERT INTO task_stat_hours (dataset_id, hour, complete, failed) "
    "VALUES (NEW.dataset_id, FLOOR(NEW.created / 3600), IF(NEW.error, 0, 1), "
    "IF(NEW.error, 1, 0)) "
    "ON DUPLICATE KEY UPDATE complete = complete + VALUES(complete), "
    "failed = failed + VALUES(failed)",
]

NAMES = ["trg_tasks_count_insert", "trg_tasks_count_update", "trg_tasks_count_delete",
         "trg_task_stats_hour"]

# fill the tables from what is there when the triggers are created
BACKFILL = [
    "DELETE FROM task_counts",
    "INSERT INTO task_counts (dataset_id, task_index, status, n) "
    "SELECT dataset_id, task_index, status, COUNT(*) FROM tasks "
    "GROUP BY dataset_id, task_index, status",
    "DELETE FROM task_stat_hours",
    "INSERT INTO task_stat_hours (dataset_id, hour, complete, failed) "
    "SELECT dataset_id, {hour}, SUM(CASE WHEN error THEN 0 ELSE 1 END), "
    "SUM(CASE WHEN error THEN 1 ELSE 0 END) FROM task_stats GROUP BY dataset_id, {hour}",
]


SHARDS = 32

_SQLITE_ADD_S = ("INSERT INTO task_counts (dataset_id, task_index, status, shard, n) "
                 "VALUES (NEW.dataset_id, NEW.task_index, NEW.status, 0, 1) "
                 "ON CONFLICT (dataset_id, task_index, status, shard) DO UPDATE SET n = n + 1;")
_SQLITE_SUB_S = ("UPDATE task_counts SET n = n - 1 WHERE " + _KEY.format(r="OLD")
                 + " AND shard = 0;")
_MYSQL_SHARD = f"CONNECTION_ID() % {SHARDS}"
# MariaDB: the decrement is an upsert too (the connection's shard may have no row yet)
_MYSQL_ADD_S = ("INSERT INTO task_counts (dataset_id, task_index, status, shard, n) "
                f"VALUES (NEW.dataset_id, NEW.task_index, NEW.status, {_MYSQL_SHARD}, 1) "
                "ON DUPLICATE KEY UPDATE n = n + 1;")
_MYSQL_SUB_S = ("INSERT INTO task_counts (dataset_id, task_index, status, shard, n) "
                f"VALUES (OLD.dataset_id, OLD.task_index, OLD.status, {_MYSQL_SHARD}, -1) "
                "ON DUPLICATE KEY UPDATE n = n - 1;")

SQLITE_SHARDED = [
    "CREATE TRIGGER trg_tasks_count_insert AFTER INSERT ON tasks BEGIN "
    + _SQLITE_ADD_S + " END",
    "CREATE TRIGGER trg_tasks_count_update AFTER UPDATE OF status ON tasks "
    "WHEN OLD.status <> NEW.status BEGIN " + _SQLITE_SUB_S + " " + _SQLITE_ADD_S + " END",
    "CREATE TRIGGER trg_tasks_count_delete AFTER DELETE ON tasks BEGIN " + _SQLITE_SUB_S
    + " END",
    "CREATE TRIGGER trg_task_stats_hour AFTER INSERT ON task_stats BEGIN "
    "INSERT INTO task_stat_hours (dataset_id, hour, shard, complete, failed) "
    "VALUES (NEW.dataset_id, CAST(NEW.created / 3600 AS INTEGER), 0, "
    "CASE WHEN NEW.error THEN 0 ELSE 1 END, CASE WHEN NEW.error THEN 1 ELSE 0 END) "
    "ON CONFLICT (dataset_id, hour, shard) DO UPDATE SET "
    "complete = complete + excluded.complete, failed = failed + excluded.failed; END",
]

MYSQL_SHARDED = [
    "CREATE TRIGGER trg_tasks_count_insert AFTER INSERT ON tasks FOR EACH ROW "
    + _MYSQL_ADD_S,
    "CREATE TRIGGER trg_tasks_count_update AFTER UPDATE ON tasks FOR EACH ROW BEGIN "
    "IF OLD.status <> NEW.status THEN " + _MYSQL_SUB_S + " " + _MYSQL_ADD_S
    + " END IF; END",
    "CREATE TRIGGER trg_tasks_count_delete AFTER DELETE ON tasks FOR EACH ROW "
    + _MYSQL_SUB_S,
    "CREATE TRIGGER trg_task_stats_hour AFTER INSERT ON task_stats FOR EACH ROW "
    "INSERT INTO task_stat_hours (dataset_id, hour, shard, complete, failed) "
    f"VALUES (NEW.dataset_id, FLOOR(NEW.created / 3600), {_MYSQL_SHARD}, "
    "IF(NEW.error, 0, 1), IF(NEW.error, 1, 0)) "
    "ON DUPLICATE KEY UPDATE complete = complete + VALUES(complete), "
    "failed = failed + VALUES(failed)",
]

# fill the sharded tables from what is there when the triggers are created: shard 0
BACKFILL_SHARDED = [
    "DELETE FROM task_counts",
    "INSERT INTO task_counts (dataset_id, task_index, status, shard, n) "
    "SELECT dataset_id, task_index, status, 0, COUNT(*) FROM tasks "
    "GROUP BY dataset_id, task_index, status",
    "DELETE FROM task_stat_hours",
    "INSERT INTO task_stat_hours (dataset_id, hour, shard, complete, failed) "
    "SELECT dataset_id, {hour}, 0, SUM(CASE WHEN error THEN 0 ELSE 1 END), "
    "SUM(CASE WHEN error THEN 1 ELSE 0 END) FROM task_stats GROUP BY dataset_id, {hour}",
]


def _hour(dialect: str) -> str:
    return "CAST(created / 3600 AS INTEGER)" if dialect == "sqlite" else "FLOOR(created / 3600)"


def create_sharded_statements(dialect: str) -> list[str]:
    """The triggers of revision 0006 on, and the first fill of the sharded tables."""
    triggers = SQLITE_SHARDED if dialect == "sqlite" else MYSQL_SHARDED
    return triggers + [b.format(hour=_hour(dialect)) for b in BACKFILL_SHARDED]


def create_statements(dialect: str) -> list[str]:
    """The triggers of revisions 0002 to 0004 (one row per count), and their first fill."""
    triggers = SQLITE if dialect == "sqlite" else MYSQL
    return triggers + [b.format(hour=_hour(dialect)) for b in BACKFILL]


def drop_statements(dialect: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {name}" for name in NAMES]
