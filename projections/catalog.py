"""The projections this build runs, in one list (used by `cs serve`, `cs worker`, `cs rebuild`)."""

from __future__ import annotations

from projections.base import Projection
from projections.profile import CustomerProfileProjection
from projections.timeline import TimelineProjection


def default_projections() -> list[Projection]:
    return [CustomerProfileProjection(), TimelineProjection()]
