"""alerts: alerts, their deliveries, maintenance windows, system events

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 13:44:24
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alert_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('alert_id', sa.BigInteger(), nullable=True),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('severity', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('next_attempt_ms', sa.BigInteger(), nullable=False),
    sa.Column('sent_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_attempt_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('digest_id', sa.BigInteger(), nullable=True),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alert_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_alert_deliveries_alert', ['alert_id'], unique=False)
        batch_op.create_index('ix_alert_deliveries_channel_attempt', ['channel', 'last_attempt_ms'], unique=False)
        batch_op.create_index('ix_alert_deliveries_due', ['state', 'next_attempt_ms'], unique=False)

    op.create_table('alert_maintenance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sa.String(length=64), nullable=True),
    sa.Column('town', sa.String(length=32), nullable=True),
    sa.Column('start_ms', sa.BigInteger(), nullable=False),
    sa.Column('end_ms', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alert_maintenance', schema=None) as batch_op:
        batch_op.create_index('ix_alert_maintenance_end', ['end_ms'], unique=False)

    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('severity', sa.String(length=8), nullable=False),
    sa.Column('station_id', sa.String(length=64), nullable=True),
    sa.Column('town', sa.String(length=32), nullable=True),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('since_ms', sa.BigInteger(), nullable=False),
    sa.Column('fired_ms', sa.BigInteger(), nullable=False),
    sa.Column('resolved_ms', sa.BigInteger(), nullable=True),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('one_shot', sa.Boolean(), nullable=False),
    sa.Column('notified', sa.Boolean(), nullable=False),
    sa.Column('suppressed', sa.String(length=16), nullable=True),
    sa.Column('acked_ms', sa.BigInteger(), nullable=True),
    sa.Column('acked_by', sa.String(length=64), nullable=True),
    sa.Column('ack_note', sa.Text(), nullable=True),
    sa.Column('muted_until_ms', sa.BigInteger(), nullable=True),
    sa.Column('muted_by', sa.String(length=64), nullable=True),
    sa.Column('reminders', sa.Integer(), nullable=False),
    sa.Column('next_reminder_ms', sa.BigInteger(), nullable=True),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index('ix_alerts_key', ['key'], unique=False)
        batch_op.create_index('ix_alerts_state_fired', ['state', 'fired_ms'], unique=False)
        batch_op.create_index('ix_alerts_station_fired', ['station_id', 'fired_ms'], unique=False)
        batch_op.create_index('ux_alerts_firing_key', ['key'], unique=True,
                              sqlite_where=sa.text("state = 'firing'"),
                              postgresql_where=sa.text("state = 'firing'"))

    op.create_table('system_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at_ms', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('system_events', schema=None) as batch_op:
        batch_op.create_index('ix_system_events_at', ['at_ms'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('system_events', schema=None) as batch_op:
        batch_op.drop_index('ix_system_events_at')

    op.drop_table('system_events')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('ux_alerts_firing_key')
        batch_op.drop_index('ix_alerts_station_fired')
        batch_op.drop_index('ix_alerts_state_fired')
        batch_op.drop_index('ix_alerts_key')

    op.drop_table('alerts')
    with op.batch_alter_table('alert_maintenance', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_maintenance_end')

    op.drop_table('alert_maintenance')
    with op.batch_alter_table('alert_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_deliveries_due')
        batch_op.drop_index('ix_alert_deliveries_channel_attempt')
        batch_op.drop_index('ix_alert_deliveries_alert')

    op.drop_table('alert_deliveries')
