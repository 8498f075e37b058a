"""The command layer: one eventsourcing Application, the unit of work for every command.

Each command validates its input first (nothing is recorded on bad input), then appends
all of its events in one atomic ``save`` and returns the log position of the last event,
so a following read can wait for the projections to reach it (read-your-writes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from typing import Any, Literal
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError
from pydantic import ValidationError

from events.commands import ChurnCustomer, CommandMeta, RegisterCustomer, UpdateCustomer
from events.domain import CONTRACT_FIELDS, Customer, customer_id_for
from events.errors import CustomerNotFoundError, InvalidInputError
from events.personal import PersonalDataCodec
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


def _validate(model: type[Any], data: Any) -> Any:
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError.from_validation(exc) from None


class CustomerSuccess(Application[UUID]):
    """Commands on customers. Later capabilities add their aggregates here."""

    # A connector gains one event per batch for ever: snapshot it so loading stays cheap.
    snapshotting_intervals = {Connector: 100}

    def __init__(self, settings: Settings, codec: PersonalDataCodec) -> None:
        self.settings = settings
        self.codec = codec
        super().__init__(env=settings.eventsourcing_env())

    # ---------------------------------------------------------------- lookups
    def resolve(self, client_id: str) -> UUID:
        """The aggregate id for an external key or a returned id; raises if unknown."""
        text = (client_id or "").strip()
        if not text:
            raise InvalidInputError("client_id", "required: an external key (e.g. 'acme-corp') or a customer id")
        try:
            candidate = UUID(text)
        except ValueError:
            candidate = customer_id_for(text)
        if not self.exists(candidate):
            raise CustomerNotFoundError(client_id)
        return candidate

    def exists(self, aggregate_id: UUID) -> bool:
        """One indexed row read (``id in repository`` would replay the whole aggregate)."""
        return bool(self.recorder.select_events(aggregate_id, limit=1))

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
        customer = Customer(external_key=cmd.external_key, profile=cmd.profile(), **_meta_kwargs(meta))
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
            customer = Customer(external_key=data.external_key, profile=data.profile(), **meta_kw)
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
