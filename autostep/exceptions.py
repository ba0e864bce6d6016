"""Every error autostep raises, in one tree.

::

    AutostepError
    ├── StepError                 raised by user functions to steer retries
    │   ├── RetryableError        try again after ``delay`` (or the backoff)
    │   └── PermanentError        fail the process now, no more attempts
    ├── InvalidInput              a caller sent a bad value (a name, a payload, a limit)
    │   ├── DefinitionError       a workflow definition is invalid
    │   │   └── ConditionError    a CEL expression does not compile or uses unknown variables
    │   ├── MalformedBody         a request body that is not JSON
    │   └── PayloadTooLarge       a request body over its limit
    ├── Unauthenticated           a caller did not prove who it is (a missing or wrong token)
    ├── NotFoundError             a project, workflow, version, job or module is missing
    ├── ConflictError             the thing exists already / wrong state
    │   ├── StaleAttempt          a step message was overtaken by another attempt
    │   └── PreconditionFailed    a write expected a revision that is no longer current
    ├── PoisonMessage             a message no consumer can process: dead-lettered
    ├── JobStillRunning           a wait for a job to finish ran out of time
    ├── InternalError             something unexpected failed; the server logged it in full
    └── InfrastructureError       the database or broker misbehaved
        ├── DatabaseUnavailable   PostgreSQL cannot be reached or dropped the connection
        ├── TransactionConflict   PostgreSQL rolled a transaction back (deadlock, serialization)
        ├── BrokerUnavailable     RabbitMQ cannot be reached or stopped confirming
        └── ClusterUnavailable    the Kubernetes API server cannot be reached or answers 5xx/429

Third-party errors are translated where they arise, with ``raise … from exc``:
database outages by :func:`autostep.db.database_outages`, broker outages in
the relay and the function runners. Boundaries (the gateway, the CLI, nameko
entrypoints) translate these into HTTP statuses, exit codes and RPC errors;
inside the engine they travel as they are.
"""

from __future__ import annotations

__all__ = [
    "AutostepError",
    "BrokerUnavailable",
    "ClusterUnavailable",
    "ConditionError",
    "ConflictError",
    "DatabaseUnavailable",
    "DefinitionError",
    "InfrastructureError",
    "InternalError",
    "InvalidInput",
    "JobStillRunning",
    "MalformedBody",
    "NotFoundError",
    "PayloadTooLarge",
    "PermanentError",
    "PoisonMessage",
    "PreconditionFailed",
    "RetryableError",
    "StaleAttempt",
    "StepError",
    "TransactionConflict",
    "Unauthenticated",
]


class AutostepError(Exception):
    """Base class of every autostep error."""


class StepError(AutostepError):
    """Raised by a step function to tell the engine what to do with a failure."""


class RetryableError(StepError):
    """The step failed for a passing reason; run it again after ``delay`` seconds.

    Without ``delay`` the step's backoff policy decides. Once the step's
    ``retries`` are spent the process fails like on a :class:`PermanentError`.
    """

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(StepError):
    """The step failed and trying again will not help: fail the process now."""


class InvalidInput(AutostepError):
    """A value a caller sent was refused; ``field`` names it (``input``, ``steps[1].name``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class DefinitionError(InvalidInput):
    """A workflow definition was rejected; ``field`` names the offending part."""


class ConditionError(DefinitionError):
    """A CEL expression failed to compile, or names a variable that does not exist there."""


class MalformedBody(InvalidInput):
    """A request body that does not parse as JSON."""


class PayloadTooLarge(InvalidInput):
    """A request body larger than the limit that applies to it."""


class Unauthenticated(AutostepError):
    """A caller sent no credentials, or wrong ones, for something that needs them.

    The message never says which: a missing token, a wrong one and an
    unknown webhook all read the same.
    """


class NotFoundError(AutostepError):
    """A project, workflow, version, job, process or function module does not exist."""


class ConflictError(AutostepError):
    """The request clashes with existing state (a duplicate name, a finished job)."""


class StaleAttempt(ConflictError):
    """A step finished an attempt that another attempt (or the job) overtook."""


class PreconditionFailed(ConflictError):
    """A write named the revision it expected (an ETag), and another write changed it since.

    ``current`` is the revision now, when known, so the caller can read it again.
    """

    def __init__(self, message: str, *, current: int | None = None) -> None:
        super().__init__(message)
        self.current = current


class InternalError(AutostepError):
    """Something failed that the caller can neither see nor fix; the server logged it in full."""


class InfrastructureError(AutostepError):
    """PostgreSQL, RabbitMQ or the Kubernetes API failed in a way the caller cannot fix."""


class PoisonMessage(AutostepError):
    """A message that no consumer can process: it goes to the dead-letter queue."""


class JobStillRunning(AutostepError):
    """A job did not finish within the time someone was willing to wait for it."""


class DatabaseUnavailable(InfrastructureError):
    """PostgreSQL could not be reached, or the connection broke mid-transaction."""


class BrokerUnavailable(InfrastructureError):
    """RabbitMQ could not be reached, or stopped confirming what was published."""


class ClusterUnavailable(InfrastructureError):
    """The Kubernetes API server could not be reached, timed out, or answered 5xx or 429.

    The scheduler backs off and tries again; nothing it did is lost, as the
    next reconciliation starts from what the cluster holds.
    """


class TransactionConflict(InfrastructureError):
    """PostgreSQL rolled a transaction back to resolve a deadlock or a serialization failure.

    Not an outage: running the transaction again at once succeeds.
    ``sqlstate`` is ``40P01`` (deadlock) or ``40001`` (serialization).
    """

    def __init__(self, message: str, *, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
