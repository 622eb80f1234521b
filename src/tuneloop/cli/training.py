"""`tuneloop validate | train | run`: check recipes, run their stages, and print what each stage did (rank 0 only
under `accelerate launch`). Heavy imports stay inside the verbs, so `tuneloop --help` starts without torch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuneloop.cli.kit import SetOpt, err, fail, is_main_rank, load_recipe_or_exit, out
from tuneloop.config.errors import RecipeError

if TYPE_CHECKING:
    from tuneloop.pipeline import RunResult
    from tuneloop.rundir import StageSummary

SmokeOpt = Annotated[
    bool, typer.Option("--smoke", help="Whole path on a tiny random model of the same architecture, few rows, 2 steps.")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the newest unfinished run of this recipe from its last checkpoint.")
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Start a new run at this stage, reusing the earlier stages' outputs from the newest run that finished "
        "them with the same settings.",
    ),
]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Write the run here instead of the workspace.")]


def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files to check.")],
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable results for CI.")] = False,
) -> None:
    """Check recipes and evaluation suites completely (schema, files, data columns, trainer args) without loading a
    model.

    Exit code 2 when any recipe has a problem; every problem is listed as `file:line key.path: reason`.
    """
    from tuneloop.config.loader import file_kind
    from tuneloop.config.yamlsource import display_path
    from tuneloop.recipes import load_recipe, load_suite, recipe_notes
    from tuneloop.sweep.spec import load_sweep

    results = []
    for path in recipes:
        notes: list[str] = []
        try:
            kind = file_kind(path)
            if kind == "suite":
                load_suite(path)
            elif kind == "sweep":
                load_sweep(path, set_)  # the recipe too, and every searched value against it
            else:
                recipe = load_recipe(path, set_)
                notes = recipe_notes(recipe, path.parent)
            results.append({"recipe": str(path), "ok": True, "problems": [], "notes": notes})
        except RecipeError as e:
            results.append({"recipe": str(path), "ok": False, "problems": [p.as_dict() for p in e.problems]})
            if not as_json:
                for p in e.problems:
                    err.print(str(p), markup=False)
        else:
            if not as_json:
                for note in notes:
                    out.print(f"note: {display_path(path)} {note}", markup=False, highlight=False)
                out.print(f"[green]ok[/] {path}")
    if as_json:
        print(json.dumps(results, indent=2))
    if not all(r["ok"] for r in results):
        raise typer.Exit(2)


def _train(
    recipe_path: Path, set_, smoke: bool, resume: bool, run_dir: Path | None, verb: str, from_stage: str | None = None
) -> None:
    """Load the recipe → print it → run the pipeline → print each stage, the evaluation, the cost, the registration
    → exit 3 when the gate failed (reported only for a smoke run)."""
    if from_stage and resume:
        fail("--from starts a new run and --resume continues an unfinished one; use one of them", 2)
        return
    recipe = load_recipe_or_exit(recipe_path, set_)
    import torch

    from tuneloop.errors import TuneloopError
    from tuneloop.models.refs import check_reference
    from tuneloop.train import launch

    try:  # a launch that would silently train something else stops here, on every rank, before the stack loads
        launch.refuse_impossible(launch.requested(), torch.cuda.is_available())
        check_reference(recipe.base_model.name, recipe_path.parent)
    except TuneloopError as e:
        fail(str(e), 1, e)
        return
    from tuneloop import pipeline
    from tuneloop.config.loader import resolved_yaml
    from tuneloop.train.progress import console

    main = is_main_rank()
    if main:
        console.rule(f"tuneloop {verb} {recipe_path}" + ("  (smoke)" if smoke else ""))
        console.print(resolved_yaml(recipe), markup=False, highlight=False)
    started = time.perf_counter()
    try:
        result = pipeline.run(
            recipe,
            recipe_path,
            smoke=smoke,
            resume=resume,
            run_dir=run_dir,
            say=lambda m: console.print(m, highlight=False),
            evaluate=verb == "run",
            from_stage=from_stage,
        )
    except TuneloopError as e:
        fail(str(e), 1, e)
        return
    except ImportError as e:
        fail(f"a package this recipe needs is missing: {e} (GPU machines: pip install 'tuneloop[gpu]')", 1, e)
        return
    if not main:
        return
    _print_result(result, time.perf_counter() - started, console)
    _print_registration(result, recipe_path, recipe, console)
    failure = pipeline.gate_failure(result.evaluation)
    if failure and smoke:
        console.print(f"[yellow]smoke run: the gate is reported, not enforced (random tiny model)[/]\n{failure}")
    elif failure:
        fail(failure, 3)


def _print_result(result: RunResult, elapsed: float, console) -> None:
    """A table per stage, then the evaluation summary, the cost and where the run and its tracking are."""
    from tuneloop.cost import describe as describe_cost
    from tuneloop.train.progress import summary_table

    for s in result.stages:
        console.print(summary_table(f"stage {s.stage} ({s.method})", _stage_rows(s)))
    if result.evaluation is not None:
        from tuneloop.eval.summary import print_summary

        print_summary(result.evaluation, console)
        console.print(f"evaluation report: {result.run_dir.eval_dir / 'report.html'}")
    if result.cost.get("total"):
        parts = [f"{k} {describe_cost(v)}" for k, v in result.cost.items() if v and k != "total"]
        console.print("cost: " + "; ".join(parts) + f"; [bold]total {describe_cost(result.cost['total'])}[/]")
    training = result.summary.wall_s
    spent = f"{elapsed:.1f} s" if result.evaluation is None else f"{elapsed:.1f} s ({training:.1f} s training)"
    console.print(f"run finished in {spent}: {result.run_dir.path}")
    if result.tracking:
        console.print(f"tracked in MLflow: {result.tracking}")


def _stage_rows(s: StageSummary) -> list[tuple[str, str]]:
    from tuneloop.cost import describe as describe_cost

    rows = [
        ("steps", str(s.steps)),
        ("train loss", f"{_f(s.loss_first)} → {_f(s.loss_last)}"),
        ("eval loss", f"{_f(s.eval_loss_before)} → {_f(s.eval_loss_after)}")
        if s.eval_loss_after is not None
        else ("eval loss", "no eval split"),
        (
            "tokens/s",
            f"{_f(s.tokens_per_s)} ({s.train_tokens} non-padding tokens; "
            f"{_f(s.tokens_per_s_after_first_step)} after the first step)",
        ),
        ("train time", f"{s.train_runtime_s:.1f} s"),
        ("cost", describe_cost(s.cost or {})),
        ("processes", _processes(s)),
        ("memory", _memory(s)),
        ("model", s.model_dir),
    ]
    return rows + _method_rows(s) + [("note", n) for n in s.notes]


def _method_rows(s: StageSummary) -> list[tuple[str, str]]:
    """What only some methods report: a reward model's pairwise accuracy, the reference model, GRPO's rewards,
    a distillation's teacher and student."""
    rows = []
    if acc := s.pairwise_accuracy:
        rows.append(
            ("pairwise accuracy", f"{acc['value']:.1%} [{acc['ci_low']:.1%}, {acc['ci_high']:.1%}] on {acc['n']} pairs")
        )
    if s.reference_model:
        rows.append(("reference", s.reference_model))
    if s.rewards:
        rows.append(("rewards", ", ".join(f"{r['reward']}×{r['weight']:g}" for r in s.rewards)))
    if s.zero_std_share_mean is not None:
        last = s.zero_std_share_last or 0.0
        rows.append(("tied groups", f"{s.zero_std_share_mean:.0%} mean, {last:.0%} last (warn above 80%)"))
    if d := s.distillation:
        kept = f" {d['kept_layers']}" if d.get("kept_layers") else ""
        rows.append(
            (
                "distillation",
                f"{d['mode']}, beta {d['beta']:g}, temperature {d['temperature']:g}; teacher {d['teacher']} "
                f"({d['teacher_layers']} layers) → student {d['student_layers']} layers{kept}",
            )
        )
    return rows


def _print_registration(result: RunResult, recipe_path: Path, recipe, console) -> None:
    """The registered version, its aliases, its cost, what promotion decided, and what to try next."""
    reg = result.registration
    if reg is None:
        return
    from tuneloop.cost import describe as describe_cost
    from tuneloop.tracking import store

    model = store.client().get_registered_model(reg.name)
    tags = " ".join(f"@{a}" for a, v in sorted(model.aliases.items()) if str(v) == reg.version) or "none"
    again = "" if reg.created else " (this run was registered before: same version)"
    cost = describe_cost(result.cost.get("total") or result.cost.get("training") or {})
    console.print(f"[bold]registered[/] {reg.uri}{again} · aliases {tags} · cost {cost}")
    decision = result.promotion
    if decision is not None:
        head = "[green]promoted to @champion[/]" if decision.promoted else "[yellow]not promoted[/] (stays @challenger)"
        console.print(f"{head}: {decision.reason.removeprefix('not promoted: ')}", markup=True)
        if decision.report:
            console.print(f"promotion report: {decision.report / 'report.html'}")
    lr = f"stages.{recipe.stages[0].name}.args.learning_rate=0"
    lines = [f"tuneloop registry show {reg.name}", f"tuneloop registry lineage {reg.name}@{reg.version}"]
    if decision is not None and decision.promoted:
        lines += [
            f"tuneloop eval -m models:/{reg.name}@champion --suite {recipe_path}",
            f"tuneloop run {recipe_path} --set {lr}    # a deliberately worse challenger: promotion is refused",
        ]
    else:
        lines += [
            f"tuneloop registry promote {reg.name} --version {reg.version}    # judge it against the champion",
        ]
    console.print("next:\n" + "\n".join(f"  {line}" for line in lines), markup=False)


def _processes(s: StageSummary) -> str:
    """`2 · DeepSpeed ZeRO-3 (weights identical on all ranks)`: how many, in which mode, and the rank check."""
    from tuneloop.train.launch import describe

    mode = describe(s.distributed)
    words = f"{s.world_size}" + (f" · {mode}" if mode else "")
    return words if s.world_size == 1 else f"{words} ({_sync_words(s.ranks_in_sync)})"


def _memory(s: StageSummary) -> str:
    if s.model_memory_bytes is None:
        return "-"
    layers = (s.distributed or {}).get("quantized_layers")
    sharded = (s.distributed or {}).get("zero_stage") == 3
    return (
        f"{s.model_memory_bytes / 2**20:.1f} MiB model"
        + (" (this rank's shard)" if sharded else "")
        + (f", {layers} layers in 4-bit NF4" if layers else "")
    )


def _sync_words(in_sync: bool | None) -> str:
    if in_sync is None:
        return "parameters sharded (FSDP); replica check not applicable"
    return "weights identical on all ranks" if in_sync else "WEIGHTS DIFFER BETWEEN RANKS"


def _f(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe file.")],
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    resume: ResumeOpt = False,
    run_dir: RunDirOpt = None,
    from_stage: FromOpt = None,
) -> None:
    """Run the recipe's training stages only, in this process (or on every rank under `accelerate launch`).

    Evaluation is `tuneloop run` (training + evaluation + gate) or, after a cluster run,
    `tuneloop eval --suite RECIPE -m BASE_MODEL -m RUN_DIR`.
    """
    _train(recipe, set_, smoke, resume, run_dir, "train", from_stage)


def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe file.")],
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    resume: ResumeOpt = False,
    run_dir: RunDirOpt = None,
    from_stage: FromOpt = None,
) -> None:
    """Run the whole recipe: train every stage, evaluate the baseline and the trained model on the recipe's suite,
    apply the gate (exit 3 when it fails), and register the model when the recipe has `registry:`."""
    _train(recipe, set_, smoke, resume, run_dir, "run", from_stage)
