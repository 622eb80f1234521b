"""The launcher profiles (configs/accelerate, configs/deepspeed) and the Slurm template.

Nothing here trains: each profile goes through accelerate 1.15's own config loader and launch-argument
processing, and the environment that `accelerate launch` would hand to the training processes is fed to
accelerate's DeepSpeed / FSDP plugins, which is where a wrong key or a forbidden combination shows up.
The ZeRO profiles also train for real on two CPU ranks in tests/integration/test_cluster_*.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_DIR = ROOT / "configs" / "accelerate"
DEEPSPEED_DIR = ROOT / "configs" / "deepspeed"
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"

EXPECTED_TYPE = {
    "single": DistributedType.NO,
    "ddp": DistributedType.MULTI_GPU,
    "zero2": DistributedType.DEEPSPEED,
    "zero3": DistributedType.DEEPSPEED,
    "zero3-offload": DistributedType.DEEPSPEED,
    "fsdp": DistributedType.FSDP,
    "multi-node": DistributedType.DEEPSPEED,
}
DEEPSPEED_JSON = {
    "zero2": "zero2.json",
    "zero3": "zero3.json",
    "zero3-offload": "zero3-offload.json",
    "multi-node": "zero3.json",
}
# name -> (zero stage, offloaded to cpu)
ZERO_JSON = {"zero2.json": (2, False), "zero3.json": (3, False), "zero3-offload.json": (3, True)}
# HF Trainer fills these from TrainingArguments; a number here would need hand-syncing with the recipe.
RECIPE_DRIVEN_KEYS = [
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16.enabled",
    "fp16.enabled",
]


def _profile(name: str) -> Path:
    return ACCELERATE_DIR / f"{name}.yaml"


def _load(name: str):
    return load_config_from_file(str(_profile(name)))


def _json(name: str) -> dict:
    return json.loads((DEEPSPEED_DIR / name).read_text())


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _launch_env(name: str, monkeypatch, extra_args: tuple[str, ...] = ()) -> tuple[object, dict[str, str]]:
    """Run accelerate's launch-argument processing for a profile; return the args and the child env."""
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    monkeypatch.chdir(ROOT)  # profiles use repository-relative paths, as the launch commands do
    parser = launch_command_parser()
    argv = [
        "--config_file",
        str(_profile(name)),
        *extra_args,
        "-m",
        "tuneloop.train",
        "recipes/sft-lora.yaml",
    ]
    args, defaults, mixed_precision_from_config = _validate_launch_command(parser.parse_args(argv))
    if args.use_deepspeed:
        # What `accelerate launch` does before starting DeepSpeed (launch_command in accelerate 1.15).
        fields = list(defaults.deepspeed_config.keys())
        if mixed_precision_from_config:
            fields.append("mixed_precision")
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    return args, {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_", "CUDA_VISIBLE"))}


def _apply(env: dict[str, str], monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


# ---- accelerate profiles


def test_every_documented_launcher_profile_exists_and_nothing_else():
    assert sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")) == sorted(EXPECTED_TYPE)
    assert sorted(p.name for p in DEEPSPEED_DIR.glob("*.json")) == sorted(ZERO_JSON)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPE))
def test_profile_parses_with_accelerates_loader_and_has_its_distributed_type(name):
    config = _load(name)
    assert config.distributed_type == EXPECTED_TYPE[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPE))
def test_profile_header_says_what_it_is_for_and_how_to_launch_it(name):
    text = _profile(name).read_text()
    header = text.split("\n\n")[0]
    assert header.startswith("# ")
    if name == "multi-node":
        assert "sbatch scripts/slurm/train.sbatch" in text
    assert f"accelerate launch --config_file configs/accelerate/{name}.yaml" in text
    assert "-m tuneloop.train" in text


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPE))
def test_profiles_leave_mixed_precision_to_the_recipe(name):
    # bf16/fp16 come from the stage args; with a deepspeed_config_file accelerate would even refuse to start.
    assert _load(name).mixed_precision is None


def test_single_profile_runs_one_process_on_one_gpu():
    config = _load("single")
    assert config.num_processes == 1
    assert config.gpu_ids == "0"  # otherwise HF Trainer would use torch DataParallel over all visible GPUs


def test_ddp_profile_defaults_to_eight_processes_on_one_node():
    config = _load("ddp")
    assert (config.num_processes, config.num_machines) == (8, 1)


def test_ddp_profile_process_count_can_be_changed_on_the_command_line(monkeypatch):
    args, _ = _launch_env("ddp", monkeypatch, ("--num_processes", "4"))
    assert args.nproc_per_node == "4"


@pytest.mark.parametrize("name", sorted(DEEPSPEED_JSON))
def test_deepspeed_profile_points_to_an_existing_deepspeed_json(name):
    ds = _load(name).deepspeed_config
    path = Path(ds["deepspeed_config_file"])
    assert not path.is_absolute()
    assert path.parent == Path("configs/deepspeed")
    assert path.name == DEEPSPEED_JSON[name]
    assert (ROOT / path).is_file()


@pytest.mark.parametrize("name", sorted(DEEPSPEED_JSON))
def test_deepspeed_profile_is_accepted_by_accelerates_deepspeed_plugin(name, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    _, env = _launch_env(name, monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    _apply(env, monkeypatch)
    # Raises when the profile sets keys that clash with deepspeed_config_file (mixed_precision, ...)
    plugin = DeepSpeedPlugin()
    stage, offload = ZERO_JSON[DEEPSPEED_JSON[name]]
    assert plugin.zero_stage == stage
    assert plugin.offload_optimizer_device == ("cpu" if offload else "none")
    assert plugin.offload_param_device == ("cpu" if offload else "none")
    if stage == 3:
        assert plugin.zero3_init_flag is True
        assert plugin.zero3_save_16bit_model is True


def test_fsdp_profile_is_fsdp2_full_shard_by_transformer_layer_with_full_state_dict(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    _, env = _launch_env("fsdp", monkeypatch)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    _apply(env, monkeypatch)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2's spelling of FULL_SHARD
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap is None  # falls back to the model's _no_split_modules
    # HF Trainer.save_model() writes weights only for FULL_STATE_DICT.
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.activation_checkpointing is False  # the recipe's gradient_checkpointing stays in charge


def test_multi_node_profile_spans_several_machines_with_torchrun_per_node():
    config = _load("multi-node")
    assert config.num_machines > 1
    assert config.num_processes == config.num_machines * 8
    assert config.main_process_ip is None  # filled per job by the Slurm script
    assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"


def test_multi_node_profile_takes_rank_and_address_from_the_command_line(monkeypatch):
    flags = ("--num_machines", "4", "--num_processes", "32", "--machine_rank", "3")
    flags += ("--main_process_ip", "10.1.2.3", "--main_process_port", "23456")
    args, _ = _launch_env("multi-node", monkeypatch, flags)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("4", 3, "8")
    assert args.rdzv_endpoint == "10.1.2.3:23456"


# ---- DeepSpeed JSON


@pytest.mark.parametrize("name", sorted(ZERO_JSON))
def test_deepspeed_json_has_its_zero_stage_and_offload(name):
    zero = _json(name)["zero_optimization"]
    stage, offload = ZERO_JSON[name]
    assert zero["stage"] == stage
    if offload:
        for key in ("offload_optimizer", "offload_param"):
            assert zero[key] == {"device": "cpu", "pin_memory": True}
    else:
        assert "offload_optimizer" not in zero
        assert "offload_param" not in zero


@pytest.mark.parametrize("name", sorted(ZERO_JSON))
def test_deepspeed_batch_sizes_follow_recipe_args(name):
    config = _json(name)
    for key in RECIPE_DRIVEN_KEYS:
        assert _get(config, key) == "auto", f"{name}: {key} must be 'auto' so HF Trainer fills it from the recipe"


@pytest.mark.parametrize("name", [n for n, (stage, _) in ZERO_JSON.items() if stage == 3])
def test_zero3_save_model_writes_full_weights(name):
    assert _json(name)["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name", sorted(ZERO_JSON))
def test_deepspeed_leaves_the_learning_rate_schedule_to_the_trainer(name):
    config = _json(name)
    assert "scheduler" not in config
    _, offload = ZERO_JSON[name]
    if offload:
        # DeepSpeed refuses a torch optimizer with optimizer offload; its own AdamW takes the recipe's values.
        assert config["optimizer"]["type"] == "AdamW"
        assert set(config["optimizer"]["params"].values()) == {"auto"}
    else:
        assert "optimizer" not in config


# ---- Slurm template


def test_sbatch_script_is_valid_bash_and_runs_tuneloop_train():
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    assert "-m tuneloop.train" in text
    assert "configs/accelerate/multi-node.yaml" in text
    for directive in (
        "--nodes=",
        "--gpus-per-node=8",
        "--ntasks-per-node=1",
        "--cpus-per-task=",
        "--time=",
        "--output=",
    ):
        assert f"#SBATCH {directive}" in text


def test_sbatch_gives_each_node_its_own_machine_rank(tmp_path, monkeypatch):
    """Run the template with fake scontrol, srun (two nodes) and accelerate; check each launch line."""
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text('#!/bin/bash\nprintf "gpu-node-a\\ngpu-node-b\\n"\n')
    (fake_bin / "srun").write_text(
        "#!/bin/bash\n"
        'while [[ "$1" == --* ]]; do shift; done\n'
        'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_PROCID=$i "$@" || exit $?; done\n'
    )
    (fake_bin / "accelerate").write_text(
        '#!/bin/bash\nprintf "%s\\n" "$@" > "$SLURM_SUBMIT_DIR/launch-$SLURM_PROCID.txt"\n'
    )
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    submit = tmp_path / "submit"
    submit.mkdir()
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "VENV": str(venv),
        "SLURM_SUBMIT_DIR": str(submit),
        "SLURM_JOB_NODELIST": "gpu-node-[a-b]",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_PROCID": "0",  # what the batch step itself sees
        "SLURM_CPUS_PER_TASK": "64",
    }
    extra = ["--set", "stages.sft.args.learning_rate=1e-4", "--resume"]
    subprocess.run(["bash", str(SBATCH), "recipes/sft-lora.yaml", *extra], env=env, check=True, capture_output=True)
    launches = [(submit / f"launch-{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    for rank, argv in enumerate(launches):
        assert argv[0] == "launch"
        options = dict(zip(argv[1:13:2], argv[2:13:2], strict=True))
        assert options == {
            "--config_file": "configs/accelerate/multi-node.yaml",
            "--num_machines": "2",
            "--num_processes": "16",
            "--machine_rank": str(rank),
            "--main_process_ip": "gpu-node-a",
            "--main_process_port": str(20000 + 4242 % 20000),
        }
        assert argv[13:] == ["-m", "tuneloop.train", "recipes/sft-lora.yaml", *extra]

    # The second node's line, as accelerate 1.15 turns it into torchrun arguments.
    flags = tuple(launches[1][3:13])  # everything between --config_file <file> and -m
    args, _ = _launch_env("multi-node", monkeypatch, flags)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == f"gpu-node-a:{20000 + 4242 % 20000}"
