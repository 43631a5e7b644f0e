"""Browser sign-in: the bearer token in an HttpOnly cookie; page auth and CSRF checks.

A page accepts the token from the ``canvas_token`` cookie or the usual
``Authorization: Bearer`` header. The cookie is HttpOnly (scripts cannot read it) and
``SameSite=Strict`` (other sites cannot send it); every form also carries a value
derived from the token, checked on POST.
"""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from conductor.auth import match_token, require_rw
from conductor.errors import Forbidden
from conductor.settings import Token
from conductor.web.render import (
    COOKIE,
    LoginRequired,
    PageRoute,
    csrf_value,
    field,
    read_form,
    render,
)

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
Form = Annotated[dict[str, list[str]], Depends(read_form)]


def _secret(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


async def page_reader(request: Request) -> Token:
    """Any valid token from the cookie or header; else the browser goes to the login form."""
    secret = _secret(request)
    token = match_token(request.app.state.settings.tokens, secret) if secret else None
    if token is None:
        raise LoginRequired
    request.state.canvas_token = token
    return token


async def page_form(request: Request, form: Form) -> Token:
    """Any valid token and a form carrying its CSRF value."""
    token = await page_reader(request)
    if not hmac.compare_digest(field(form, "csrf"), csrf_value(token)):
        raise Forbidden("form expired or sent from another site; reload the page")
    return token


async def page_writer(token: Annotated[Token, Depends(page_form)]) -> Token:
    """A ``rw`` token and a form carrying its CSRF value."""
    return require_rw(token)


Reader = Annotated[Token, Depends(page_reader)]
Writer = Annotated[Token, Depends(page_writer)]


def _safe_next(target: str) -> str:
    # Only same-site paths: an attacker's link must not bounce a user elsewhere.
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/ui/projects"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/ui/projects") -> HTMLResponse:
    """The sign-in form."""
    return render(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, form: Form) -> Response:
    """Check the token and keep it in the cookie; a wrong token re-shows the form."""
    secret = field(form, "token")
    target = _safe_next(field(form, "next", "/ui/projects"))
    token = match_token(request.app.state.settings.tokens, secret) if secret else None
    if token is None:
        message = "enter a token" if not secret else "unknown token; check CONDUCTOR_TOKENS"
        return render(request, "login.html", status_code=401, next=target, error=message)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        secret,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
        max_age=12 * 3600,
    )
    return response


@router.post("/logout")
def logout(_token: Annotated[Token, Depends(page_form)]) -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
