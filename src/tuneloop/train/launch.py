"""What the launcher asked for, and proof that it is what runs.

accelerate, transformers and DeepSpeed fall back without a word (measured, DESIGN.md "Facts"):
`ACCELERATE_USE_CPU` with a DeepSpeed profile trains plain DDP (or crashes on ZeRO-3's sharded weights), an FSDP
profile on CPU trains DDP, and processes that never joined one process group each train alone into the same run
folder. So tuneloop reads the request from the environment `accelerate launch` and `torchrun` hand to every rank,
refuses before anything is loaded what cannot work, and checks once the trainer has built its engine that the engine
is the one asked for. What ran is kept in each stage's summary (`distributed`), which tests and people can read.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneloop import shipped
from tuneloop.errors import TuneloopError

FIX_DOC = "docs/cluster.md"
# the Slurm/MPI variables that say how many copies of this command were started, when no launcher started them
TASK_COUNTS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


@dataclass(frozen=True)
class Request:
    """The distribution the launcher asked for, as every rank sees it in its environment."""

    world_size: int
    deepspeed: bool = False
    zero_stage: int | None = None
    deepspeed_config: str | None = None
    offload_optimizer: str | None = None
    offload_param: str | None = None
    fsdp: bool = False
    cpu_flag: bool = False
    tasks: int = 1  # copies started by srun/mpirun without a launcher (then world_size is 1 in each)
    tasks_from: str | None = None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes")


def requested(env: Mapping[str, str] | None = None) -> Request:
    """Read the launcher's request: accelerate's ACCELERATE_* variables (its profile and flags) and torchrun's
    WORLD_SIZE. The ZeRO stage and offload come from the DeepSpeed JSON the profile names, unless given as flags."""
    env = os.environ if env is None else env
    deepspeed = _flag(env, "ACCELERATE_USE_DEEPSPEED")
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") if deepspeed else None
    offload_optimizer = env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")
    offload_param = env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")
    if config_file and config_file.lower() != "none":
        config_file = str(deepspeed_config_path(config_file))
        zero = _deepspeed_json(Path(config_file)).get("zero_optimization", {})
        stage = zero.get("stage", stage)
        offload_optimizer = (zero.get("offload_optimizer") or {}).get("device", offload_optimizer)
        offload_param = (zero.get("offload_param") or {}).get("device", offload_param)
    tasks, tasks_from = 1, None
    if "WORLD_SIZE" not in env and "LOCAL_RANK" not in env:
        for name in TASK_COUNTS:
            if env.get(name, "").isdigit() and int(env[name]) > 1:
                tasks, tasks_from = int(env[name]), name
                break
    return Request(
        world_size=int(env.get("WORLD_SIZE", "1") or 1),
        deepspeed=deepspeed,
        zero_stage=int(stage) if stage not in (None, "", "none") else None,
        deepspeed_config=config_file,
        offload_optimizer=None if offload_optimizer in (None, "none") else offload_optimizer,
        offload_param=None if offload_param in (None, "none") else offload_param,
        fsdp=_flag(env, "ACCELERATE_USE_FSDP"),
        cpu_flag=_flag(env, "ACCELERATE_USE_CPU"),
        tasks=tasks,
        tasks_from=tasks_from,
    )


def deepspeed_config_path(given: str) -> Path:
    """The profile's deepspeed_config_file as given, else, for the shipped profiles' `configs/deepspeed/*.json`
    launched from another directory than a clone's root, the file inside the installed package."""
    path = Path(given).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    return shipped.locate(path) or path


def pin_deepspeed_config(env: MutableMapping[str, str] | None = None) -> None:
    """Point accelerate at the file `requested` read: accelerate opens ACCELERATE_DEEPSPEED_CONFIG_FILE itself, from
    the current directory, when the trainer builds its DeepSpeed plugin."""
    env = os.environ if env is None else env
    given = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if _flag(env, "ACCELERATE_USE_DEEPSPEED") and given and given.lower() != "none":
        env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(deepspeed_config_path(given))


def _deepspeed_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TuneloopError(
            f"the launcher's deepspeed_config_file {path} does not exist (from {Path.cwd()}); the shipped profiles "
            "name configs/deepspeed/*.json, which tuneloop finds in its package from any directory "
            "(`tuneloop init` copies them next to your recipes)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise TuneloopError(f"{path}: not valid JSON: {e}") from e


def refuse_impossible(request: Request, cuda: bool) -> None:
    """Before anything is loaded: the combinations that would silently train something other than what was asked."""
    if request.tasks > 1:
        raise TuneloopError(
            f"{request.tasks} copies of this command were started without a launcher ({request.tasks_from}="
            f"{request.tasks}, no WORLD_SIZE): each would train alone, on all the data, into the same run folder. "
            "Start one launcher per node instead: `srun accelerate launch --config_file ... -m tuneloop.train "
            "RECIPE` (scripts/slurm/train.sbatch does it) or `torchrun --nproc_per_node N -m tuneloop.train RECIPE`"
        )
    if request.deepspeed and request.cpu_flag:
        raise TuneloopError(
            "the launcher asked for DeepSpeed and ACCELERATE_USE_CPU=1 (or --cpu) at once: accelerate then skips "
            "DeepSpeed and trains plain DDP. DeepSpeed runs on CPU by itself: unset ACCELERATE_USE_CPU and drop "
            f"--cpu ({FIX_DOC}, 'DeepSpeed on CPU')"
        )
    if request.fsdp and not cuda:
        raise TuneloopError(
            "the launcher asked for FSDP, which accelerate enables only on GPUs: on this machine without CUDA it would "
            "train plain DDP with every weight on every rank. Use configs/accelerate/zero3.yaml (DeepSpeed ZeRO-3 "
            f"shards on CPU too) or ddp.yaml here, and fsdp.yaml on GPUs ({FIX_DOC}, 'FSDP')"
        )
    if request.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError as e:
            raise TuneloopError(
                "the launcher asked for DeepSpeed but the deepspeed package is missing here: `make install` brings "
                f"it (CPU), `pip install 'tuneloop[gpu]'` on GPU machines ({e})"
            ) from e


def check_world(request: Request, num_processes: int) -> None:
    """After joining the process group: every process the launcher started must be in it."""
    if request.world_size != num_processes:
        raise TuneloopError(
            f"the launcher started {request.world_size} processes (WORLD_SIZE={request.world_size}) but this one "
            f"is in a group of {num_processes}: each would train alone into the same run folder. On a machine "
            "without GPUs, launch with `accelerate launch --multi_gpu --num_processes N` or `torchrun "
            f"--nproc_per_node N`; with GPUs, check CUDA_VISIBLE_DEVICES ({FIX_DOC})"
        )


def running(trainer: Any) -> dict[str, Any]:
    """What the trainer actually runs once it has wrapped the model: distribution, engine, ZeRO stage, offload,
    FSDP, world size, 4-bit layers."""
    accelerator = trainer.accelerator
    engine = trainer.model_wrapped
    mode: dict[str, Any] = {
        "distributed_type": str(accelerator.distributed_type.value),
        "engine": type(engine).__name__,
        "world_size": accelerator.num_processes,
        "zero_stage": None,
        "offload_optimizer": None,
        "offload_param": None,
        "fsdp": bool(getattr(trainer, "is_fsdp_enabled", False)),
        "quantized_layers": quantized_layers(trainer.model),
    }
    if hasattr(engine, "zero_optimization_stage"):  # deepspeed.DeepSpeedEngine
        mode["zero_stage"] = int(engine.zero_optimization_stage())
        offloads = {"offload_optimizer": engine.zero_offload_optimizer(), "offload_param": engine.zero_offload_param()}
        for key, offload in offloads.items():
            device = getattr(offload, "device", None)
            device = str(getattr(device, "value", device)) if device is not None else "none"
            mode[key] = None if device == "none" else device
    return mode


def quantized_layers(model: Any) -> int:
    """How many bitsandbytes 4-bit linear layers the model holds (0 when bitsandbytes is not even loaded)."""
    if "bitsandbytes" not in sys.modules:
        return 0
    from bitsandbytes.nn import Linear4bit

    return sum(isinstance(m, Linear4bit) for m in model.modules())


def verify(request: Request, mode: dict[str, Any]) -> None:
    """Stop when what runs differs from what the launcher asked for; the message names both and the fix."""
    if request.deepspeed and mode["distributed_type"] != "DEEPSPEED":
        raise TuneloopError(
            f"the launcher asked for DeepSpeed but the trainer runs {mode['distributed_type']} ({mode['engine']}); "
            f"check that ACCELERATE_USE_CPU is unset and that the profile's distributed_type is DEEPSPEED ({FIX_DOC})"
        )
    if request.zero_stage is not None and mode["zero_stage"] not in (None, request.zero_stage):
        raise TuneloopError(
            f"the launcher asked for ZeRO stage {request.zero_stage} ({request.deepspeed_config or 'flag'}) but the "
            f"DeepSpeed engine runs stage {mode['zero_stage']}"
        )
    if request.fsdp and not mode["fsdp"]:
        raise TuneloopError(
            f"the launcher asked for FSDP but the trainer runs {mode['distributed_type']}; FSDP needs GPUs ({FIX_DOC})"
        )
    if request.world_size != mode["world_size"]:
        check_world(request, mode["world_size"])


def describe(mode: dict[str, Any] | None) -> str:
    """One phrase for the run summary: `DeepSpeed ZeRO-3, offload optimizer cpu + parameters cpu`."""
    if not mode:
        return ""
    if mode.get("zero_stage") is not None:
        words = f"DeepSpeed ZeRO-{mode['zero_stage']}"
        names = {"offload_optimizer": "optimizer", "offload_param": "parameters"}
        offload = [f"{what} {mode[key]}" for key, what in names.items() if mode.get(key)]
        return words + (f", offload {' + '.join(offload)}" if offload else "")
    if mode.get("fsdp"):
        return "FSDP"
    kind = mode.get("distributed_type", "NO")
    return {"NO": "one process", "MULTI_CPU": "DDP (gloo)", "MULTI_GPU": "DDP (NCCL)"}.get(kind, kind)


def as_dict(request: Request) -> dict[str, Any]:
    return asdict(request)
