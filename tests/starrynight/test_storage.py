"""Storage: local folders and S3 (moto server) behave the same."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from starrynight import index, inventory, storage
from starrynight.errors import UserError


def make_tree(root, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


FILES = {
    "a.txt": b"1",
    "s/b/images/P1/20X_CP_P1/WellA1_PointA1_0000_ChannelDAPI_Seq0000.tif": b"12",
    "s/b/images/P1/10X_c1_SBS-1/WellA1_PointA1_0000_ChannelA,C,G,T,DAPI_Seq0000.tif": b"123",
    "s/b/images/P2/20X_CP_P2/WellA1_PointA1_0000_ChannelDAPI_Seq0000.tif": b"1234",
}


def test_list_local_recursive_with_sizes(tmp_path) -> None:
    make_tree(tmp_path, FILES)
    (tmp_path / "s" / ".x.parquet.1234.tmp").write_bytes(b"partial")
    entries = {e.key: e.size for e in storage.list_files(str(tmp_path))}
    assert entries == {k: len(v) for k, v in FILES.items()}
    batches = list(storage.list_batches(str(tmp_path), batch_size=1))
    assert sum(len(b) for b in batches) == len(FILES)
    (batch,) = list(storage.list_batches(str(tmp_path), prefix="s/b/images/P2"))
    assert batch.keys() == ["s/b/images/P2/20X_CP_P2/WellA1_PointA1_0000_ChannelDAPI_Seq0000.tif"]
    assert batch.folders == ["s/b/images/P2/20X_CP_P2"]
    assert all(m > 0 for m in batch.mtimes_ns)


def test_list_local_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        list(storage.list_files(str(tmp_path / "missing")))
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        list(storage.list_files(str(tmp_path / "f")))


def test_unreadable_folder(tmp_path, monkeypatch) -> None:
    # Simulated: the suite may run as root, which ignores permission bits.
    make_tree(tmp_path, FILES)
    real = os.scandir

    def scandir(path):
        if str(path).endswith("P2"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match="P2: permission denied"):
        list(storage.list_files(str(tmp_path)))


def test_atomic_write_leaves_nothing_on_error(tmp_path) -> None:
    target = tmp_path / "out" / "x.bin"
    storage.write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError), storage.atomic_local_path(str(target)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["x.bin"]


def test_write_failures_are_one_line_naming_the_path(tmp_path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    with pytest.raises(UserError) as err:
        storage.write_bytes(str(afile / "sub" / "x.bin"), b"1")
    assert str(err.value) == (
        f"{afile}/sub/x.bin: cannot write it ({afile} is a file, expected a folder)"
    )
    with pytest.raises(UserError, match=r"notes.txt: cannot create the folder \(.*is a file"):
        storage.makedirs(str(afile))
    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(UserError, match="dir: is a folder, expected a file"):
        storage.write_bytes(str(folder), b"1")
    assert list(folder.iterdir()) == []
    # the disk fills while a library writes the temporary file: one line, nothing left
    target = tmp_path / "out" / "y.bin"
    full = r"y.bin: cannot write it \(no space left on the device\)"
    with pytest.raises(UserError, match=full), storage.atomic_local_path(str(target)):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir(target.parent) == []
    # an OSError about another path (an input) is not this write's
    with pytest.raises(FileNotFoundError), storage.atomic_local_path(str(target)):
        (tmp_path / "missing-input.tiff").read_bytes()
    assert os.listdir(target.parent) == []


def test_folder_mtime_changes_when_entries_do(tmp_path) -> None:
    before = storage.folder_mtime_ns(str(tmp_path))
    assert before is not None
    os.utime(tmp_path, ns=(before - 10**9, before - 10**9))
    older = storage.folder_mtime_ns(str(tmp_path))
    (tmp_path / "new.tiff").write_bytes(b"1")
    assert storage.folder_mtime_ns(str(tmp_path)) != older
    assert storage.folder_mtime_ns(str(tmp_path / "absent")) is None
    assert storage.folder_mtime_ns("s3://bucket/prefix") is None


def test_dangling_links_are_listed_apart(tmp_path) -> None:
    make_tree(tmp_path, FILES)
    (tmp_path / "s" / "gone.tif").symlink_to(tmp_path / "nowhere.tif")
    (tmp_path / "s" / "ok.tif").symlink_to(tmp_path / "a.txt")
    batches = list(storage.list_batches(str(tmp_path)))
    keys = [k for b in batches for k in b.keys()]  # noqa: SIM118 (a method, not a dict)
    assert "s/ok.tif" in keys and "s/gone.tif" not in keys
    assert [d for b in batches for d in b.dangling] == ["s/gone.tif"]


def test_list_dirs_local(tmp_path) -> None:
    make_tree(tmp_path, FILES)
    assert storage.list_dirs(str(tmp_path / "s" / "b" / "images")) == ["P1", "P2"]
    assert storage.list_dirs(str(tmp_path / "missing")) == []


# --- S3 through moto's server -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "STARRYNIGHT_S3_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["STARRYNIGHT_S3_ENDPOINT"]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, request) -> str:
    name = f"b-{request.node.name.lower().replace('_', '-')[:40]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


def test_s3_write_read_list(bucket: str) -> None:
    root = f"s3://{bucket}/ds"
    for key, data in FILES.items():
        storage.write_bytes(storage.join(root, key), data)
    assert storage.read_bytes(storage.join(root, "a.txt")) == b"1"
    assert {e.key: e.size for e in storage.list_files(root)} == {
        k: len(v) for k, v in FILES.items()
    }
    assert storage.list_dirs(f"{root}/s/b/images") == ["P1", "P2"]
    (batch,) = list(storage.list_batches(root, prefix="s/b/images/P2"))
    assert batch.names == ["WellA1_PointA1_0000_ChannelDAPI_Seq0000.tif"]
    assert storage.exists(storage.join(root, "a.txt"))
    assert not storage.exists(storage.join(root, "b.txt"))


def test_s3_missing_bucket_is_a_user_error(s3_endpoint: str) -> None:
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        list(storage.list_files("s3://no-such-bucket/ds"))
    with pytest.raises(UserError, match="does not exist"):
        storage.list_dirs("s3://no-such-bucket/ds")


def test_s3_missing_prefix(bucket: str) -> None:
    with pytest.raises(UserError, match="no such S3 prefix"):
        list(storage.list_files(f"s3://{bucket}/nothing-here"))


def test_s3_inventory_and_index(bucket: str, tmp_path) -> None:
    root = f"s3://{bucket}/data/cpg"
    for key, data in FILES.items():
        storage.write_bytes(storage.join(root, key), data)
    ws = f"s3://{bucket}/ws"
    summary = inventory.generate(root, ws)
    assert summary.files == len(FILES)
    table = inventory.load_inventory(ws)
    assert inventory.dataset_root_of(table) == root
    result = index.generate(ws, ws)
    assert result.images == 3 and result.rejects == 1
    assert index.dataset_root(ws) == root
    assert index.load_index(ws).column("dataset").to_pylist() == ["cpg"] * 3
    # --plate relists only that plate and keeps the others
    storage.write_bytes(
        storage.join(root, "s/b/images/P2/20X_CP_P2/WellA2_PointA2_0000_ChannelDAPI_Seq0001.tif"),
        b"x",
    )
    summary = inventory.generate(root, ws, plate="P2")
    assert summary.files == len(FILES) + 1 and summary.replaced_plate_rows == 1
    fs, path = storage.filesystem(storage.join(ws, "inventory", "inventory.parquet"))
    assert pq.read_table(path, filesystem=fs).num_rows == len(FILES) + 1
