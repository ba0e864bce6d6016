"""Dependencies of the HTTP endpoints: the database sessions, from the app's state.

Each endpoint opens one unit of work (:func:`autostep.db.unit_of_work`)
with the factory it is given and calls the core inside it, so a request
commits everything it wrote or nothing. The commit happens before the
answer is sent: an answer never reports a write that did not commit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "database"]


def database(request: Request) -> sessionmaker[Session]:
    """The app's session factory (made by :func:`autostep.gateway.http.app.create_app`)."""
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory


#: An endpoint parameter holding the session factory.
Database = Annotated[sessionmaker[Session], Depends(database)]
