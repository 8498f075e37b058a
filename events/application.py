"""The command layer: one eventsourcing Application, the unit of work for every command.

Each command validates its input first (nothing is recorded on bad input), then appends
all of its events in one atomic ``save`` and returns the log position of the last event,
so a following read can wait for the projections to reach it (read-your-writes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from typing import Any, Literal
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import BaseAggregate
from eventsourcing.domain import DomainEvent as LibraryDomainEvent
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Mapper, Recording, StoredEvent
from pydantic import ValidationError

from events.commands import (
    ChurnCustomer,
    CommandMeta,
    OverrideHealth,
    OverrideStage,
    RegisterCustomer,
    UpdateCustomer,
)
from events.domain import CONTRACT_FIELDS, Customer, customer_id_for
from events.errors import CustomerNotFoundError, InvalidInputError
from events.mapper import StateMapper
from events.milestones import MilestoneCommands
from events.personal import PersonalDataCodec
from events.scorecard import SCORECARD_ID, Scorecard, ScorecardConfig
from events.segments import (Segment, SegmentNotFoundError, SegmentResult, segment_description, segment_id,
                             segment_name, validate_rules)  # fmt: skip
from events.signals import Connector
from events.settings import Settings

Status = Literal["created", "existing", "updated", "unchanged"]


@dataclass(frozen=True)
class CommandResult:
    """What a command did. ``position`` is None when nothing was recorded."""

    customer_id: UUID
    external_key: str
    status: Status
    position: int | None
    changes: list[dict[str, Any]] = field(default_factory=list)


def _meta_kwargs(meta: CommandMeta) -> dict[str, Any]:
    return {
        "actor": meta.actor,
        "source": meta.source,
        "source_id": meta.source_id,
        "occurred_at": meta.occurred_at,
    }


def _registered_kwargs(cmd: RegisterCustomer, meta: CommandMeta) -> dict[str, Any]:
    """A customer exists from its contract start: registering an account that signed earlier
    backdates ``occurred_at`` to that day, so as-of questions about that time know it."""
    kw = _meta_kwargs(meta)
    if cmd.contract_start:
        start = datetime.combine(cmd.contract_start, time(), timezone.utc)
        kw["occurred_at"] = min(start, meta.occurred_at)
    return kw


def _future_expiry(expires_at: datetime, meta: CommandMeta) -> datetime:
    """An override's expiry as aware UTC; one in the past is refused (naive = UTC)."""
    expires = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=timezone.utc)
    if expires <= meta.occurred_at:
        raise InvalidInputError("expires_at", f"{expires.isoformat()} is in the past; give a future instant")
    return expires


def _still_active(override: dict[str, Any] | None, meta: CommandMeta) -> dict[str, Any] | None:
    """The override a new one replaces (kept in the new event: nothing is silently wiped)."""
    if override and datetime.fromisoformat(override["expires_at"]) > meta.occurred_at:
        return override
    return None


def _validate(model: type[Any], data: Any) -> Any:
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError.from_validation(exc) from None


class _Collected(ProcessingEvent[UUID]):
    """eventsourcing's ProcessingEvent, with nominal type checks first.

    The library tells events from aggregates with ``isinstance`` against runtime-checkable
    ``Protocol`` classes, which on Python 3.11 walks the protocol's attributes on every call
    (about 14 us per event, a tenth of recording a webhook delivery). Every event and
    aggregate of this application subclasses the library's own classes, so a plain
    ``isinstance`` on those decides the same way; anything else still goes the library's way.
    The order of the events is kept."""

    def collect_events(self, *objs: Any, **kwargs: Any) -> None:
        for obj in objs:
            if isinstance(obj, LibraryDomainEvent):
                self.events.append(obj)
            elif isinstance(obj, BaseAggregate):
                self.events.extend(obj.collect_events())
                self.aggregates[obj.id] = obj
            else:
                super().collect_events(obj)
        self.saved_kwargs.update(kwargs)


class CustomerSuccess(Application[UUID], MilestoneCommands):
    """Commands on customers. Later capabilities add their aggregates here."""

    # A connector gains one event per batch for ever: snapshot it so loading stays cheap.
    snapshotting_intervals = {Connector: 100}

    def __init__(self, settings: Settings, codec: PersonalDataCodec) -> None:
        self.settings = settings
        self.codec = codec
        super().__init__(env=settings.eventsourcing_env())

    def construct_mapper(self) -> Mapper[UUID]:
        """The library's mapper, with the usage-day events' states encoded by orjson (the same
        bytes, see events/mapper.py)."""
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=StateMapper)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """:meth:`Application.save` (eventsourcing 9.5.6, step for step) collecting through
        :class:`_Collected`."""
        processing_event = _Collected()
        processing_event.collect_events(*objs, **kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # deprecated in the library, still called by its save
        return recordings

    # ---------------------------------------------------------------- lookups
    def resolve(self, client_id: str) -> UUID:
        """The aggregate id for an external key or a returned id; raises if unknown."""
        candidate = self.candidate_id(client_id)
        if not self.exists(candidate):
            raise CustomerNotFoundError(client_id)
        return candidate

    @staticmethod
    def candidate_id(client_id: str) -> UUID:
        """The id ``client_id`` names (an external key or a returned id), known or not: a reader
        that looks the customer up in a view checks existence there, in its own snapshot."""
        text = (client_id or "").strip()
        if not text:
            raise InvalidInputError("client_id", "required: an external key (e.g. 'acme-corp') or a customer id")
        try:
            return UUID(text)
        except ValueError:
            return customer_id_for(text)

    def exists(self, aggregate_id: UUID) -> bool:
        """One indexed row read (``id in repository`` would replay the whole aggregate)."""
        return bool(self.recorder.select_events(aggregate_id, limit=1))

    def save_events(self, events: list[DomainEventProtocol[UUID]], *aggregates: Any) -> list[Recording[UUID]]:
        """``save(*events, *aggregates)`` for the many pending events of a bulk import (kept as
        the bulk callers' entry point; :meth:`save` itself no longer pays the library's
        runtime-Protocol ``isinstance`` per object)."""
        return self.save(*events, *aggregates)

    def load_many(self, aggregate_ids: Iterable[UUID], batch: int = 500,
                  held: dict[UUID, Any] | None = None) -> dict[UUID, Any]:  # fmt: skip
        """The stored aggregates among ``aggregate_ids`` (absent ids are left out), each folded
        from all of its events: one query per ``batch`` ids where ``exists`` + ``repository.get``
        take two per id. No snapshots and no cache: for aggregates with a few events (usage days).

        ``held``: aggregates the caller already has at their stored state (e.g. those it has just
        saved); they are not read again but returned as found. Either way the result is ordered
        as the queries return rows: batch by batch, by id within a batch."""
        ids = list(dict.fromkeys(aggregate_ids))
        found: dict[UUID, Any] = {}
        for start in range(0, len(ids), batch):
            part = ids[start : start + batch]
            folded: dict[Any, Any] = {}
            for stored in self._select_events_of([i for i in part if i not in held] if held else part):
                event: Any = self.mapper.to_domain_event(stored)
                aggregate_id: Any = stored.originator_id
                folded[aggregate_id] = event.mutate(folded.get(aggregate_id))
            if held and any(i in held for i in part):
                folded.update((i, held[i]) for i in part if i in held)
                folded = {i: folded[i] for i in sorted(folded)}
            found.update(folded)
        return found

    def _select_events_of(self, ids: list[UUID]) -> list[StoredEvent]:
        """Every stored event of these aggregates, ordered by aggregate and version."""
        recorder: Any = self.recorder
        if not ids:
            return []
        if self.settings.database_url:
            from psycopg.sql import SQL, Identifier

            query = SQL("SELECT * FROM {}.{} WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version")
            table = query.format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
            with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(table, (ids,))
                return [StoredEvent(originator_id=r["originator_id"], originator_version=r["originator_version"],
                                    topic=r["topic"], state=bytes(r["state"])) for r in curs.fetchall()]  # fmt: skip
        marks = ",".join("?" * len(ids))
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(f"SELECT * FROM {recorder.events_table_name} WHERE originator_id IN ({marks}) "
                         "ORDER BY originator_id, originator_version", [i.hex for i in ids])  # fmt: skip
            return [StoredEvent(originator_id=recorder.convert_originator_id(r["originator_id"]),
                                originator_version=r["originator_version"], topic=r["topic"], state=r["state"])
                    for r in curs.fetchall()]  # fmt: skip

    def get_customer(self, client_id: str) -> Customer:
        customer_id = self.resolve(client_id)
        try:
            customer: Customer = self.repository.get(customer_id)
        except AggregateNotFoundError:  # deleted between resolve and get: not possible today
            raise CustomerNotFoundError(client_id) from None
        return customer

    def last_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    # --------------------------------------------------------------- commands
    def register_customer(self, data: RegisterCustomer | dict[str, Any], meta: CommandMeta) -> CommandResult:
        """Create the customer (and its primary contact) unless its external key exists."""
        cmd: RegisterCustomer = _validate(RegisterCustomer, data)
        assert cmd.external_key is not None
        customer_id = customer_id_for(cmd.external_key)
        if self.exists(customer_id):
            return CommandResult(customer_id, cmd.external_key, "existing", None)
        customer = Customer(external_key=cmd.external_key, profile=cmd.profile(), **_registered_kwargs(cmd, meta))
        if cmd.contact_name or cmd.contact_email:
            self._add_contact(customer, cmd.contact_name, cmd.contact_email, None, True, meta)
        try:
            recordings = self.save(customer)
        except IntegrityError:  # a concurrent registration of the same key won the race
            return CommandResult(customer_id, cmd.external_key, "existing", None)
        return CommandResult(customer_id, cmd.external_key, "created", recordings[-1].notification.id)

    def update_customer(self, client_id: str, changes: dict[str, Any], meta: CommandMeta) -> CommandResult:
        """Apply profile/contract changes; each changed field is recorded with old and new value."""
        accepted = UpdateCustomer.model_fields
        if not changes:
            raise InvalidInputError("changes", f"nothing to change; pass at least one of: {', '.join(accepted)}")
        unknown = sorted(set(changes) - set(accepted))
        if unknown:
            raise InvalidInputError(
                f"changes.{unknown[0]}", f"unknown field; accepted fields are: {', '.join(accepted)}"
            )
        cmd: UpdateCustomer = _validate(UpdateCustomer, changes)
        customer = self.get_customer(client_id)
        profile_changes, contract_changes = self._diff(customer, cmd.changes())
        if not profile_changes and not contract_changes:
            return CommandResult(customer.id, customer.external_key, "unchanged", None)
        self._apply_changes(customer, profile_changes, contract_changes, meta)
        recordings = self.save(customer)
        return CommandResult(
            customer.id,
            customer.external_key,
            "updated",
            recordings[-1].notification.id,
            profile_changes + contract_changes,
        )

    def churn_customer(self, client_id: str, data: ChurnCustomer | dict[str, Any], meta: CommandMeta) -> CommandResult:
        cmd: ChurnCustomer = _validate(ChurnCustomer, data)
        customer = self.get_customer(client_id)
        if customer.churned_on is not None:
            return CommandResult(customer.id, customer.external_key, "unchanged", None)
        customer.churn(churned_on=cmd.churned_on.isoformat(), reason=cmd.reason, **_meta_kwargs(meta))
        recordings = self.save(customer)
        return CommandResult(customer.id, customer.external_key, "updated", recordings[-1].notification.id)

    def import_customer(
        self, data: RegisterCustomer, churn: ChurnCustomer | None, meta: CommandMeta
    ) -> CommandResult:
        """Upsert one customer from a file row in one atomic append.

        New key: registered. Known key: fields that differ are recorded as changes, a new
        contact is added, a churn is recorded once. Identical row: nothing is recorded.
        """
        assert data.external_key is not None
        customer_id = customer_id_for(data.external_key)
        meta_kw = _meta_kwargs(meta)
        if self.exists(customer_id):
            customer: Customer = self.repository.get(customer_id)
            status: Status = "updated"
            wanted = {k: v for k, v in data.profile().items() if v is not None}
            wanted["name"] = data.name
            profile_changes, contract_changes = self._diff(customer, wanted)
            self._apply_changes(customer, profile_changes, contract_changes, meta)
            changes = profile_changes + contract_changes
        else:
            customer = Customer(external_key=data.external_key, profile=data.profile(), **_registered_kwargs(data, meta))
            status, changes = "created", []
        if (data.contact_name or data.contact_email) and not self._has_contact(customer, data.contact_email):
            primary = not customer.contacts
            self._add_contact(customer, data.contact_name, data.contact_email, None, primary, meta)
        if churn is not None and customer.churned_on is None:
            customer.churn(
                churned_on=churn.churned_on.isoformat(),
                reason=churn.reason,
                **{**meta_kw, "occurred_at": datetime.combine(churn.churned_on, time(), timezone.utc)},
            )
        pending = customer.collect_events()
        if not pending:
            return CommandResult(customer_id, data.external_key, "unchanged", None)
        recordings = self.save(*pending)
        return CommandResult(customer_id, data.external_key, status, recordings[-1].notification.id, changes)

    # ---------------------------------------------------------- health model
    def scorecard(self) -> ScorecardConfig:
        """The scorecard in force now: the default until configured (history: the views)."""
        if not self.exists(SCORECARD_ID):
            return ScorecardConfig()
        card: Scorecard = self.repository.get(SCORECARD_ID)
        return ScorecardConfig.model_validate(card.config)

    def configure_scorecard(self, changes: dict[str, Any], meta: CommandMeta) -> tuple[ScorecardConfig, int | None]:
        """Merge ``changes`` (weights / bands / key_features, each optional) into the current
        scorecard; validated as a whole, recorded as one event with the previous version."""
        unknown = sorted(set(changes) - {"weights", "bands", "key_features"})
        if unknown:
            raise InvalidInputError(unknown[0], "unknown setting; accepted: weights, bands, key_features")
        current = self.scorecard()
        merged = current.model_dump()
        if "weights" in changes and isinstance(changes["weights"], dict):
            merged["weights"] = {**merged["weights"], **changes["weights"]}
        elif "weights" in changes:
            merged["weights"] = changes["weights"]
        for key in ("bands", "key_features"):
            if key in changes:
                merged[key] = changes[key]
        config: ScorecardConfig = _validate(ScorecardConfig, merged)
        if config == current:
            return config, None
        kw = _meta_kwargs(meta)
        if self.exists(SCORECARD_ID):
            card: Scorecard = self.repository.get(SCORECARD_ID)
            card.change(config=config.model_dump(), previous=current.model_dump(), **kw)
        else:
            card = Scorecard(config=config.model_dump(), **kw)
        return config, self.save(card)[-1].notification.id

    def override_health(self, client_id: str, data: OverrideHealth | dict[str, Any], author: str,
                        meta: CommandMeta) -> CommandResult:  # fmt: skip
        cmd: OverrideHealth = _validate(OverrideHealth, data)
        expires = _future_expiry(cmd.expires_at, meta)
        customer = self.get_customer(client_id)
        customer.override_health(band=cmd.band, score=cmd.score, reason=cmd.reason, author=author,
                                 expires_at=expires.isoformat(), replaces=_still_active(customer.health_override, meta),
                                 **_meta_kwargs(meta))  # fmt: skip
        return CommandResult(customer.id, customer.external_key, "updated", self.save(customer)[-1].notification.id)

    def override_stage(self, client_id: str, data: OverrideStage | dict[str, Any], author: str,
                       meta: CommandMeta) -> CommandResult:  # fmt: skip
        cmd: OverrideStage = _validate(OverrideStage, data)
        expires = _future_expiry(cmd.expires_at, meta)
        customer = self.get_customer(client_id)
        customer.override_stage(stage=cmd.stage, reason=cmd.reason, author=author, expires_at=expires.isoformat(),
                                replaces=_still_active(customer.stage_override, meta), **_meta_kwargs(meta))  # fmt: skip
        return CommandResult(customer.id, customer.external_key, "updated", self.save(customer)[-1].notification.id)

    # --------------------------------------------------------------- segments
    def segment(self, name: str) -> Segment | None:
        """The segment defined under that name (any case or spacing), None if never or deleted."""
        sid = segment_id(segment_name(name))
        if not self.exists(sid):
            return None
        seg: Segment = self.repository.get(sid)
        return None if seg.deleted else seg

    def define_segment(self, name: str, rules: Any, description: str | None, meta: CommandMeta) -> SegmentResult:
        """Record a new segment; a name already defined is refused (change it with update_segment)."""
        shown, checked, text = segment_name(name), validate_rules(rules), segment_description(description)
        sid, kw = segment_id(shown), _meta_kwargs(meta)
        seg: Segment | None = self.repository.get(sid) if self.exists(sid) else None
        if seg is not None and not seg.deleted:
            raise InvalidInputError("name", f"a segment named {seg.name!r} already exists; change its rules or "
                                    "description with update (segment_customers action 'update') or delete it first")  # fmt: skip
        if seg is None:
            seg = Segment(name=shown, description=text, rules=checked, **kw)
        else:
            seg.redefine(name=shown, description=text, rules=checked, **kw)
        try:
            position = self.save(seg)[-1].notification.id
        except IntegrityError:  # a concurrent definition of the same name won the race
            raise InvalidInputError("name", f"a segment named {shown!r} was just defined; use update") from None
        return SegmentResult(shown, text, checked, "defined", position)

    def update_segment(self, name: str, changes: dict[str, Any], meta: CommandMeta) -> SegmentResult:
        """Change a segment's rules and/or description (keys present in ``changes``); the event
        keeps the old and the new definition."""
        unknown = sorted(set(changes) - {"rules", "description"})
        if unknown or not changes:
            raise InvalidInputError(f"changes.{unknown[0]}" if unknown else "changes",
                                    "give rules and/or description to change")  # fmt: skip
        rules = validate_rules(changes["rules"]) if "rules" in changes else None
        text = segment_description(changes["description"]) if "description" in changes else None
        seg = self.segment(name)
        if seg is None:
            raise SegmentNotFoundError(name)
        new_rules = rules if rules is not None else seg.rules
        new_text = text if "description" in changes else seg.description
        changed = [k for k, old, new in (("rules", seg.rules, new_rules), ("description", seg.description, new_text))
                   if old != new]  # fmt: skip
        if not changed:
            return SegmentResult(seg.name, seg.description, seg.rules, "unchanged", None)
        seg.update(description=new_text, rules=new_rules, old_description=seg.description, old_rules=seg.rules,
                   **_meta_kwargs(meta))  # fmt: skip
        return SegmentResult(seg.name, new_text, new_rules, "updated", self.save(seg)[-1].notification.id, changed)

    def delete_segment(self, name: str, meta: CommandMeta) -> SegmentResult:
        seg = self.segment(name)
        if seg is None:
            raise SegmentNotFoundError(name)
        seg.delete(rules=seg.rules, **_meta_kwargs(meta))
        return SegmentResult(seg.name, seg.description, seg.rules, "deleted", self.save(seg)[-1].notification.id)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _diff(customer: Customer, wanted: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        profile_changes: list[dict[str, Any]] = []
        contract_changes: list[dict[str, Any]] = []
        merged = dict(customer.profile)
        for key, new in wanted.items():
            old = customer.profile.get(key)
            if old == new:
                continue
            merged[key] = new
            target = contract_changes if key in CONTRACT_FIELDS else profile_changes
            target.append({"field": key, "old": old, "new": new})
        start, renewal = merged.get("contract_start"), merged.get("renewal_date")
        if start and renewal and date.fromisoformat(renewal) < date.fromisoformat(start):
            raise InvalidInputError("renewal_date", f"{renewal} is before contract_start {start}")
        return profile_changes, contract_changes

    @staticmethod
    def _apply_changes(
        customer: Customer,
        profile_changes: list[dict[str, Any]],
        contract_changes: list[dict[str, Any]],
        meta: CommandMeta,
    ) -> None:
        if profile_changes:
            customer.update_profile(changes=profile_changes, **_meta_kwargs(meta))
        if contract_changes:
            customer.change_contract(changes=contract_changes, **_meta_kwargs(meta))

    def _add_contact(
        self,
        customer: Customer,
        name: str | None,
        email: str | None,
        role: str | None,
        primary: bool,
        meta: CommandMeta,
    ) -> None:
        customer.add_contact(
            contact_id=str(uuid4()),
            name=self.codec.encrypt(customer.id, name),
            email=self.codec.encrypt(customer.id, email.lower() if email else None),
            role=role,
            primary=primary,
            **_meta_kwargs(meta),
        )

    def _has_contact(self, customer: Customer, email: str | None) -> bool:
        if not email:
            return bool(customer.contacts)
        wanted = email.lower()
        return any(self.codec.decrypt(customer.id, c["email"]) == wanted for c in customer.contacts.values())
