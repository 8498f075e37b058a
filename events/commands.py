"""Validated command inputs. One model per command; bad input never reaches an aggregate."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

from events.domain import CONTRACT_FIELDS, PROFILE_FIELDS

ExternalKey = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$"),
]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Domain = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=253, pattern=r"^([a-z0-9-]{1,63}\.)+[a-z]{2,63}$"
    ),
]
Tier = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=40)]
SourceRef = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


def slugify(name: str) -> str:
    """An external key derived from a name: 'Acme Corp.' -> 'acme-corp'."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:64].rstrip("-")


class CommandMeta(BaseModel):
    """Who issued a command, from where, and when the fact happened in the world."""

    model_config = ConfigDict(frozen=True)

    actor: str
    source: str
    source_id: str = ""
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class ProfileFields(BaseModel):
    """Profile and contract fields shared by registration and updates."""

    model_config = ConfigDict(extra="forbid")

    domain: Domain | None = None
    industry: ShortText | None = None
    tier: Tier | None = None
    arr: Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)] | None = None
    seats: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    contract_start: date | None = None
    renewal_date: date | None = None
    owner: ShortText | None = None
    zendesk_org_id: SourceRef | None = None
    intercom_company_id: SourceRef | None = None
    mixpanel_account_id: SourceRef | None = None


class RegisterCustomer(ProfileFields):
    external_key: ExternalKey | None = None
    name: ShortText
    contact_name: ShortText | None = None
    contact_email: EmailStr | None = None

    @model_validator(mode="after")
    def _derive_and_check(self) -> RegisterCustomer:
        if self.external_key is None:
            slug = slugify(self.name)
            if not slug:
                raise ValueError("external_key: cannot derive a key from this name; pass one explicitly")
            self.external_key = slug
        _check_dates(self.contract_start, self.renewal_date)
        return self

    def profile(self) -> dict[str, Any]:
        """The stored profile: JSON-friendly values, dates as ISO strings."""
        data = self.model_dump(include=set(PROFILE_FIELDS) | set(CONTRACT_FIELDS), mode="json")
        return {key: data[key] for key in (*PROFILE_FIELDS, *CONTRACT_FIELDS)}


class UpdateCustomer(ProfileFields):
    """Only the fields present are changed; ``None`` clears an optional field."""

    name: ShortText | None = None

    @model_validator(mode="after")
    def _name_not_cleared(self) -> UpdateCustomer:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name: cannot be cleared; pass a new name")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, mode="json")


def _check_dates(start: date | None, renewal: date | None) -> None:
    if start and renewal and renewal < start:
        raise ValueError(f"renewal_date: {renewal} is before contract_start {start}")


class ChurnCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    churned_on: date
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


STAGES = ("onboarding", "adoption", "mature", "renewal", "expansion", "at_risk", "churned")


class OverrideHealth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    band: Literal["green", "yellow", "red"]
    score: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)]
    expires_at: datetime


class OverrideStage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["onboarding", "adoption", "mature", "renewal", "expansion", "at_risk", "churned"]
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)]
    expires_at: datetime
