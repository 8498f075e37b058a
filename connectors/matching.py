"""Mapping vendor records to customers (DESIGN §13): by the source id stored on the customer
(``zendesk_org_id``, ``intercom_company_id``, ``mixpanel_account_id``, or the external key for
survey files), else by the e-mail domain of the requester or recipient. A record that matches
nobody is kept as unmatched and counted, never dropped.

The directory itself is a read model; the composition root passes one in (``connectors``
does not depend on ``projections``).
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from events.ingest import Match


class CustomerDirectory(Protocol):
    def by_source(self, field: str, value: str) -> UUID | None:
        """The customer whose ``field`` (a source id column or ``external_key``) equals value."""

    def by_domain(self, domain: str) -> UUID | None:
        """The one customer with this e-mail domain (None when none or ambiguous)."""


def email_domain(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].strip().lower().rstrip(".") or None


def match(
    directory: CustomerDirectory,
    *,
    source_field: str | None = None,
    source_value: str | None = None,
    email: str | None = None,
) -> Match:
    if source_field and source_value:
        found = directory.by_source(source_field, str(source_value))
        if found is not None:
            return Match(found, f"{source_field}={source_value}")
    domain = email_domain(email)
    if domain:
        found = directory.by_domain(domain)
        if found is not None:
            return Match(found, f"domain={domain}")
    tried = [f"{source_field}={source_value}" if source_field and source_value else None, f"domain={domain}" if domain else None]
    return Match(None, "unmatched: " + (", ".join(t for t in tried if t) or "no source id or e-mail"))
