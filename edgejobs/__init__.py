"""edgejobs: a background job runner for one machine, on SQLite.

The public API: :class:`EdgeJobs` (the runner and client), :class:`JobContext` and
:class:`SyncJobContext` (what handlers receive), :class:`AsyncHandler` and :class:`SyncHandler`
(the handler signatures), :class:`PermanentError` (fail without retry), the :class:`Status` and
:class:`Priority` enums, :class:`Job` and the errors a user meets (every subclass of
:class:`EdgeJobsError` in :mod:`edgejobs.errors`).
"""

from edgejobs.app import EdgeJobs, JobSpec
from edgejobs.errors import (
    ConfigError,
    Conflict,
    DatabaseBusy,
    DatabaseReadOnly,
    EdgeJobsError,
    NotFound,
    OutOfResources,
    Overloaded,
    PayloadTooLarge,
    PermanentError,
    RateLimited,
    RequestTimeout,
    RunnerAlreadyActive,
    SchemaTooNew,
    ShuttingDown,
    StorageFull,
    StoreTooOld,
    UnknownJobType,
    UnknownParent,
    ValidationError,
)
from edgejobs.models import Attempt, Job, JobError, Outcome, Priority, Status
from edgejobs.runner.context import AsyncHandler, JobContext, SyncHandler, SyncJobContext
from edgejobs.workflows import Workflow

__version__ = "0.1.0"

__all__ = [
    "AsyncHandler",
    "Attempt",
    "ConfigError",
    "Conflict",
    "DatabaseBusy",
    "DatabaseReadOnly",
    "EdgeJobs",
    "EdgeJobsError",
    "Job",
    "JobContext",
    "JobError",
    "JobSpec",
    "NotFound",
    "Outcome",
    "OutOfResources",
    "Overloaded",
    "PayloadTooLarge",
    "PermanentError",
    "Priority",
    "RateLimited",
    "RequestTimeout",
    "RunnerAlreadyActive",
    "ShuttingDown",
    "Status",
    "StorageFull",
    "SchemaTooNew",
    "StoreTooOld",
    "SyncHandler",
    "SyncJobContext",
    "UnknownJobType",
    "UnknownParent",
    "ValidationError",
    "Workflow",
    "__version__",
]
