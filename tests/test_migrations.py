"""The migrations and the models describe one schema: a database made by the migrations
(what ``init`` and ``migrate`` run) has every table, column, index and type the models
name, on both databases, and the chain of revisions is one line from the first to the head.
"""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from iceprod_server.db.migrate import (
    alembic_config,
    head_revision,
    schema_differences,
    upgrade,
)


def test_the_migrated_schema_is_the_models_schema(db_url: str) -> None:
    upgrade(db_url)
    assert schema_differences(db_url) == []


def test_the_revisions_form_one_line() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [head_revision()]
    chain = [r.revision for r in script.walk_revisions("base", "heads")]
    # one revision per file, numbered 0001, 0002, ... in the order they apply
    assert list(reversed(chain)) == [f"{n:04d}" for n in range(1, len(chain) + 1)]
    files = sorted(p.name[:4] for p in
                   (Path(script.dir) / "versions").glob("[0-9]*.py"))
    assert files == list(reversed(chain))
