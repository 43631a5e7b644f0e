"""Templates, the page route class that turns every error into a readable page, forms."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape

from conductor.errors import BadRequest, TooLarge, http_error
from conductor.settings import Token

log = logging.getLogger("conductor.web")
TEMPLATES = Path(__file__).parent / "templates"
COOKIE = "canvas_token"
MAX_FORM = 100_000

env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["urlquote"] = lambda value: quote(str(value), safe="")


class LoginRequired(Exception):
    """No valid token: the browser is sent to the login form."""


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with the request, its token and CSRF value in the context."""
    token: Token | None = getattr(request.state, "canvas_token", None)
    context.setdefault("project", None)
    html = env.get_template(template).render(
        request=request,
        token=token,
        csrf=csrf_value(token) if token else "",
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def error_page(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """A page that says what went wrong in one line (never a stack trace)."""
    page = render(
        request, "error.html", status_code=status_code, message=message, status=status_code
    )
    page.headers.update(headers or {})
    return page


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class PageRoute(APIRoute):
    """A route whose errors become HTML pages (or a redirect to the login form).

    The REST API answers errors with JSON; a browser should see a readable page.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except LoginRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                if request.method != "GET" or request.url.path.endswith(".json"):
                    target = "/ui/projects"
                return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", 303)
            except RequestValidationError as exc:
                return error_page(request, 422, _validation_message(exc))
            except Exception as exc:
                answer = http_error(exc)
                if answer is not None:
                    return error_page(request, answer.status, answer.detail, answer.headers)
                log.error(
                    "unhandled page error",
                    exc_info=exc,
                    extra={"fields": {"path": request.url.path}},
                )
                return error_page(request, 500, "internal error; see the server log")

        return handler


def csrf_value(token: Token) -> str:
    """Per-token form value: a page of another origin cannot know it."""
    return hmac.new(token.secret.encode(), b"canvas-csrf", hashlib.sha256).hexdigest()[:32]


async def read_form(request: Request) -> dict[str, list[str]]:
    """The url-encoded form body (FastAPI dependency; no multipart needed)."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise TooLarge(f"form larger than {MAX_FORM} bytes")
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"unreadable form: {exc}") from exc


def field(form: dict[str, list[str]], name: str, default: str = "") -> str:
    """The first value of ``name`` in ``form``, stripped."""
    values = form.get(name)
    return values[0].strip() if values else default
