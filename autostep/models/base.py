"""Declarative base and column helpers shared by every service's tables.

Each service keeps its tables in its own module (``catalog``, ``runs``,
``messaging``) and refers to another service's rows by id only, without a
foreign key, so that the database can be split per service later.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["JSON", "Base", "created_at_column", "new_id"]

#: Constraint names Alembic can rely on.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSON = JSONB(none_as_null=True)


def new_id() -> uuid.UUID:
    """A fresh primary key."""
    return uuid.uuid4()


class Base(DeclarativeBase):
    """Base of every autostep table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def created_at_column() -> Mapped[datetime]:
    """A ``created_at`` column the database fills in."""
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)
