"""Request and response bodies of the API (pydantic; the OpenAPI schema is made from them)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..search import StudySpec

__all__ = ["Health", "Job", "JobList", "ParetoAnswer", "StudyCreate", "StudyInfo", "StudyList", "TargetUpdate",
           "TrialPage"]


class StudyCreate(StudySpec):
    """A study spec (the fields of ``nas study create``) and, optionally, its first target.

    ``target`` (default: ``trials``) is how many networks within the budget workers evaluate; 0 creates the
    study without starting it (``PATCH`` starts it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)
    #: A profile name only, never a path: the body is parsed on the event loop, where no file is read; the
    #: route checks the name against this server's profiles and its database's (off the loop).
    cost_device_by_name: ClassVar[bool] = True
    target: int | None = Field(default=None, ge=0, le=1_000_000)
    enqueue: list[dict[str, Any]] = Field(default_factory=list, max_length=100,
                                          description="architectures (ArchSpec JSON, as the json export gives) to "
                                                      "evaluate first; each must fit the space and the budget")
    warm_start: str | None = Field(default=None, max_length=255,
                                   description="a study whose Pareto front is evaluated first (members that do "
                                               "not fit are skipped)")


class TargetUpdate(BaseModel):
    """``target``: the study's new target of finished trials (raise it to start or extend a search)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    target: int = Field(ge=0, le=1_000_000)


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    schema_version: int
    version: str


class StudyInfo(BaseModel):
    """A study: its spec, target and progress."""

    name: str
    spec: dict[str, Any]
    target: int = Field(description="networks to evaluate within the budget (rejected samples do not count)")
    finished: int = Field(description="networks evaluated within the budget: trained, reused or stopped early")
    rejected: int = Field(default=0, description="samples rejected over the budget before training")
    counts: dict[str, int]
    pareto_size: int | None = None
    jobs: dict[str, int] = Field(default_factory=dict)
    created_at: str | None = None
    feasibility: dict[str, Any] | None = Field(
        default=None, description="the space's exact minimum per budgeted resource and its share within the budget")
    fit: dict[str, Any] | None = Field(default=None, description="how the space was scaled to the budget, if it was")
    warnings: list[str] = Field(default_factory=list, description="on creation: e.g. a share within budget under 1%")
    warm_start: dict[str, Any] | None = Field(default=None, description="on creation: what was enqueued, skipped")
    unreadable: str | None = Field(default=None, description="set when the stored spec no longer validates (written "
                                                             "by another version, or edited): why; such a study can "
                                                             "only be listed and deleted")


class StudyList(BaseModel):
    studies: list[StudyInfo]


class TrialPage(BaseModel):
    trials: list[dict[str, Any]]
    next_cursor: str | None = None


class ParetoAnswer(BaseModel):
    study: str
    where: str | None = None
    objectives: list[str]
    rows: list[dict[str, Any]]


class Job(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    kind: str
    study: str
    trial: int
    state: str
    attempts: int
    progress: dict[str, Any]
    error: str | None = None


class JobList(BaseModel):
    jobs: list[Job]


class PlotPoints(BaseModel):
    """What the study page's plot draws: every trial and refined candidate with its accuracy and full cost."""

    study: str
    objectives: list[str]
    directions: list[str]
    limits: dict[str, float] = Field(
        description="the budget's upper limit per resource; hw_cost: its value with every resource at its limit "
                    "(no network within the budget has more)")
    costs: list[str] = Field(description="resources the points have, cost objectives first, then the budget's")
    trials: list[dict[str, Any]] = Field(
        description="every trial: number, state, status (trained, reused, over_budget, pruned, failed), accuracy "
                    "(validation; null when not evaluated), cost (all totals), violations (over budget: relative "
                    "excess per resource)")
    refined: list[dict[str, Any]] = Field(
        description="refinement candidates within the budget: refined (id), trial (parent), method, step, "
                    "parent_step, source, accuracy, cost")
