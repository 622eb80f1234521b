"""The registry through a real `mlflow server` process (a team's shared store): runs tracked and registered over
HTTP with proxied artifacts, then used from a second workspace (another machine's cache) as models:/ URIs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / "server.log").read_text()[-2000:])
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start in 90 s")
    yield url, tmp_path / "server-artifacts"
    proc.terminate()
    proc.wait(timeout=30)


def test_runs_register_promote_and_resolve_through_an_mlflow_server(mlflow_server, tiny_recipe, monkeypatch, tmp_path):
    url, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    path = tiny_recipe("shared")
    first = runner.invoke(app, ["run", str(path)])
    assert first.exit_code == 0, first.output
    assert f"tracked in MLflow: {url}/#/experiments/" in first.output.replace("\n", "")
    assert "registered models:/shared/1" in first.output
    # artifacts went to the server's store, not the workspace
    assert list(artifacts.rglob("registered-model/model.safetensors"))
    assert not (tmp_path / "ws" / "mlflow.db").exists()

    # a colleague's machine: another workspace, same server
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "colleague"))
    second = runner.invoke(app, ["run", str(path), "--set", "stages.sft.args.learning_rate=0"])
    assert second.exit_code == 0, second.output
    assert "registered models:/shared/2" in second.output
    assert "not promoted (stays @challenger): gate failed against champion version 1" in second.output
    pulled = runner.invoke(app, ["registry", "pull", "shared@champion"])
    assert pulled.exit_code == 0, pulled.output
    local = Path(pulled.output.strip().splitlines()[-1])
    assert local.is_relative_to(tmp_path / "colleague")
    assert json.loads((local / "tuneloop-materialized.json").read_text())["registry"] == url
    forced = runner.invoke(app, ["registry", "promote", "shared", "--version", "2", "--force", "--reason", "demo"])
    assert forced.exit_code == 0, forced.output
    back = runner.invoke(app, ["registry", "rollback", "shared"])
    assert back.exit_code == 0 and "rolled back from version 2 to version 1" in back.output
    history = runner.invoke(app, ["registry", "history", "shared"], env={"COLUMNS": "200"})
    assert history.output.count("@champion") == 3 and "demo" in history.output
