"""Files API: listing, download and previews stay inside the project's workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conductor.conftest import project_body

API = "/api/v1/projects/1/files"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a1b1c5d80000000049454e44ae426082"
)


@pytest.fixture
def workspace(client: TestClient, tmp_path: Path, dataset: Path) -> Path:
    """A project whose workspace holds a few files, a link inside and links out."""
    project = client.post("/api/v1/projects", json=project_body(tmp_path, dataset)).json()
    ws = Path(project["workspace_uri"])
    (ws / "illum" / "Plate1").mkdir(parents=True)
    (ws / "illum" / "Plate1" / "Plate1_IllumDAPI.png").write_bytes(PNG)
    (ws / "illum" / "Plate1" / "Plate1_IllumDAPI.npy").write_bytes(b"\x93NUMPY")
    (ws / "fake.png").write_bytes(b"not a png")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (ws / "link_out.txt").symlink_to(secret)
    (ws / "dir_out").symlink_to(tmp_path)
    (ws / "link_in.npy").symlink_to(ws / "illum" / "Plate1" / "Plate1_IllumDAPI.npy")
    return ws


def test_list_shows_workspace_files_only(client: TestClient, workspace: Path) -> None:
    listing = client.get(API).json()
    paths = [f["path"] for f in listing["items"]]
    assert "illum/Plate1/Plate1_IllumDAPI.png" in paths
    assert "fake.png" in paths
    assert "link_in.npy" in paths
    assert not any("link_out" in p or "dir_out" in p or "secret" in p for p in paths)
    sub = client.get(API, params={"prefix": "illum/Plate1"}).json()
    assert sorted(f["path"] for f in sub["items"]) == [
        "illum/Plate1/Plate1_IllumDAPI.npy",
        "illum/Plate1/Plate1_IllumDAPI.png",
    ]
    assert client.get(API, params={"prefix": "nothing/here"}).json()["items"] == []


def test_download(client: TestClient, workspace: Path) -> None:
    response = client.get(f"{API}/content", params={"path": "illum/Plate1/Plate1_IllumDAPI.npy"})
    assert response.status_code == 200
    assert response.content == b"\x93NUMPY"
    assert "Plate1_IllumDAPI.npy" in response.headers["content-disposition"]
    assert client.get(f"{API}/content", params={"path": "link_in.npy"}).content == b"\x93NUMPY"
    assert client.get(f"{API}/content", params={"path": "illum"}).status_code == 404
    assert client.get(f"{API}/content", params={"path": "missing.txt"}).status_code == 404


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../secret.txt", "'..' is not allowed"),
        ("illum/../../secret.txt", "'..' is not allowed"),
        ("/etc/passwd", "not absolute"),
        ("C:/Windows/win.ini", "not absolute"),
        ("file:///etc/passwd", "not absolute"),
        ("illum\\..\\..\\secret.txt", "backslashes"),
        ("a\x00b", "NUL"),
        ("link_out.txt", "outside the workspace"),
        ("dir_out/secret.txt", "outside the workspace"),
    ],
)
def test_escapes_are_refused(client: TestClient, workspace: Path, path: str, reason: str) -> None:
    for endpoint, param in (("/content", "path"), ("/preview", "path"), ("", "prefix")):
        response = client.get(f"{API}{endpoint}", params={param: path})
        assert response.status_code == 422, (endpoint, path, response.text)
        assert reason in response.json()["detail"]


def test_preview(client: TestClient, workspace: Path) -> None:
    ok = client.get(f"{API}/preview", params={"path": "illum/Plate1/Plate1_IllumDAPI.png"})
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "image/png"
    assert ok.content == PNG
    fake = client.get(f"{API}/preview", params={"path": "fake.png"})
    assert fake.status_code == 422
    assert "not PNG content" in fake.json()["detail"]
    npy = client.get(f"{API}/preview", params={"path": "illum/Plate1/Plate1_IllumDAPI.npy"})
    assert npy.status_code == 422
    assert os.path.exists(workspace / "fake.png")
