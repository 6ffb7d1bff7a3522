"""The initial schema: every table and index of iceprod_server.db.models.

Revision ID: 0001
Revises: (none, the first)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('audit_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('created', sa.Double(), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('method', sa.String(length=128), nullable=False),
    sa.Column('target', sa.String(length=255), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('audit_id')
    )
    op.create_index('ix_audit_log_created', 'audit_log', ['created'], unique=False)
    op.create_table('groups',
    sa.Column('group_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('priority', sa.Double(), nullable=False),
    sa.Column('description', sa.String(length=1024), nullable=False),
    sa.PrimaryKeyConstraint('group_id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('meta',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('pilots',
    sa.Column('pilot_id', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=True),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('site', sa.String(length=255), nullable=False),
    sa.Column('tasks', sa.JSON(), nullable=False),
    sa.Column('resources_available', sa.JSON(), nullable=False),
    sa.Column('resources_claimed', sa.JSON(), nullable=False),
    sa.Column('last_update', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('pilot_id')
    )
    op.create_table('sites',
    sa.Column('site_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('key_hash', sa.String(length=128), nullable=True),
    sa.Column('cert_dn', sa.String(length=512), nullable=True),
    sa.Column('created', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('site_id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('task_def_deps',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('task_index', sa.Integer(), nullable=False),
    sa.Column('dep_dataset_id', sa.String(length=32), nullable=False),
    sa.Column('dep_task_index', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('dataset_id', 'task_index', 'dep_dataset_id', 'dep_task_index')
    )
    op.create_index('ix_task_def_deps_dep', 'task_def_deps', ['dep_dataset_id', 'dep_task_index'], unique=False)
    op.create_table('users',
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('user_id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('datasets',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('dataset_num', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=True),
    sa.Column('group_id', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Double(), nullable=False),
    sa.Column('debug', sa.Boolean(), nullable=False),
    sa.Column('njobs', sa.Integer(), nullable=False),
    sa.Column('ntasks', sa.Integer(), nullable=False),
    sa.Column('jobs_materialized', sa.Integer(), nullable=False),
    sa.Column('gridspec', sa.String(length=255), nullable=False),
    sa.Column('stat_keys', sa.JSON(), nullable=False),
    sa.Column('created', sa.Double(), nullable=False),
    sa.Column('status_changed', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.group_id'], ),
    sa.ForeignKeyConstraint(['owner_id'], ['users.user_id'], ),
    sa.PrimaryKeyConstraint('dataset_id'),
    sa.UniqueConstraint('dataset_num')
    )
    op.create_index('ix_datasets_status', 'datasets', ['status'], unique=False)
    op.create_table('passkeys',
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('key_hash', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=True),
    sa.Column('site_id', sa.String(length=32), nullable=True),
    sa.Column('description', sa.String(length=255), nullable=False),
    sa.Column('created', sa.Double(), nullable=False),
    sa.Column('expires', sa.Double(), nullable=True),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.site_id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.user_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key_id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_table('dataset_configs',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('config', sa.Text().with_variant(mysql.LONGTEXT(), 'mariadb').with_variant(mysql.LONGTEXT(), 'mysql'), nullable=False),
    sa.Column('updated', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.dataset_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id')
    )
    op.create_table('jobs',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('job_index', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_changed', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.dataset_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id'),
    sa.UniqueConstraint('dataset_id', 'job_index', name='uq_jobs_dataset_index')
    )
    op.create_index('ix_jobs_dataset_status', 'jobs', ['dataset_id', 'status'], unique=False)
    op.create_table('task_defs',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('task_index', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('requirements', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.dataset_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'task_index')
    )
    op.create_table('tasks',
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('job_index', sa.Integer(), nullable=False),
    sa.Column('task_index', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_changed', sa.Double(), nullable=False),
    sa.Column('queue_rank', sa.Double(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('claim', sa.String(length=64), nullable=True),
    sa.Column('claimed_by', sa.String(length=128), nullable=True),
    sa.Column('lease_expires', sa.Double(), nullable=True),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('req_cpu', sa.Integer(), nullable=False),
    sa.Column('req_gpu', sa.Integer(), nullable=False),
    sa.Column('req_memory', sa.Double(), nullable=False),
    sa.Column('req_disk', sa.Double(), nullable=False),
    sa.Column('req_time', sa.Double(), nullable=False),
    sa.Column('req_os', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.dataset_id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id'),
    sa.UniqueConstraint('dataset_id', 'job_index', 'task_index', name='uq_tasks_position')
    )
    op.create_index('ix_tasks_changed', 'tasks', ['status_changed', 'task_id'], unique=False)
    op.create_index('ix_tasks_claim', 'tasks', ['claim'], unique=False)
    op.create_index('ix_tasks_dataset_id', 'tasks', ['dataset_id', 'task_id'], unique=False)
    op.create_index('ix_tasks_dataset_status', 'tasks', ['dataset_id', 'status', 'task_index'], unique=False)
    op.create_index('ix_tasks_job', 'tasks', ['job_id', 'task_index'], unique=False)
    op.create_index('ix_tasks_status_changed', 'tasks', ['status', 'status_changed'], unique=False)
    op.create_index('ix_tasks_status_lease', 'tasks', ['status', 'lease_expires'], unique=False)
    op.create_index('ix_tasks_status_rank', 'tasks', ['status', 'queue_rank', 'task_id'], unique=False)
    op.create_table('task_logs',
    sa.Column('log_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created', sa.Double(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.Text().with_variant(mysql.LONGTEXT(), 'mariadb').with_variant(mysql.LONGTEXT(), 'mysql'), nullable=True),
    sa.Column('path', sa.String(length=512), nullable=True),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.task_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('log_id')
    )
    op.create_index('ix_task_logs_task', 'task_logs', ['task_id', 'name', 'created'], unique=False)
    op.create_table('login_sessions',
    sa.Column('session_hash', sa.String(length=128), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('created', sa.Double(), nullable=False),
    sa.Column('expires', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.user_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_hash')
    )
    op.create_index('ix_login_sessions_expires', 'login_sessions', ['expires'], unique=False)
    op.create_table('task_counts',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('task_index', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('n', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.dataset_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'task_index', 'status')
    )
    op.create_table('task_stat_hours',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('hour', sa.Integer(), nullable=False),
    sa.Column('complete', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.dataset_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'hour')
    )
    op.create_index('ix_task_stat_hours_hour', 'task_stat_hours', ['hour'], unique=False)
    op.create_table('task_stats',
    sa.Column('stat_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('created', sa.Double(), nullable=False),
    sa.Column('error', sa.Boolean(), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('time_used', sa.Double(), nullable=True),
    sa.Column('stats', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.task_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('stat_id')
    )
    op.create_index('ix_task_stats_created', 'task_stats', ['created'], unique=False)
    op.create_index('ix_task_stats_dataset_created', 'task_stats', ['dataset_id', 'created'], unique=False)
    op.create_index('ix_task_stats_task', 'task_stats', ['task_id', 'attempt'], unique=False)


def downgrade() -> None:
    op.drop_table('login_sessions')
    op.drop_table('task_stat_hours')
    op.drop_table('task_counts')
    op.drop_table('task_stats')
    op.drop_table('task_logs')
    op.drop_table('tasks')
    op.drop_table('task_defs')
    op.drop_table('jobs')
    op.drop_table('dataset_configs')
    op.drop_table('passkeys')
    op.drop_table('datasets')
    op.drop_table('users')
    op.drop_table('task_def_deps')
    op.drop_table('sites')
    op.drop_table('pilots')
    op.drop_table('meta')
    op.drop_table('groups')
    op.drop_table('audit_log')
