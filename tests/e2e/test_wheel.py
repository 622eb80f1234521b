"""tuneloop as a user installs it from a wheel, not as an editable clone: built, installed non-editable into a fresh
environment, and used from a directory that has nothing of the repository (no configs/, data/ or recipes/).

The fresh environment borrows the test environment's third-party packages through a .pth line (installing torch,
transformers and vLLM again would take minutes and prove nothing about tuneloop); tuneloop itself comes only from
the wheel, which the first assertions check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
RECIPE = """\
name: outside  # validated only: the run below is the README's
defaults: [models/smollm2-135m]        # shipped: found in the installed package
data: {source: debian-descriptions, task: synopsis, max_train_rows: 8, max_eval_rows: 4}
stages:
  - name: sft
    method: sft
    peft: {type: lora, r: 4, alpha: 8}
    args: {max_steps: 2, per_device_train_batch_size: 4, max_length: 256, save_steps: 100}
evaluation:
  suite: eval/synopsis                 # shipped too
  baseline: null
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh environment holding tuneloop from its wheel; returns its bin/ directory."""
    root = tmp_path_factory.mktemp("wheel")
    dist, source = root / "dist", root / "source"  # a copy: setuptools builds in the tree it is given
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, source / name)
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dist),
        str(source),
    ]
    subprocess.run(build, cwd=source, check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("tuneloop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "configs/accelerate/zero3.yaml",
        "configs/deepspeed/zero3.json",
        "configs/cost/prices.yaml",
        "configs/feedback/synopsis-guidelines.md",
        "data/debian-descriptions/train.jsonl",
        "recipes/quickstart.yaml",
    ):
        assert f"tuneloop/_shipped/{shipped}" in names, f"the wheel lacks {shipped}"
    env = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    install = [sys.executable, "-m", "pip", "--python", str(env / "bin/python"), "install", "-q", "--no-deps"]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=300)
    # only now borrow the dependencies (before, pip would have seen the clone's editable tuneloop through them)
    site = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env / "bin"


def _tuneloop(bin_dir: Path, cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TUNELOOP_HOME=str(home), HF_HUB_OFFLINE="1", PATH=f"{bin_dir}:{env['PATH']}")
    done = subprocess.run(
        [str(bin_dir / "tuneloop"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        f"tuneloop {' '.join(args)}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def test_the_wheel_works_from_an_unrelated_directory(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "python"), "-c", "import tuneloop, tuneloop.shipped as s; print(tuneloop.__file__, s.root())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    env = installed.parent
    assert all(Path(p).is_relative_to(env) for p in where), where  # not the clone's src/
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "ws"
    home.mkdir()
    (elsewhere / "outside.yaml").write_text(RECIPE)

    def tuneloop(*args: str, cwd: Path = elsewhere) -> str:
        return _tuneloop(installed, cwd, home, *args).stdout

    assert "ok" in tuneloop("validate", "outside.yaml")  # its defaults and suite resolve inside the package
    tuneloop("data", "inspect", "debian-descriptions", "--task", "synopsis", "--max-rows", "100", "-o", "inspect")
    assert (elsewhere / "inspect" / "report.html").is_file()
    profile = Path(tuneloop("configs", "path", "accelerate/zero3").strip())
    assert profile.is_relative_to(env) and profile.is_file()
    # what the README shows: a project from `init`, its quickstart run
    tuneloop("init", "my-project")
    project = elsewhere / "my-project"
    assert (project / "configs/accelerate/zero3.yaml").is_file() and (project / ".tuneloop").is_dir()
    tuneloop("run", "recipes/quickstart.yaml", "--smoke", cwd=project)
    (run,) = (home / "runs" / "quickstart").iterdir()
    assert (run / "summary.json").is_file() and (run / "eval" / "results.json").is_file()
    assert Path(tuneloop("configs", "path", "accelerate/zero3", cwd=project).strip()).is_relative_to(project)
    tuneloop("eval", "-m", str(run / "stages" / "sft" / "model"), "--suite", "eval/synopsis", "--max-rows", "2")
    assert [m["name"] for m in json.loads(tuneloop("registry", "list", "--json"))] == ["quickstart-smoke"]
