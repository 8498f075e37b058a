"""The composition root: settings -> codec -> application -> view store -> projections.

Every entry point (`cs serve`, `cs demo`, `cs import`, tests) opens one :class:`Services`
and passes it down; nothing else constructs these objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from events.application import CustomerSuccess
from events.personal import PersonalDataCodec, build_codec
from events.settings import Settings
from projections.catalog import default_projections
from projections.profile import CustomerProfileView
from projections.runner import ProjectionEngine
from projections.store import ViewStore, build_view_store
from projections.timeline import TimelineView


@dataclass
class Services:
    settings: Settings
    codec: PersonalDataCodec
    app: CustomerSuccess
    store: ViewStore
    engine: ProjectionEngine
    profiles: CustomerProfileView
    timeline: TimelineView


@contextmanager
def open_services(settings: Settings, *, run_projections: bool = True, background: bool = False) -> Iterator[Services]:
    """Open everything; with ``run_projections`` this process takes the runner locks it can
    and keeps those views current (``background`` adds a polling thread for writes made by
    other processes)."""
    codec = build_codec(settings)
    app = CustomerSuccess(settings, codec)
    store = build_view_store(settings)
    engine = ProjectionEngine(default_projections(), store, app)
    try:
        engine.setup()
        if run_projections:
            engine.own()
            if background:
                engine.start()
        yield Services(settings, codec, app, store, engine, CustomerProfileView(store, codec), TimelineView(store, codec))
    finally:
        engine.stop()
        store.close()
        app.close()
        codec.close()
