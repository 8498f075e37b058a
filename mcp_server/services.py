"""The composition root: settings -> codec -> application -> view store -> projections.

Every entry point (`cs serve`, `cs demo`, `cs import`, tests) opens one :class:`Services`
and passes it down; nothing else constructs these objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from connectors.service import Ingestion
from events.application import CustomerSuccess
from events.personal import PersonalDataCodec, build_codec
from events.settings import Settings
from projections.catalog import default_projections
from projections.profile import CustomerDirectory, CustomerProfileView
from projections.relay import EventRelay
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

    def ingestion(self, actor: str) -> Ingestion:
        """Connectors' entry point, matching against the customers known now."""
        self.engine.ensure_current()
        return Ingestion(self.app, CustomerDirectory(self.store), self.settings, actor=actor)


KAFKA_RELAY = "kafka_publisher_v1"


def build_kafka_relay(settings: Settings, store: ViewStore, app: CustomerSuccess) -> EventRelay | None:
    """The Kafka publisher (DESIGN §9) when ``CS_KAFKA_BOOTSTRAP`` is set, else None."""
    if not settings.kafka_bootstrap:
        return None
    from connectors.kafka import KafkaSink
    from events.envelope import CustomerResolver, EnvelopeEncoder

    encode = EnvelopeEncoder(app.mapper, CustomerResolver(app.recorder, app.mapper))
    sink = KafkaSink(settings.kafka_bootstrap, settings.kafka_topic, encode)
    return EventRelay(KAFKA_RELAY, sink, store, app.recorder)


@contextmanager
def open_services(settings: Settings, *, run_projections: bool = True, background: bool = False) -> Iterator[Services]:
    """Open everything; with ``run_projections`` this process takes the runner locks it can
    and keeps those views current (``background`` adds a polling thread for writes made by
    other processes)."""
    codec = build_codec(settings)
    app = CustomerSuccess(settings, codec)
    store = build_view_store(settings)
    relays = [r for r in (build_kafka_relay(settings, store, app),) if r is not None]
    engine = ProjectionEngine(default_projections(), store, app, relays=relays)
    try:
        engine.setup()
        if run_projections:
            engine.own()
            if background:
                engine.start()
        yield Services(settings, codec, app, store, engine, CustomerProfileView(store, codec), TimelineView(store, codec))
    finally:
        engine.stop()
        for relay in relays:
            getattr(relay.sink, "close", lambda: None)()
        store.close()
        app.close()
        codec.close()
