"""camera_status.audio: what becomes of each camera's audio (copied, transcoded to AAC, or dropped)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('camera_status', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audio', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('camera_status', schema=None) as batch_op:
        batch_op.drop_column('audio')
