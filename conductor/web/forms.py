"""Turning validation failures into messages next to the form fields."""

from __future__ import annotations

from pydantic import ValidationError

from conductor.errors import ServiceError
from starrynight.errors import UserError

# What a form handler catches from a service: shown on the form instead of an error page.
SERVICE_ERRORS = (UserError, ServiceError)


def field_errors(exc: ValidationError) -> dict[str, str]:
    """Field name -> first message, from a pydantic error."""
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = err.get("loc", ())
        name = str(loc[0]) if loc else "form"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "string_pattern_mismatch":
            msg = "use letters, digits, _ . - (start with a letter or digit)"
        out.setdefault(name, msg)
    return out


def service_error(exc: UserError | ServiceError, fields: tuple[str, ...]) -> dict[str, str]:
    """A service error placed on the field it names (``"name: ..."``), else on the form."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    if sep and head in fields:
        return {head: rest}
    return {"form": text}
