"""Sign-in, cookies, CSRF and error pages."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.canvas.conftest import COOKIE, RO, RW, csrf_of


def test_pages_redirect_to_login_without_a_token(anon: TestClient) -> None:
    r = anon.get("/ui/projects")
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fprojects"
    assert anon.get("/").headers["location"] == "/ui/projects"


def test_login_sets_a_strict_httponly_cookie(anon: TestClient) -> None:
    form = anon.get("/ui/login?next=/ui/projects")
    assert form.status_code == 200
    assert '<label for="token">Token</label>' in form.text
    r = anon.post("/ui/login", data={"token": RW, "next": "/ui/projects"})
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/projects"
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE}={RW}" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert anon.get("/ui/projects").status_code == 200


def test_wrong_token_shows_the_form_again_with_the_reason(anon: TestClient) -> None:
    r = anon.post("/ui/login", data={"token": "nope", "next": "/ui/projects"})
    assert r.status_code == 401
    assert "unknown token" in r.text
    assert 'aria-invalid="true"' in r.text
    assert "set-cookie" not in r.headers


def test_login_never_redirects_off_site(anon: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        r = anon.post("/ui/login", data={"token": RW, "next": target})
        assert r.headers["location"] == "/ui/projects"


def test_bearer_header_works_for_pages(anon: TestClient) -> None:
    r = anon.get("/ui/projects", headers={"Authorization": f"Bearer {RO}"})
    assert r.status_code == 200
    assert "read only" in r.text


def test_post_without_csrf_is_refused(ui: TestClient, tmp_path) -> None:
    body = {"name": "x", "dataset_uri": str(tmp_path), "workspace_uri": str(tmp_path / "w")}
    r = ui.post("/ui/projects", data=body)
    assert r.status_code == 403
    assert "form expired or sent from another site" in r.text
    assert ui.post("/ui/projects", data={**body, "csrf": "0" * 32}).status_code == 403


def test_read_only_token_cannot_change_things(anon: TestClient, tmp_path) -> None:
    anon.cookies.set(COOKIE, RO)
    csrf = csrf_of(anon.get("/ui/projects").text)
    body = {"name": "x", "dataset_uri": str(tmp_path), "workspace_uri": str(tmp_path / "w")}
    r = anon.post("/ui/projects", data={**body, "csrf": csrf})
    assert r.status_code == 403
    assert "read-only" in r.text


def test_errors_are_pages_not_json_or_traces(ui: TestClient) -> None:
    r = ui.get("/ui/projects/999")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert "project 999 not found" in r.text
    bad = ui.get("/ui/projects/abc")
    assert bad.status_code == 422
    assert "project_id" in bad.text
    assert "Traceback" not in bad.text


def test_logout_clears_the_cookie(ui: TestClient) -> None:
    csrf = csrf_of(ui.get("/ui/projects").text)
    r = ui.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303
    assert f'{COOKIE}=""' in r.headers["set-cookie"]
