"""Bearer tokens: ``rw`` tokens may change things, ``ro`` tokens may only read."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conductor.settings import Token

_bearer = HTTPBearer(auto_error=False, description="A token from CONDUCTOR_TOKENS.")


def match_token(tokens: tuple[Token, ...], secret: str) -> Token | None:
    """The configured token whose secret is ``secret``, or None (constant-time compare)."""
    found = None
    for token in tokens:
        # Compare against every token so timing does not reveal which one matched.
        if hmac.compare_digest(token.secret.encode(), secret.encode()):
            found = token
    return found


def _authenticate(request: Request, creds: HTTPAuthorizationCredentials | None) -> Token:
    tokens = request.app.state.settings.tokens
    if creds is None:
        raise HTTPException(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = match_token(tokens, creds.credentials)
    if token is None:
        raise HTTPException(401, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token


async def reader(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Token:
    """Any configured token (``ro`` or ``rw``)."""
    return _authenticate(request, creds)


async def writer(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Token:
    """A ``rw`` token; a ``ro`` token gets 403."""
    token = _authenticate(request, creds)
    if token.kind != "rw":
        raise HTTPException(403, f"token {token.name!r} is read-only; this needs a rw token")
    return token
