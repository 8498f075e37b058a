"""The projections this build runs, in one list (used by `cs serve`, `cs worker`, `cs rebuild`)."""

from __future__ import annotations

from projections.audit import AuditChainProjection
from projections.base import Projection
from projections.health_inputs import HealthInputsProjection
from projections.late_events import LateEventsProjection
from projections.milestones import MilestonesProjection
from projections.feedback import EmailProjection, FeedbackProjection
from projections.profile import CustomerProfileProjection
from projections.segments import SegmentsProjection
from projections.support import SupportProjection
from projections.sync_status import SyncStatusProjection
from projections.timeline import TimelineProjection
from projections.usage import UsageProjection


def default_projections() -> list[Projection]:
    return [
        CustomerProfileProjection(),
        TimelineProjection(),
        SupportProjection(),
        UsageProjection(),
        FeedbackProjection(),
        EmailProjection(),
        SyncStatusProjection(),
        HealthInputsProjection(),
        LateEventsProjection(),
        SegmentsProjection(),
        MilestonesProjection(),
        AuditChainProjection(),
    ]
