"""One contract, both ObjectStore implementations: the local directory and S3 (moto_server process)."""

import time

import pytest

from mixai_pipeline.lib.storage.object_store import (
    InvalidKey,
    LocalObjectStore,
    ObjectNotFound,
    ObjectTooLarge,
    S3ObjectStore,
    key_problem,
)
from mixai_pipeline.resources.object_store import ObjectStoreResource

HOSTILE_KEYS = [
    "../etc/passwd",
    "uploads/../../secret",
    "uploads/./x",
    "/abs/path",
    "uploads//double",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    "escape\x1b[31m",
    "del\x7fchar",
    "",
    "trailing/",
    "a" * 1025,
]


def test_put_get_stat_roundtrip(any_store):
    info = any_store.put_bytes("uploads/j1/inst.wav", b"RIFFdata")
    assert info.key == "uploads/j1/inst.wav"
    assert info.size == 8
    assert info.last_modified.tzinfo is not None
    assert any_store.get_bytes("uploads/j1/inst.wav") == b"RIFFdata"
    assert any_store.stat("uploads/j1/inst.wav").size == 8
    assert any_store.exists("uploads/j1/inst.wav")
    assert not any_store.exists("uploads/j1/vocal.wav")


def test_overwrite_replaces_content(any_store):
    any_store.put_bytes("k/a", b"one")
    any_store.put_bytes("k/a", b"second")
    assert any_store.get_bytes("k/a") == b"second"


def test_put_file_download_and_local_path(any_store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    any_store.put_file("files/blob.bin", src)
    dest = any_store.download("files/blob.bin", tmp_path / "dest.bin")
    assert dest.read_bytes() == src.read_bytes()
    with any_store.local_path("files/blob.bin") as path:
        assert path.read_bytes() == src.read_bytes()
        assert path.suffix == ".bin"
    assert any_store.sha256("files/blob.bin") == __import__("hashlib").sha256(src.read_bytes()).hexdigest()


def test_list_is_recursive_sorted_and_prefix_bounded(any_store):
    for key in ["uploads/b/2", "uploads/a/1", "uploads/a/sub/3", "uploadsX/4", "other/5"]:
        any_store.put_bytes(key, b"x")
    assert [o.key for o in any_store.list("uploads/")] == ["uploads/a/1", "uploads/a/sub/3", "uploads/b/2"]
    assert [o.key for o in any_store.list("uploads")] == [
        "uploads/a/1", "uploads/a/sub/3", "uploads/b/2", "uploadsX/4"]
    assert [o.key for o in any_store.list("nothing/")] == []
    assert len(list(any_store.list())) == 5


def test_missing_objects_raise_not_found(any_store, tmp_path):
    with pytest.raises(ObjectNotFound):
        any_store.get_bytes("no/such")
    with pytest.raises(ObjectNotFound):
        any_store.stat("no/such")
    with pytest.raises(ObjectNotFound):
        any_store.download("no/such", tmp_path / "x")
    with pytest.raises(ObjectNotFound), any_store.local_path("no/such"):
        pass


def test_delete_is_idempotent_and_removes_from_listing(any_store):
    any_store.put_bytes("d/one", b"1")
    any_store.delete("d/one")
    any_store.delete("d/one")
    assert not any_store.exists("d/one")
    assert list(any_store.list("d/")) == []


def test_get_bytes_limit(any_store):
    any_store.put_bytes("big", b"x" * 1000)
    assert any_store.get_bytes("big", max_bytes=1000) == b"x" * 1000
    with pytest.raises(ObjectTooLarge):
        any_store.get_bytes("big", max_bytes=999)


def test_last_modified_moves_forward_on_write(any_store):
    first = any_store.put_bytes("t/a", b"1").last_modified
    time.sleep(1.1)  # S3 timestamps have one-second resolution
    assert any_store.put_bytes("t/a", b"2").last_modified > first


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_hostile_keys_are_refused_everywhere(any_store, key, tmp_path):
    assert key_problem(key) is not None
    with pytest.raises(InvalidKey):
        any_store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        any_store.get_bytes(key)
    with pytest.raises(InvalidKey):
        any_store.delete(key)
    with pytest.raises(InvalidKey):
        any_store.stat(key)


def test_non_string_and_unicode_keys():
    assert "string" in key_problem(b"bytes")
    assert key_problem("uploads/日本語/ボーカル.wav") is None
    assert "UTF-8" in key_problem("bad\udcffsurrogate")


def test_local_store_refuses_symlink_escape(tmp_path):
    store = LocalObjectStore(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (store.root / "link").symlink_to(outside)
    with pytest.raises(InvalidKey):
        store.get_bytes("link/secret")


def test_local_store_writes_atomically(tmp_path):
    """A reader never sees a half-written object, and temp files never appear in listings."""
    store = LocalObjectStore(tmp_path / "root")

    def failing_writer(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store._write("k/obj", failing_writer)
    assert not store.exists("k/obj")
    assert list(store.list()) == []
    assert not any(p.is_file() for p in store.root.rglob("*"))


def test_listing_returns_hostile_names_written_by_other_tools(any_store):
    """Keys another client wrote are listed as they are, so the ingestion can reject them."""
    hostile = "uploads/j/vocal\x1b.wav"
    if isinstance(any_store, LocalObjectStore):
        path = any_store.root / hostile
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    else:
        import io

        any_store.client.put_object(any_store.bucket, hostile, io.BytesIO(b"x"), 1)
    assert [o.key for o in any_store.list("uploads/")] == [hostile]


def test_resource_builds_both_backends(tmp_path, s3_endpoint):
    local = ObjectStoreResource(backend="local", root=str(tmp_path / "objs")).get_store()
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "objs").resolve()
    s3 = ObjectStoreResource(backend="s3", endpoint=s3_endpoint, bucket="resource-test",
                             access_key="testing", secret_key="testing", region="us-east-1").get_store()
    assert isinstance(s3, S3ObjectStore)
    s3.put_bytes("a/b", b"1")
    assert s3.uri("a/b") == "s3://resource-test/a/b"
    with pytest.raises(ValueError, match="MIXAI_S3_ENDPOINT"):
        ObjectStoreResource(backend="s3").get_store()
