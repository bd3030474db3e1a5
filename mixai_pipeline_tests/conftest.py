"""Shared fixtures: a real PostgreSQL (embedded pgserver), real object stores, real ffmpeg audio.

- ``pg_admin_uri``: one embedded PostgreSQL server for the session, in a temporary directory.
- ``db_url``: a fresh database per test, cloned from a template that ran every migration.
- ``local_store`` / ``s3_store``: the two ObjectStore implementations; S3 runs against a local
  ``moto_server`` process (moto's S3-compatible server) on 127.0.0.1. MinIO itself runs in docker/compose.yaml.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mixai_pipeline import settings
from mixai_pipeline.lib.storage.database import engine_for
from mixai_pipeline.lib.storage.object_store import LocalObjectStore, ObjectStore, S3ObjectStore
from mixai_pipeline.resources import migrations
from mixai_pipeline.resources.embedded_postgres import (
    start_embedded_postgres,
    stop_embedded_postgres,
    with_database,
)

TEMPLATE_DB = "mixai_template"


@pytest.fixture(scope="session", autouse=True)
def _isolated_state(tmp_path_factory):
    """Nothing a test does lands in the checkout's .mixai/ state."""
    home = tmp_path_factory.mktemp("mixai_home")
    previous = {k: os.environ.get(k) for k in (settings.ENV_HOME, settings.ENV_DATABASE_URL,
                                               settings.ENV_DAGSTER_PG_URL, "DAGSTER_HOME")}
    os.environ[settings.ENV_HOME] = str(home)
    for key in (settings.ENV_DATABASE_URL, settings.ENV_DAGSTER_PG_URL, "DAGSTER_HOME"):
        os.environ.pop(key, None)
    yield home
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def pg_admin_uri(tmp_path_factory):
    pgdata = tmp_path_factory.mktemp("pg") / "data"
    uri = start_embedded_postgres(pgdata)
    yield uri
    stop_embedded_postgres(pgdata)


@pytest.fixture(scope="session")
def migrated_template(pg_admin_uri) -> str:
    _create_database(pg_admin_uri, TEMPLATE_DB)
    url = with_database(pg_admin_uri, TEMPLATE_DB, "psycopg")
    migrations.upgrade(engine_for(url), settings.SQL_DIR)
    engine_for(url).dispose()  # a template must have no open connections
    return TEMPLATE_DB


def _create_database(admin_uri: str, name: str, template: str | None = None) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)


def _drop_database(admin_uri: str, name: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def blank_db_url(pg_admin_uri):
    """An empty database (no migrations applied)."""
    name = f"blank_{uuid.uuid4().hex[:12]}"
    _create_database(pg_admin_uri, name)
    url = with_database(pg_admin_uri, name, "psycopg")
    yield url
    engine_for(url).dispose()
    _drop_database(pg_admin_uri, name)


@pytest.fixture
def db_url(pg_admin_uri, migrated_template):
    """A fresh, fully migrated database for one test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    _create_database(pg_admin_uri, name, template=migrated_template)
    url = with_database(pg_admin_uri, name, "psycopg")
    yield url
    engine_for(url).dispose()
    _drop_database(pg_admin_uri, name)


@pytest.fixture
def engine(db_url):
    return engine_for(db_url)


# ------------------------------------------------------------------------------------ object stores

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3-compatible server as a real process on 127.0.0.1 (the minio client talks HTTP to it)."""
    port = _free_port()
    server = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3_store(s3_endpoint) -> S3ObjectStore:
    return S3ObjectStore(s3_endpoint, f"test-{uuid.uuid4().hex[:10]}", "testing", "testing",
                         region="us-east-1")


@pytest.fixture
def local_store(tmp_path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture(params=["local", "s3"])
def any_store(request) -> ObjectStore:
    return request.getfixturevalue(f"{request.param}_store")


# ------------------------------------------------------------------------------------------- audio

@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


def make_audio(path: Path, seconds: float = 2.0, *, channels: int = 2, sample_rate: int = 44100,
               codec_args: tuple[str, ...] = ()) -> Path:
    """A real audio file (a tone) encoded by ffmpeg in the format of ``path``'s extension."""
    if not path.exists():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
                        "-i", f"sine=frequency=330:duration={seconds}:sample_rate={sample_rate}",
                        "-ac", str(channels), *codec_args, str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def tone_wav(audio_dir) -> bytes:
    return make_audio(audio_dir / "tone.wav", 3.0).read_bytes()


# ----------------------------------------------------------------------------------------- uploads

def manifest_for(job_id: uuid.UUID, user_id: uuid.UUID | None = None, **overrides) -> dict:
    document = {
        "job_id": str(job_id),
        "user_id": str(user_id or uuid.uuid4()),
        "plan": "standard",
        "consent": {"qa": True, "training": True},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    document.update(overrides)
    return document


def write_upload(store: ObjectStore, files: dict[str, bytes], *, job_id: uuid.UUID | None = None,
                 manifest: dict | bytes | None = None, with_manifest: bool = True, **manifest_overrides) -> uuid.UUID:
    """Write an upload the way the app does: stems first, manifest.json last."""
    job_id = job_id or uuid.uuid4()
    prefix = f"uploads/{job_id}/"
    for name, data in files.items():
        store.put_bytes(prefix + name, data)
    if with_manifest:
        if manifest is None:
            manifest = manifest_for(job_id, **manifest_overrides)
        raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        store.put_bytes(prefix + "manifest.json", raw)
    return job_id


def set_mtime(store: LocalObjectStore, key: str, moment: datetime) -> None:
    ts = moment.timestamp()
    os.utime(store.root / key, (ts, ts))
