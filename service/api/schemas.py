"""Request and response envelopes. Arrays inside them are parsed by ``codecs``, not by pydantic."""

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from optim_core import ALGORITHMS, NAMES
from service.sessions.aggregation import MAX_WEIGHT, MAX_WORKERS, WORKER_ID
from service.wire.json_arrays import MAX_STEP

if TYPE_CHECKING:
    OptimizerName = str
else:
    OptimizerName = Literal[NAMES]
    """The registry's algorithms, by name (a Literal built from it, so that the schema lists them)."""

NUMERIC_ARRAY_SCHEMA = {
    "description": "A number (a 0-d array) or rectangular nested lists of numbers.",
    "anyOf": [{"type": "number"}, {"type": "array", "items": {}}],
}
NumericArray = Annotated[Any, WithJsonSchema(NUMERIC_ARRAY_SCHEMA)]
"""A number (0-d) or nested lists of numbers; validated with numpy, not element by element."""

NUMERICS_FLAGS = ("foreach", "differentiable", "capturable")
"""torch's implementation switches: accepted, and without effect on the numbers."""
HYPERPARAMETERS_BY_OPTIMIZER = "; ".join(
    f"{spec.torch_name}: {', '.join(key for key in spec.defaults if key not in NUMERICS_FLAGS)}"
    for spec in ALGORITHMS.values()
)
Hyperparameters = Annotated[
    dict[str, Any],
    Field(
        description=f"torch's names and defaults. {HYPERPARAMETERS_BY_OPTIMIZER}. Also torch's "
        f"{', '.join(NUMERICS_FLAGS)} flags, which do not change the numbers.",
        examples=[{"lr": 0.01, "momentum": 0.9}],
    ),
]


def _whole_float_as_int(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


WholeNumber = Annotated[int, BeforeValidator(_whole_float_as_int)]
"""An integer as JSON Schema has it: a number with no fractional part, 3.0 too (strict pydantic takes 3 only)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ParamGroupIn(BaseModel):
    """A param group: its param names, and hyperparameters that override the session's."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"additionalProperties": True})
    params: list[str]


class CreateSessionRequest(Strict):
    optimizer: OptimizerName
    params: dict[str, NumericArray]
    hyperparameters: Hyperparameters = Field(default_factory=dict)
    param_groups: list[ParamGroupIn] | None = Field(
        default=None, description="Each param in exactly one group; default: one group with every param."
    )
    dtype: Literal["float32", "float64"] = "float32"
    state_dict: dict[str, Any] | None = Field(default=None, description="Optimizer state to start from (torch layout).")
    step: WholeNumber = Field(
        default=0,
        ge=0,
        le=MAX_STEP,
        description="The step counter to start from (as in a checkpoint), up to 2**53 - 1.",
    )
    aggregation: dict[str, Any] | None = Field(
        default=None, description="Data-parallel training: how the session takes its workers' contributions."
    )
    clip_grad_norm: dict[str, Any] | None = Field(
        default=None, description="Clip each step's gradients by their global norm: {max_norm, norm_type}."
    )
    nonfinite: Literal["reject", "skip"] = "reject"
    lr_scheduler: dict[str, Any] | None = Field(
        default=None,
        description="An LR schedule, {name: torch's class name, ...its arguments}, advanced after every step (or "
        "a checkpoint's, {config, state_dict, group_keys}).",
    )


class StepRequest(Strict):
    grads: dict[str, NumericArray] = Field(description="Gradients by param name; absent params are skipped.")
    loss: float | None = Field(
        default=None, allow_inf_nan=False, description="The client's loss for these gradients (finite)."
    )
    worker: str | None = Field(
        default=None, pattern=f"^{WORKER_ID.pattern}$", description="An aggregating session's contributor."
    )
    based_on_step: WholeNumber | None = Field(
        default=None, ge=0, le=MAX_STEP, description="The step whose params the gradients were computed from."
    )
    weight: float | None = Field(
        default=None,
        gt=0,
        le=MAX_WEIGHT,
        allow_inf_nan=False,
        description="How much the contribution counts (its examples, say); 1 by default.",
    )

    @field_validator("grads")
    @classmethod
    def not_empty(cls, grads: dict[str, NumericArray]) -> dict[str, NumericArray]:
        """Checked with the body, before any precondition (If-Match) is: the core says the same."""
        if not grads:
            raise ValueError("grads is empty; a step needs at least one gradient")
        return grads

    @model_validator(mode="after")
    def contribution_complete(self) -> "StepRequest":
        if self.worker is not None and self.based_on_step is None:
            raise ValueError("a contribution (worker given) needs based_on_step")
        if self.worker is None and (self.based_on_step is not None or self.weight is not None):
            raise ValueError("based_on_step and weight come with worker, on an aggregating session")
        return self


class PatchSessionRequest(Strict):
    hyperparameters: Hyperparameters | None = None
    param_groups: list[dict[str, Any]] | None = Field(
        default=None, description="One entry of hyperparameters per group, in order."
    )
    clip_grad_norm: dict[str, Any] | None = Field(default=None, description="null turns clipping off.")
    nonfinite: Literal["reject", "skip"] | None = None
    lr_scheduler: dict[str, Any] | None = Field(
        default=None, description="A new LR schedule, started on the groups' current lrs; null removes it."
    )

    @model_validator(mode="after")
    def something_to_change(self) -> "PatchSessionRequest":
        if self.hyperparameters is not None and self.param_groups is not None:
            raise ValueError("give at most one of 'hyperparameters' and 'param_groups'")
        settings = self.model_fields_set & {"clip_grad_norm", "nonfinite", "lr_scheduler"}
        if self.hyperparameters is None and self.param_groups is None and not settings:
            raise ValueError("give 'hyperparameters', 'param_groups', 'clip_grad_norm', 'nonfinite' or 'lr_scheduler'")
        return self


class ParamGroupOut(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    params: list[str]


class SessionSummary(BaseModel):
    id: str
    optimizer: OptimizerName
    dtype: Literal["float32", "float64"]
    step: int
    param_groups: list[ParamGroupOut]
    shapes: dict[str, list[int]]
    created_at: datetime
    updated_at: datetime
    tenant: str = Field(description="The tenant the session belongs to.")
    aggregation: dict[str, Any] | None = Field(
        default=None, description="How a data-parallel session takes contributions; null for an ordinary one."
    )
    clip_grad_norm: dict[str, Any] | None = Field(
        default=None, description="Each step's gradients are clipped by their global norm first; null for none."
    )
    nonfinite: Literal["reject", "skip"] = Field(
        default="reject", description="A step with a non-finite gradient: refused, or answered and not applied."
    )
    lr_scheduler: dict[str, Any] | None = Field(
        default=None, description="The LR schedule's config ({name, ...torch's arguments}); null for none."
    )


class SessionWithParams(SessionSummary):
    params: dict[str, NumericArray]


class SessionPage(BaseModel):
    items: list[SessionSummary]
    next_cursor: str | None


class Spread(BaseModel):
    min: float | None
    median: float | None
    max: float | None


class StepMetrics(BaseModel):
    """A step's telemetry (docs/api.md defines each entry). A number that is not finite is null."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    grad_norm: float | None = Field(description="L2 norm of the gradients as received, over all stepped params.")
    update_norm: float | None = Field(description="L2 norm of the change in the stepped params.")
    param_norm: float | None = Field(description="L2 norm of the stepped params after the step.")
    lr: list[float | None] = Field(description="Each param group's learning rate.")
    loss: float | None = Field(description="The loss the client sent with the step, if any.")
    step_size: Spread | None = Field(default=None, description="Rprop: min, median and max step size.")
    sign_change_fraction: float | None = Field(
        default=None, description="Rprop: fraction of elements whose gradient changed sign."
    )
    effective_lr: Spread | None = Field(
        default=None, description="RMSprop: min, median and max of lr / (sqrt(v) + eps) per element."
    )


class Params(BaseModel):
    step: int
    params: dict[str, NumericArray]


class StepResponse(Params):
    metrics: StepMetrics | None = Field(
        description="The step's telemetry; null for a replay of a step the history no longer keeps. In a "
        "safetensors answer, a JSON string under `metrics` in `__metadata__`."
    )
    staleness: int | None = Field(
        default=None, description="An asynchronous session's step: the staleness it was applied with."
    )
    skipped: bool | None = Field(
        default=None,
        description="true: the gradients were not finite and the session skips such steps; nothing was applied.",
    )


class RoundPending(BaseModel):
    """A synchronous round still open: poll its Location."""

    round: int
    contributions: int = Field(description="The contributions in so far.")
    workers: int = Field(description="The contributions that close it at once.", le=MAX_WORKERS)
    closed: Literal[False]


class MetricsItem(StepMetrics):
    step: int
    time: datetime = Field(description="When the step was applied (UTC).")


class MetricsPage(BaseModel):
    items: list[MetricsItem]
    next_cursor: int | None = Field(description="Pass as `since` to read on; null on the last page.")


class StateDict(BaseModel):
    """torch's optimizer state_dict layout, with arrays as nested lists."""

    model_config = ConfigDict(extra="forbid")
    state: dict[str, dict[str, Any]]
    param_groups: list[dict[str, Any]]


class Checkpoint(BaseModel):
    optimizer: OptimizerName
    dtype: Literal["float32", "float64"]
    params: dict[str, NumericArray]
    param_groups: list[ParamGroupOut]
    state_dict: StateDict
    step: int
    aggregation: dict[str, Any] | None = None
    clip_grad_norm: dict[str, Any] | None = None
    nonfinite: Literal["reject", "skip"] = "reject"
    lr_scheduler: dict[str, Any] | None = None


class LRSchedulerView(BaseModel):
    """A session's LR schedule; every member null without one."""

    config: dict[str, Any] | None = Field(description="torch's class name and arguments.")
    state_dict: dict[str, Any] | None = Field(description="torch's scheduler.state_dict(), as JSON.")
    last_lr: list[float] | None = Field(description="get_last_lr(): each group's lr for the next step.")


class LRSchedulerState(Strict):
    state_dict: dict[str, Any] = Field(description="torch's scheduler.state_dict() of the session's schedule.")


class Status(BaseModel):
    status: Literal["ok", "ready"]


class QuotaView(BaseModel):
    limit: int | None = Field(description="None: no limit.")
    usage: int | None = Field(default=None, description="What the tenant holds now.")


class KeyView(BaseModel):
    id: str
    admin: bool


class RateLimitView(BaseModel):
    requests_per_second: float
    burst: int


class TenantView(BaseModel):
    tenant: str
    key: KeyView | None = Field(description="None when the server serves requests without keys.")
    quotas: dict[Literal["max_sessions", "max_bytes", "max_params"], QuotaView]
    rate_limit: RateLimitView | None = Field(description="Per key; None without a key or a limit.")
