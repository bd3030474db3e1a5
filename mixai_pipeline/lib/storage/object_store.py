"""Object storage: one interface, a local-directory implementation and an S3/MinIO one.

Keys are ``/``-separated relative paths. Every key a caller writes, reads or deletes is validated
(no ``..`` or ``.`` segments, no absolute paths or backslashes, no control characters, at most 1024
bytes of UTF-8). Listing returns keys exactly as stored, so that callers can reject hostile names
written by other tools (the ingestion does) instead of crashing on them.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import os
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MAX_KEY_BYTES = 1024
_TMP_PREFIX = ".mixai-tmp-"


class ObjectStoreError(Exception):
    """Base of the errors this module raises on purpose."""


class InvalidKey(ObjectStoreError, ValueError):
    """A key that must not be used: traversal, absolute, control characters, too long…"""


class ObjectNotFound(ObjectStoreError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class ObjectTooLarge(ObjectStoreError, ValueError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime  # timezone-aware, UTC
    etag: str | None = None


def key_problem(key: object) -> str | None:
    """Why ``key`` is not acceptable, in words a person understands; None when it is fine."""
    if not isinstance(key, str):
        return f"key must be a string, got {type(key).__name__}"
    if not key:
        return "key is empty"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "key is not valid UTF-8"
    if len(encoded) > MAX_KEY_BYTES:
        return f"key is {len(encoded)} bytes long (limit {MAX_KEY_BYTES})"
    for ch in key:
        if unicodedata.category(ch) == "Cc":
            return f"key contains the control character U+{ord(ch):04X}"
    if key.startswith("/"):
        return "key is an absolute path"
    if "\\" in key:
        return "key contains a backslash"
    if key.endswith("/"):
        return "key ends with '/' (that is a prefix, not an object)"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return f"key contains the path segment {segment!r}"
    return None


def validate_key(key: str) -> str:
    problem = key_problem(key)
    if problem:
        raise InvalidKey(f"{problem}: {key!r}")
    return key


def _validate_prefix(prefix: str) -> str:
    if prefix:
        validate_key(prefix.rstrip("/") or "/")
    return prefix


class ObjectStore(abc.ABC):
    """What the pipeline needs of an object store."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo: ...

    @abc.abstractmethod
    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's content; ObjectTooLarge when it exceeds ``max_bytes``."""

    @abc.abstractmethod
    def download(self, key: str, dest: Path) -> Path: ...

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, recursively, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing object is not an error."""

    @abc.abstractmethod
    def uri(self, key: str) -> str: ...

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file with the object's content for tools that need a path (ffmpeg…)."""
        suffix = Path(key).suffix if key_problem(key) is None else ""
        with tempfile.TemporaryDirectory(prefix="mixai-obj-") as tmp:
            yield self.download(key, Path(tmp) / f"object{suffix}")

    def sha256(self, key: str) -> str:
        with self.local_path(key) as path, open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()


class LocalObjectStore(ObjectStore):
    """Objects as files under a root directory; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root):  # e.g. a symlink inside the store pointing out of it
            raise InvalidKey(f"key resolves outside the store: {key!r}")
        return path

    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def _write(self, key: str, writer) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return self._info(key, path)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        def copy(f):
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)

        return self._write(key, copy)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(f"{key!r} is larger than {max_bytes} bytes")
        return data

    def download(self, key: str, dest: Path) -> Path:
        data_path = self._path(key)
        if not data_path.is_file():
            raise ObjectNotFound(f"no object {key!r}")
        import shutil

        shutil.copyfile(data_path, dest)
        return dest

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r}")
        yield path

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r}")
        return self._info(key, path)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        _validate_prefix(prefix)
        # Walk only the directory the prefix names; plain strings and scandir, because a sensor lists
        # the whole inbox on every tick (pathlib tripled the cost). Symlinks are not followed or listed.
        base_dir = prefix.rpartition("/")[0]
        root = str(self.root)
        stack, found = [os.path.join(root, base_dir) if base_dir else root], []
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except (FileNotFoundError, NotADirectoryError):  # vanished while listing, or no such prefix
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and not entry.name.startswith(_TMP_PREFIX):
                    key = entry.path[len(root) + 1:]
                    if key.startswith(prefix):
                        with contextlib.suppress(FileNotFoundError):
                            st = entry.stat(follow_symlinks=False)
                            found.append(ObjectInfo(key, st.st_size,
                                                    datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Drop directories left empty, up to the root, so prefixes disappear with their objects.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


class S3ObjectStore(ObjectStore):
    """Objects in an S3-compatible bucket (MinIO, AWS S3…) through the ``minio`` client."""

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str, *,
                 secure: bool = False, region: str | None = None, create_bucket: bool = True):
        from minio import Minio

        self.bucket = bucket
        self._settings = (endpoint, bucket, access_key, secret_key, secure, region)
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                            secure=secure, region=region)
        if create_bucket and not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def __reduce__(self):
        """Rebuilt from its settings in another process (the client's connection pool is not picklable)."""
        endpoint, bucket, access_key, secret_key, secure, region = self._settings
        return _rebuild_s3_store, (endpoint, bucket, access_key, secret_key, secure, region)

    @staticmethod
    @contextlib.contextmanager
    def _missing_as_not_found(key: str) -> Iterator[None]:
        """S3's "no such key" errors become ObjectNotFound; every other error passes through."""
        from minio.error import S3Error

        try:
            yield
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(f"no object {key!r}") from None
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        self.client.put_object(self.bucket, validate_key(key), io.BytesIO(data), len(data),
                               content_type=content_type or "application/octet-stream")
        return self.stat(key)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        self.client.fput_object(self.bucket, validate_key(key), str(path),
                                content_type=content_type or "application/octet-stream")
        return self.stat(key)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        with self._missing_as_not_found(key):
            response = self.client.get_object(self.bucket, validate_key(key))
        try:
            data = response.read() if max_bytes is None else response.read(max_bytes + 1)
        finally:
            response.close()
            response.release_conn()
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(f"{key!r} is larger than {max_bytes} bytes")
        return data

    def download(self, key: str, dest: Path) -> Path:
        with self._missing_as_not_found(key):
            self.client.fget_object(self.bucket, validate_key(key), str(dest))
        return dest

    def stat(self, key: str) -> ObjectInfo:
        with self._missing_as_not_found(key):
            st = self.client.stat_object(self.bucket, validate_key(key))
        return ObjectInfo(key, st.size or 0, st.last_modified.astimezone(timezone.utc), st.etag)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        _validate_prefix(prefix)
        for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
            if obj.is_dir:
                continue
            yield ObjectInfo(obj.object_name, obj.size or 0,
                             obj.last_modified.astimezone(timezone.utc), obj.etag)

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, validate_key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{validate_key(key)}"


def _rebuild_s3_store(endpoint, bucket, access_key, secret_key, secure, region) -> S3ObjectStore:
    return S3ObjectStore(endpoint, bucket, access_key, secret_key, secure=secure, region=region,
                         create_bucket=False)
