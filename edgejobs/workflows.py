"""Workflows: a graph of dependent jobs, built in code and submitted in one transaction.

A :class:`Workflow` collects nodes. Each node is one job; it runs after the nodes (or existing
jobs) named in its ``after``. A node can only name nodes added before it, so a workflow cannot
contain a cycle: there is no way to write one down. :meth:`Workflow.submit` hands the whole
graph to :meth:`EdgeJobs.submit_many`, which inserts it in one transaction — every job is
created, or none is (an unknown job type or parent anywhere rejects the whole graph).

Running the graph is the ordinary dependency machinery (SPEC §2.3): a node is ``blocked`` until
all its parents completed and is queued in the very transaction that completes its last parent;
a parent that ends without completing cancels every blocked node below it.

Example::

    wf = Workflow(org="acme")
    fetch = wf.add("fetch", params={"url": url})
    parts = wf.group(*(Step("transform", {"part": i}) for i in range(3)), after=fetch)
    merge = wf.add("merge", after=parts)
    jobs = await wf.submit(ej)
    jobs[merge].status, jobs["fetch"].id
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, overload

from edgejobs.app import JobSpec, check_org
from edgejobs.errors import ValidationError
from edgejobs.models import Job, Priority

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

RunAt: TypeAlias = datetime | str | int | float
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One job of a :meth:`Workflow.chain` or :meth:`Workflow.group`, not yet placed.

    The fields mean what the arguments of :meth:`Workflow.add` mean.
    """

    job_type: str
    params: Mapping[str, Any] | None = None
    name: str | None = None
    priority: Priority | str | None = None
    run_at: RunAt | None = None
    delay_s: float | None = None
    dedup: bool | None = None
    dedup_key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Node:
    """A job of a workflow: a handle to depend on, and to find the job after submitting.

    Nodes compare by identity; ``index`` is the node's position in the submitted batch.
    """

    name: str
    index: int
    spec: JobSpec
    workflow: Workflow = dataclasses.field(repr=False)

    # The identity comparison every object has, declared: a strict type checker refuses
    # `node in jobs` (WorkflowJobs is a Mapping[str, Job]) unless the node's class defines
    # __eq__, though the lookup takes a Node.
    def __eq__(self, other: object) -> bool:
        return True if self is other else NotImplemented

    __hash__ = object.__hash__


After: TypeAlias = Node | str | Iterable[Node | str]
"""What a node runs after: a node, an existing job id, or an iterable of them (e.g. a group)."""


class Workflow:
    """A builder for a job graph of one org, submitted atomically with :meth:`submit`."""

    def __init__(self, org: str) -> None:
        self.org = check_org(org)
        self._nodes: list[Node] = []
        self._names: set[str] = set()

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The nodes in the order they were added (the order of the submitted batch)."""
        return tuple(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def add(
        self,
        job_type: str,
        *,
        params: Mapping[str, Any] | None = None,
        after: After = (),
        name: str | None = None,
        priority: Priority | str | None = None,
        run_at: RunAt | None = None,
        delay_s: float | None = None,
        dedup: bool | None = None,
        dedup_key: str | None = None,
    ) -> Node:
        """Add one job that runs after every node or job id in ``after``; return its node.

        ``name`` (default: the job type, suffixed ``#2``, ``#3``… when taken) must be unique in
        the workflow; it is the key of the job in :meth:`submit`'s answer. The other arguments
        are those of :meth:`EdgeJobs.submit`; they are validated when the workflow is submitted.
        """
        if not isinstance(job_type, str) or not job_type:
            raise ValidationError("a workflow node needs a job type (a non-empty string)")
        depends_on = self._resolve(after)  # first: a refused call must not take the name
        node_name = self._claim_name(name, job_type)
        spec = JobSpec(
            job_type=job_type,
            org=self.org,
            params=params,
            priority=priority,
            depends_on=depends_on,
            run_at=run_at,
            delay_s=delay_s,
            dedup=dedup,
            dedup_key=dedup_key,
        )
        node = Node(name=node_name, index=len(self._nodes), spec=spec, workflow=self)
        self._nodes.append(node)
        return node

    def add_step(self, step: Step | str, *, after: After = ()) -> Node:
        """Add a :class:`Step` (or a bare job type) that runs after ``after``."""
        if isinstance(step, str):
            step = Step(step)
        if not isinstance(step, Step):
            raise ValidationError(f"expected a Step or a job type, got {type(step).__name__}")
        return self.add(
            step.job_type,
            params=step.params,
            after=after,
            name=step.name,
            priority=step.priority,
            run_at=step.run_at,
            delay_s=step.delay_s,
            dedup=step.dedup,
            dedup_key=step.dedup_key,
        )

    def chain(self, *steps: Step | str, after: After = ()) -> list[Node]:
        """Add steps that run one after the other; the first runs after ``after``.

        Returns the nodes in order (the last one is what a later node waits for).
        """
        nodes: list[Node] = []
        previous: After = after
        for step in steps:
            node = self.add_step(step, after=previous)
            nodes.append(node)
            previous = node
        return nodes

    def group(self, *steps: Step | str, after: After = ()) -> list[Node]:
        """Add steps that all run after ``after`` and not after each other (fan-out).

        Pass the returned list as another node's ``after`` to wait for all of them (fan-in).
        """
        # Read ``after`` once: it may be a one-shot iterator, and every member must wait for
        # exactly the same parents.
        parents = self._normalize(after)
        return [self.add_step(step, after=parents) for step in steps]

    def to_specs(self) -> list[JobSpec]:
        """The batch :meth:`EdgeJobs.submit_many` takes: node references become indexes."""
        return [node.spec for node in self._nodes]

    async def submit(self, ej: EdgeJobs) -> WorkflowJobs:
        """Create every job of the workflow in one transaction (all or nothing).

        A node that deduplicates against a pending job (SPEC §2.8) maps to that job, marked
        ``deduplicated``; its dependents then wait for it.
        """
        jobs = await ej.submit_many(self.to_specs())
        return WorkflowJobs(self, jobs)

    # -- internals ------------------------------------------------------------------------------

    def _claim_name(self, name: str | None, job_type: str) -> str:
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValidationError("a node name must be a non-empty string")
            if name in self._names:
                raise ValidationError(f"the workflow already has a node named {name!r}")
        else:
            name = job_type
            suffix = 2
            while name in self._names:
                name = f"{job_type}#{suffix}"
                suffix += 1
        self._names.add(name)
        return name

    def _normalize(self, after: After) -> list[Node | str]:
        items: Iterable[Any]
        if isinstance(after, Node | str):
            items = (after,)
        elif isinstance(after, Iterable):
            items = after
        else:
            raise ValidationError(f"after must name nodes or job ids, got {type(after).__name__}")
        checked: list[Node | str] = []
        for item in items:
            if isinstance(item, Node):
                # Only a node of this workflow, hence one added earlier: this is what makes a
                # cycle impossible to express.
                if item.workflow is not self:
                    raise ValidationError(f"node {item.name!r} belongs to another workflow")
            elif not isinstance(item, str) or not item:
                raise ValidationError(f"after must name nodes or job ids, got {item!r}"[:200])
            checked.append(item)
        return checked

    def _resolve(self, after: After) -> tuple[str | int, ...]:
        refs: list[str | int] = []
        for item in self._normalize(after):
            ref = item.index if isinstance(item, Node) else item
            if ref not in refs:
                refs.append(ref)
        return tuple(refs)


class WorkflowJobs(Mapping[str, Job]):
    """The jobs a workflow created, by node name or by :class:`Node`, in node order."""

    def __init__(self, workflow: Workflow, jobs: Sequence[Job]) -> None:
        self._workflow = workflow
        self.jobs: list[Job] = list(jobs)
        """The jobs in node order."""
        self._by_name = {node.name: job for node, job in zip(workflow.nodes, jobs, strict=True)}

    def __getitem__(self, key: str | Node) -> Job:
        if isinstance(key, Node):
            # A node of another workflow, or one added to this one after the submit, has no
            # job here: a KeyError, which is what get() and `in` rely on (not an IndexError).
            if key.workflow is not self._workflow or key.index >= len(self.jobs):
                raise KeyError(key.name)
            return self.jobs[key.index]
        return self._by_name[key]

    # get() goes through __getitem__, so it takes a Node too; Mapping[str, Job] types it for
    # names only, and a strict type checker refused `jobs.get(node)`.
    @overload
    def get(self, key: str | Node) -> Job | None: ...

    @overload
    def get(self, key: str | Node, default: Job) -> Job: ...

    @overload
    def get(self, key: str | Node, default: _T) -> Job | _T: ...

    def get(self, key: str | Node, default: object = None) -> object:
        """The job of a node name or :class:`Node`, or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def ids(self) -> dict[str, str]:
        """Job ids by node name."""
        return {name: job.id for name, job in self._by_name.items()}
