"""access_log.export_id: which export a row of action export or download is about; one download row
per export and user

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 09:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('export_id', sa.String(length=40), nullable=True))
        batch_op.create_index('ux_access_log_download', ['export_id', 'username'], unique=True,
                              sqlite_where=sa.text("action = 'download'"),
                              postgresql_where=sa.text("action = 'download'"))


def downgrade() -> None:
    with op.batch_alter_table('access_log', schema=None) as batch_op:
        batch_op.drop_index('ux_access_log_download')
        batch_op.drop_column('export_id')
