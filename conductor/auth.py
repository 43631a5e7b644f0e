"""Bearer tokens: ``rw`` tokens may change things, ``ro`` tokens may only read.

Shared by the API (``Authorization`` header, :mod:`conductor.deps`) and the Canvas pages
(header or cookie, :mod:`conductor.web.session`).
"""

from __future__ import annotations

import hmac

from conductor.errors import Forbidden, Unauthorized
from conductor.settings import Token


def match_token(tokens: tuple[Token, ...], secret: str) -> Token | None:
    """The configured token whose secret is ``secret``, or None (constant-time compare)."""
    found = None
    for token in tokens:
        # Compare against every token so timing does not reveal which one matched.
        if hmac.compare_digest(token.secret.encode(), secret.encode()):
            found = token
    return found


def authenticate(tokens: tuple[Token, ...], secret: str | None) -> Token:
    """The token whose secret is ``secret``.

    Raises
    ------
    Unauthorized
        No secret, or one that matches no configured token.
    """
    if secret is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    token = match_token(tokens, secret)
    if token is None:
        raise Unauthorized("unknown bearer token")
    return token


def require_rw(token: Token) -> Token:
    """``token`` when it may change things.

    Raises
    ------
    Forbidden
        A ``ro`` token.
    """
    if token.kind != "rw":
        raise Forbidden(f"token {token.name!r} is read-only; this needs a rw token")
    return token
