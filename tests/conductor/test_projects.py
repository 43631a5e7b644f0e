"""Projects, auth, CORS and body limits against the app on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.conductor.conftest import RO, project_body

API = "/api/v1"


def test_create_get_list_update_delete(client: TestClient, tmp_path: Path, dataset: Path) -> None:
    body = project_body(tmp_path, dataset)
    created = client.post(f"{API}/projects", json=body)
    assert created.status_code == 201, created.text
    project = created.json()
    assert project["name"] == "screen1"
    assert project["backend"] == "local"
    assert project["configured_at"] is None
    assert project["created_at"].endswith("Z") or "+00:00" in project["created_at"]

    got = client.get(f"{API}/projects/{project['id']}").json()
    assert got == project

    patched = client.patch(f"{API}/projects/{project['id']}", json={"backend": "snakemake"})
    assert patched.status_code == 200
    assert patched.json()["backend"] == "snakemake"
    assert patched.json()["name"] == "screen1"

    assert client.delete(f"{API}/projects/{project['id']}").status_code == 204
    assert client.get(f"{API}/projects/{project['id']}").status_code == 404
    # Deleting a project never deletes the dataset.
    assert (dataset / "a.txt").read_text() == "a"


def test_pagination(client: TestClient, tmp_path: Path, dataset: Path) -> None:
    for i in range(7):
        assert client.post(
            f"{API}/projects", json=project_body(tmp_path, dataset, f"p{i}")
        ).is_success
    page = client.get(f"{API}/projects", params={"limit": 3, "offset": 5}).json()
    assert page["total"] == 7
    assert [p["name"] for p in page["items"]] == ["p5", "p6"]
    first = client.get(f"{API}/projects", params={"limit": 3}).json()
    assert [p["name"] for p in first["items"]] == ["p0", "p1", "p2"]
    assert client.get(f"{API}/projects", params={"limit": 0}).status_code == 422
    assert client.get(f"{API}/projects", params={"limit": 501}).status_code == 422


def test_duplicate_name_is_409(client: TestClient, tmp_path: Path, dataset: Path) -> None:
    body = project_body(tmp_path, dataset)
    assert client.post(f"{API}/projects", json=body).status_code == 201
    again = client.post(f"{API}/projects", json=body)
    assert again.status_code == 409
    assert "screen1" in again.json()["detail"]
    other = client.post(f"{API}/projects", json=project_body(tmp_path, dataset, "other")).json()
    renamed = client.patch(f"{API}/projects/{other['id']}", json={"name": "screen1"})
    assert renamed.status_code == 409


def test_bad_input_gets_422_naming_the_field(
    client: TestClient, tmp_path: Path, dataset: Path
) -> None:
    cases = [
        ({"name": "bad name!"}, "name"),
        ({"dataset_uri": "relative/path"}, "dataset_uri"),
        ({"dataset_uri": "http://example.com/x"}, "dataset_uri"),
        ({"dataset_uri": str(tmp_path / "nope")}, "no such folder"),
        ({"workspace_uri": str(dataset / "ws")}, "inside the dataset"),
        ({"experiment_type": "flow"}, "experiment_type"),
        ({"backend": "pbs"}, "backend"),
        ({"surprise": 1}, "surprise"),
    ]
    for change, expected in cases:
        body = project_body(tmp_path, dataset) | change
        response = client.post(f"{API}/projects", json=body)
        assert response.status_code == 422, (change, response.text)
        assert expected in response.text, (change, response.text)
    assert client.post(f"{API}/projects", content=b"{not json").status_code == 422
    assert client.get(f"{API}/projects/0").status_code == 422
    assert client.get(f"{API}/projects/99999999999").status_code == 422
    assert client.get(f"{API}/projects/12345").status_code == 404


def test_tokens(client: TestClient, tmp_path: Path, dataset: Path) -> None:
    body = project_body(tmp_path, dataset)
    anonymous = client.post(f"{API}/projects", json=body, headers={"Authorization": ""})
    assert anonymous.status_code == 401
    wrong = client.get(f"{API}/projects", headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    ro = {"Authorization": f"Bearer {RO}"}
    forbidden = client.post(f"{API}/projects", json=body, headers=ro)
    assert forbidden.status_code == 403
    assert "read-only" in forbidden.json()["detail"]
    assert client.post(f"{API}/projects", json=body).status_code == 201
    assert client.get(f"{API}/projects", headers=ro).json()["total"] == 1
    assert client.delete(f"{API}/projects/1", headers=ro).status_code == 403
    # Health needs no token.
    assert client.get(f"{API}/health/live", headers={"Authorization": ""}).status_code == 200


def test_body_limit_and_cors(client: TestClient, tmp_path: Path, dataset: Path) -> None:
    body = project_body(tmp_path, dataset) | {"backend_options": {"x": "y" * 20_000}}
    too_big = client.post(f"{API}/projects", json=body)
    assert too_big.status_code == 413
    assert "10000 bytes" in too_big.json()["detail"]

    def chunks():
        yield b'{"name": "x", '
        yield b" " * 20_000

    streamed = client.post(
        f"{API}/projects", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413

    allowed = client.options(
        f"{API}/projects",
        headers={"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.headers["access-control-allow-origin"] == "http://ui.example"
    other = client.get(f"{API}/health/live", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_workspace_deletion_is_explicit(client: TestClient, tmp_path: Path, dataset: Path) -> None:
    project = client.post(f"{API}/projects", json=project_body(tmp_path, dataset)).json()
    ws = Path(project["workspace_uri"])
    (ws / "illum").mkdir(parents=True)
    (ws / "illum" / "x.npy").write_bytes(b"1")
    refused = client.delete(f"{API}/projects/1/workspace", params={"confirm": "wrong"})
    assert refused.status_code == 422
    assert "screen1" in refused.json()["detail"]
    assert ws.exists()
    assert (
        client.delete(f"{API}/projects/1/workspace", params={"confirm": "screen1"}).status_code
        == 204
    )
    assert not ws.exists()
    assert dataset.exists()
    assert client.get(f"{API}/projects/1").status_code == 200


def test_health_ready(client: TestClient) -> None:
    ready = client.get(f"{API}/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "dagster": "ok"}


def test_openapi_served(client: TestClient) -> None:
    schema = client.get(f"{API}/openapi.json").json()
    assert "/api/v1/projects/{project_id}/runs" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_foreign_workspace_is_never_deleted(
    client: TestClient, tmp_path: Path, dataset: Path
) -> None:
    foreign = tmp_path / "lab_share"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    body = project_body(tmp_path, dataset) | {"workspace_uri": str(foreign)}
    project = client.post(f"{API}/projects", json=body).json()
    refused = client.delete(
        f"{API}/projects/{project['id']}/workspace", params={"confirm": "screen1"}
    )
    assert refused.status_code == 409
    assert "not created by Conductor" in refused.json()["detail"]
    assert (foreign / "thesis.docx").read_text() == "precious"


def test_allowed_roots(settings, tmp_path: Path, dataset: Path) -> None:
    import dataclasses

    from conductor.app import create_app
    from tests.conductor.conftest import RW

    fenced = dataclasses.replace(settings, allowed_roots=(str(tmp_path),))
    with TestClient(create_app(fenced), headers={"Authorization": f"Bearer {RW}"}) as c:
        assert c.post(f"{API}/projects", json=project_body(tmp_path, dataset)).status_code == 201
        body = project_body(tmp_path, dataset, "s3") | {"workspace_uri": "s3://bucket/ws"}
        outside = c.post(f"{API}/projects", json=body)
        assert outside.status_code == 422
        assert "outside the allowed roots" in outside.json()["detail"]
