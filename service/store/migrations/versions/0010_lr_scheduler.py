"""Each session's LR schedule: its config, its state_dict, and the keys it keeps in the param groups."""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("lr_scheduler", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "lr_scheduler")
