"""The project's own errors. Library errors are translated into these at the edge."""

from __future__ import annotations

from pydantic import ValidationError


class CSError(Exception):
    """Base class of every expected failure; the message is safe to show a caller."""


class InvalidInputError(CSError):
    """Bad input: names the field and what is accepted. Nothing was recorded."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")

    @classmethod
    def from_validation(cls, exc: ValidationError) -> InvalidInputError:
        """The first pydantic error, as `field: what is wrong` (others listed after it)."""
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        field = ".".join(str(part) for part in first["loc"])
        message = _humanise(first)
        if not field:  # a whole-model check: its message starts with "field: "
            field, _, message = message.partition(": ")
        if len(errors) > 1:
            others = ", ".join(".".join(str(p) for p in e["loc"]) or "input" for e in errors[1:])
            message += f" (also invalid: {others})"
        return cls(field, message)


def _humanise(error: dict) -> str:  # type: ignore[type-arg]
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return str(error["msg"]).removeprefix("Value error, ")


class CustomerNotFoundError(CSError):
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        super().__init__(
            f"client_id: no customer {client_id!r}; pass the external key given at registration "
            "(e.g. 'acme-corp') or the id returned by register_client (list_clients shows both)"
        )
