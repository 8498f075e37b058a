"""The health scorecard (DESIGN §6): component weights, band thresholds and key features,
changed only through events so every past score stays explainable with the model of its day."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from events.domain import DomainEvent
from events.signals import signal_id

COMPONENTS = ("usage", "adoption", "support", "sentiment", "engagement", "financial")
DEFAULT_WEIGHTS = {"usage": 30.0, "adoption": 20.0, "support": 15.0, "sentiment": 15.0, "engagement": 10.0, "financial": 10.0}
DEFAULT_BANDS = {"green": 70.0, "yellow": 40.0}
SCORECARD_ID = signal_id("scorecard", "default")

Feature = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ScorecardConfig(BaseModel):
    """A whole scorecard. Weights need not sum to 100: they are normalised over the components
    that have data. ``key_features`` empty = the book's features used lately count
    (projections.health_inputs_query.book_key_features)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS)
    )
    bands: dict[str, Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]] = Field(
        default_factory=lambda: dict(DEFAULT_BANDS)
    )
    key_features: list[Feature] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _check(self) -> ScorecardConfig:
        unknown = sorted(set(self.weights) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"weights.{unknown[0]}: unknown component; the components are {', '.join(COMPONENTS)}")
        if not any(self.weights.get(c, 0) > 0 for c in COMPONENTS):
            raise ValueError("weights: at least one component needs a positive weight")
        if set(self.bands) != {"green", "yellow"}:
            raise ValueError("bands: give exactly the lower bounds of green and yellow, e.g. {\"green\": 70, \"yellow\": 40}")
        if self.bands["yellow"] >= self.bands["green"]:
            raise ValueError("bands: yellow's lower bound must be below green's")
        return self

    def full_weights(self) -> dict[str, float]:
        return {c: float(self.weights.get(c, 0.0)) for c in COMPONENTS}


class Scorecard(Aggregate):
    """The one scorecard of this deployment, versioned by its events."""

    class Event(DomainEvent):
        pass

    class Configured(Event, Aggregate.Created):
        config: dict[str, Any]

    class Changed(Event):
        config: dict[str, Any]
        previous: dict[str, Any]

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return SCORECARD_ID

    @event(Configured)
    def __init__(self, *, config: dict[str, Any], actor: str, source: str, source_id: str, occurred_at: datetime) -> None:
        self.config = config

    @event(Changed)
    def change(self, *, config: dict[str, Any], previous: dict[str, Any], actor: str, source: str, source_id: str,
               occurred_at: datetime) -> None:  # fmt: skip
        self.config = config
