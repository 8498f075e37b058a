"""The Customer aggregate and its events.

Every event carries who did it (``actor``), where it came from (``source`` and
``source_id``) and when it happened in the world (``occurred_at``, distinct from the
recording ``timestamp`` the library stamps). Personal fields hold ``pd1:`` tokens produced
by :class:`events.personal.PersonalDataCodec`, never plain text.

Stored topics contain this module path (``events.domain:Customer.Registered``): moving or
renaming these classes breaks replay, so version them instead of editing them.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

CUSTOMER_NAMESPACE = uuid5(NAMESPACE_URL, "https://199os.example/cs/customer")

PROFILE_FIELDS = (
    "name",
    "domain",
    "industry",
    "tier",
    "owner",
    "zendesk_org_id",
    "intercom_company_id",
    "mixpanel_account_id",
)
CONTRACT_FIELDS = ("arr", "seats", "contract_start", "renewal_date")


def customer_id_for(external_key: str) -> UUID:
    """The deterministic aggregate id of a customer's external key (idempotent registration)."""
    return uuid5(CUSTOMER_NAMESPACE, external_key.strip().lower())


class DomainEvent(Aggregate.Event):
    """What every event of this system carries besides the library's fields."""

    actor: str
    source: str
    source_id: str
    occurred_at: datetime


class Customer(Aggregate):
    """A customer account: profile, contract, contacts and churn."""

    class Event(DomainEvent):
        pass

    class Registered(Event, Aggregate.Created):
        external_key: str
        profile: dict[str, Any]

    class ProfileUpdated(Event):
        changes: list[dict[str, Any]]

    class ContractChanged(Event):
        changes: list[dict[str, Any]]

    class ContactAdded(Event):
        contact_id: str
        name: str | None
        email: str | None
        role: str | None
        primary: bool

    class ContactRemoved(Event):
        contact_id: str

    class Churned(Event):
        churned_on: str
        reason: str | None

    class HealthOverridden(Event):
        band: str
        score: float | None
        reason: str
        author: str
        expires_at: str
        replaces: dict[str, Any] | None  # the override still active when this one was set, if any

    class StageOverridden(Event):
        stage: str
        reason: str
        author: str
        expires_at: str
        replaces: dict[str, Any] | None

    @staticmethod
    def create_id(external_key: str, **_: Any) -> UUID:
        return customer_id_for(external_key)

    @event(Registered)
    def __init__(
        self,
        *,
        external_key: str,
        profile: dict[str, Any],
        actor: str,
        source: str,
        source_id: str,
        occurred_at: datetime,
    ) -> None:
        self.external_key = external_key
        self.profile: dict[str, Any] = dict(profile)
        self.contacts: dict[str, dict[str, Any]] = {}
        self.churned_on: str | None = None
        self.health_override: dict[str, Any] | None = None
        self.stage_override: dict[str, Any] | None = None

    @event(ProfileUpdated)
    def update_profile(
        self, *, changes: list[dict[str, Any]], actor: str, source: str, source_id: str, occurred_at: datetime
    ) -> None:
        for change in changes:
            self.profile[change["field"]] = change["new"]

    @event(ContractChanged)
    def change_contract(
        self, *, changes: list[dict[str, Any]], actor: str, source: str, source_id: str, occurred_at: datetime
    ) -> None:
        for change in changes:
            self.profile[change["field"]] = change["new"]

    @event(ContactAdded)
    def add_contact(
        self,
        *,
        contact_id: str,
        name: str | None,
        email: str | None,
        role: str | None,
        primary: bool,
        actor: str,
        source: str,
        source_id: str,
        occurred_at: datetime,
    ) -> None:
        if primary:
            for contact in self.contacts.values():
                contact["primary"] = False
        self.contacts[contact_id] = {"name": name, "email": email, "role": role, "primary": primary}

    @event(ContactRemoved)
    def remove_contact(
        self, *, contact_id: str, actor: str, source: str, source_id: str, occurred_at: datetime
    ) -> None:
        self.contacts.pop(contact_id, None)

    @event(HealthOverridden)
    def override_health(self, *, band: str, score: float | None, reason: str, author: str, expires_at: str,
                        replaces: dict[str, Any] | None, actor: str, source: str, source_id: str,
                        occurred_at: datetime) -> None:  # fmt: skip
        self.health_override = {"band": band, "score": score, "reason": reason, "author": author,
                                "expires_at": expires_at, "set_at": occurred_at.isoformat()}  # fmt: skip

    @event(StageOverridden)
    def override_stage(self, *, stage: str, reason: str, author: str, expires_at: str,
                       replaces: dict[str, Any] | None, actor: str, source: str, source_id: str,
                       occurred_at: datetime) -> None:  # fmt: skip
        self.stage_override = {"stage": stage, "reason": reason, "author": author, "expires_at": expires_at,
                               "set_at": occurred_at.isoformat()}  # fmt: skip

    @event(Churned)
    def churn(
        self, *, churned_on: str, reason: str | None, actor: str, source: str, source_id: str, occurred_at: datetime
    ) -> None:
        self.churned_on = churned_on


def event_type(domain_event: object) -> str:
    """The public name of an event type: ``Customer.ContactAdded`` -> ``customer.contact_added``."""
    return event_type_name(type(domain_event))


@cache  # one per event class: the timeline and the Kafka envelope ask for it for every event
def event_type_name(cls: type) -> str:
    """:func:`event_type` of the events of class ``cls``."""
    aggregate, _, name = cls.__qualname__.rpartition(".")
    return f"{_snake(aggregate)}.{_snake(name)}"


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def event_id(domain_event: Any) -> UUID:
    """A stable id for a stored event: the same event always has the same id (consumers dedupe on it)."""
    return uuid5(domain_event.originator_id, str(domain_event.originator_version))
