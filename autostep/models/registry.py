"""Table of the function registry: which runner serves which function.

A function runner writes one :class:`FunctionRunner` row per function it
serves when it starts, refreshes ``heartbeat_at`` while it lives and deletes
its rows when it stops. A runner that died leaves rows whose heartbeat gets
old; readers treat those as gone (see :mod:`autostep.registry`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from autostep.models.base import Base, created_at_column

__all__ = ["FunctionRunner"]


class FunctionRunner(Base):
    """One function as served by one runner process."""

    __tablename__ = "function_runner"

    function: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: The runner process: ``<host>:<pid>:<random>``, unique per start.
    runner: Mapped[str] = mapped_column(String(200), primary_key=True)
    module: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    input_schema: Mapped[dict[str, Any]]
    output_schema: Mapped[dict[str, Any]]
    #: The function's default retry policy (retries, backoff, timeout).
    policy: Mapped[dict[str, Any]]
    started_at: Mapped[datetime] = created_at_column()
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
