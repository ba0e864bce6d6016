"""Jobs: start one, list them, read one with its processes, cancel, rerun.

Starting, cancelling and rerunning are the engine's operations
(:mod:`autostep.runs`), the same the CLI and the RPC service call. A job is
shown with its top-level processes; a fan-out carries its first children and
the rest come page by page from ``/jobs/{id}/processes/{pid}/children``, so
a fan-out of 10,000 items costs one page. A queued process whose function no
live runner serves says so in ``waiting``. A start may carry an
``Idempotency-Key`` (:mod:`autostep.idempotency`): sent again, it answers 200
with the job it started, and starts none.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime
from sqlalchemy import Engine

from autostep import catalog, idempotency, queries, runs
from autostep.db import unit_of_work
from autostep.gateway.http.deps import Database, IdempotencyKey, async_reads, read_database
from autostep.gateway.http.problems import problem_responses
from autostep.gateway.http.schemas import (
    ChildrenPage,
    JobDetail,
    JobPage,
    JobStart,
    JobStatusName,
)

__all__ = ["router"]

router = APIRouter(tags=["jobs"])

#: The media type of answers serialized here.
JSON = "application/json"

#: What started a job that the REST gateway started.
TRIGGER = "api"


@router.post(
    "/workflows/{workflow_id}/jobs",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "Started before with this Idempotency-Key", "model": JobDetail},
        **problem_responses(400, 404, 409, 413, 415, 422),
    },
)
def start_job(
    workflow_id: uuid.UUID,
    body: JobStart,
    db: Database,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobDetail:
    """Start a run of the workflow (its newest version unless ``version``).

    Answers once the run is stored; it goes on in the function runners.
    409 for an archived workflow.
    """
    with unit_of_work(db) as session:
        workflow = catalog.find_workflow(session, workflow_id)
        if idempotency_key is not None:
            request_print = idempotency.fingerprint(body.model_dump(mode="json"))
            started = idempotency.claim(session, workflow.id, idempotency_key, request_print)
            if started is not None:
                response.status_code = status.HTTP_200_OK
                response.headers["Idempotent-Replayed"] = "true"
                return JobDetail.model_validate(queries.job_tree(session, started))
        job = runs.start_job(
            session,
            workflow.project_id,
            str(workflow.id),
            body.input,
            trigger=TRIGGER,
            version=body.version,
        )
        if idempotency_key is not None:
            idempotency.record(session, workflow.id, idempotency_key, job.id)
        session.flush()
        return JobDetail.model_validate(queries.job_tree(session, job.id))


@router.get("/jobs", responses=problem_responses(404, 422))
def list_jobs(
    db: Database,
    project: Annotated[uuid.UUID | None, Query(description="A project's id.")] = None,
    workflow: Annotated[uuid.UUID | None, Query(description="A workflow's id.")] = None,
    status: JobStatusName | None = None,
    trigger: Annotated[str | None, Query(max_length=50, description="e.g. api, cli")] = None,
    created_from: Annotated[
        AwareDatetime | None, Query(description="Jobs created at or after (with a time zone).")
    ] = None,
    created_until: Annotated[
        AwareDatetime | None, Query(description="Jobs created before (with a time zone).")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next` of the page before.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    """Jobs, newest first, one page at a time (keyset pagination: follow ``next``)."""
    with unit_of_work(db) as session:
        if project is not None:
            catalog.get_project(session, project)  # 404 for a project that does not exist
        filters = queries.JobFilters(
            project_id=project,
            workflow_id=workflow,
            status=status,
            trigger=trigger,
            created_from=created_from,
            created_until=created_until,
        )
        return JobPage.model_validate(
            queries.job_page(session, filters, limit=limit, cursor=cursor)
        )


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=problem_responses(404, 422))
async def get_job(job_id: uuid.UUID, request: Request) -> Response:
    """The job with its processes; a fan-out with its first children."""
    view = await async_reads(request).job_tree(job_id)  # one statement on the event loop
    if view is None:  # a fan-out: its children's pages are further reads
        view = await run_in_threadpool(_job_tree, await read_database(request), job_id)
    # checked against the model once and serialized by it, not checked again by FastAPI
    return Response(JobDetail.model_validate(view).model_dump_json(), media_type=JSON)


def _job_tree(db: Engine, job_id: uuid.UUID) -> dict[str, Any]:
    with db.connect() as connection:
        return queries.job_tree(connection, job_id)


@router.get("/jobs/{job_id}/processes/{process_id}/children", responses=problem_responses(404, 422))
def list_children(
    job_id: uuid.UUID,
    process_id: uuid.UUID,
    db: Database,
    after: Annotated[
        int | None, Query(ge=-1, le=2**31 - 1, description="Continue after this item index.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ChildrenPage:
    """A page of a fan-out's children, in item order."""
    with unit_of_work(db) as session:
        return ChildrenPage.model_validate(
            queries.process_children(session, job_id, process_id, after=after, limit=limit)
        )


@router.post("/jobs/{job_id}/cancel", responses=problem_responses(404, 422))
def cancel_job(job_id: uuid.UUID, db: Database) -> JobDetail:
    """Cancel a running job; a finished one is returned as it is."""
    with unit_of_work(db) as session:
        runs.cancel_job(session, job_id)
        session.flush()
        return JobDetail.model_validate(queries.job_tree(session, job_id))


@router.post(
    "/jobs/{job_id}/rerun",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(404, 409, 422),
)
def rerun_job(job_id: uuid.UUID, db: Database) -> JobDetail:
    """A new job that goes on where a failed or cancelled one stopped.

    Its succeeded steps are reused, not run again. 409 for a job still
    running, one that succeeded, or one that failed outside its steps.
    """
    with unit_of_work(db) as session:
        job = runs.rerun_job(session, job_id, trigger=TRIGGER)
        session.flush()
        return JobDetail.model_validate(queries.job_tree(session, job.id))
