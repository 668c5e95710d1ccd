"""gb28181: devices and their channels; gaps filled from a camera's own recording

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 16:05:51
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gb_devices',
    sa.Column('device_id', sa.String(length=20), nullable=False),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('password', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('transport', sa.String(length=4), nullable=True),
    sa.Column('host', sa.String(length=64), nullable=True),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('gb_version', sa.String(length=8), nullable=True),
    sa.Column('name', sa.String(length=128), nullable=True),
    sa.Column('manufacturer', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=64), nullable=True),
    sa.Column('firmware', sa.String(length=64), nullable=True),
    sa.Column('registered_ms', sa.BigInteger(), nullable=True),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_keepalive_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_seen_ms', sa.BigInteger(), nullable=True),
    sa.Column('refused_reason', sa.Text(), nullable=True),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('device_id')
    )
    op.create_table('gb_channels',
    sa.Column('device_id', sa.String(length=20), nullable=False),
    sa.Column('channel_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=True),
    sa.Column('manufacturer', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('parent_id', sa.String(length=64), nullable=True),
    sa.Column('station_id', sa.String(length=64), nullable=True),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['gb_devices.device_id'], ),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], ),
    sa.UniqueConstraint('station_id'),
    sa.PrimaryKeyConstraint('device_id', 'channel_id')
    )


    with op.batch_alter_table('gaps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('backfill', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('filled_by', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('filled_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('backfill_detail', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gaps', schema=None) as batch_op:
        batch_op.drop_column('backfill_detail')
        batch_op.drop_column('filled_ms')
        batch_op.drop_column('filled_by')
        batch_op.drop_column('backfill')
    op.drop_table('gb_channels')
    op.drop_table('gb_devices')
