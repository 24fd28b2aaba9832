"""Each session's gradient settings: clipping by global norm, and what a non-finite gradient does."""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("clip_grad_norm", sa.JSON, nullable=True))
    op.add_column("sessions", sa.Column("nonfinite", sa.String(16), nullable=False, server_default="reject"))


def downgrade() -> None:
    op.drop_column("sessions", "nonfinite")
    op.drop_column("sessions", "clip_grad_norm")
