"""psycopg under eventlet: queries in different green threads overlap."""

from __future__ import annotations

from typing import Any

import eventlet
from sqlalchemy import text

from autostep.cooperative import eventlet_patched


def test_concurrent_queries_in_green_threads_overlap(session_factory: Any) -> None:
    # Four green threads sleep in PostgreSQL while a fifth counts, from
    # pg_stat_activity, how many of them are inside pg_sleep at once. If
    # psycopg blocked the hub, the sleeps would run one after another and the
    # counter could not even run while one of them waits.
    assert eventlet_patched()
    marker = "autostep-overlap-probe"

    def sleeper() -> None:
        with session_factory() as session:
            session.execute(text(f"SELECT pg_sleep(0.5) /* {marker} */"))

    def busiest() -> int:
        seen = 0
        with session_factory() as session:
            for _ in range(40):
                count = session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                        " AND query LIKE :m AND pid <> pg_backend_pid()"
                    ),
                    {"m": f"%{marker}%"},
                )
                session.rollback()
                seen = max(seen, int(count or 0))
                eventlet.sleep(0.02)
        return seen

    probe = eventlet.spawn(busiest)
    sleepers = [eventlet.spawn(sleeper) for _ in range(4)]
    for thread in sleepers:
        thread.wait()
    assert probe.wait() == 4
