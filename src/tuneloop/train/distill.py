"""Knowledge distillation with TRL's DistillationTrainer: a student learns the teacher's next-token distribution
(generalised Jensen-Shannon divergence: `args.beta` 0 is forward KL, 1 reverse KL, 0.5 JSD; `args.temperature`).

`mode: on_policy` (TRL's own, the default): the student answers each prompt and learns the teacher's distribution
on its own answers — what it will see when it generates alone. `mode: off_policy`: the data's completions stand in
for the student's answers (classic distillation, as in DistilBERT; GKD with λ=0), so no generation: far cheaper,
and the practical choice on a CPU. Both share TRL's loss, teacher handling and vocabulary check.

The student starts from the teacher with layers dropped (`student: {from: teacher, keep_layers: every_2}`) or from
any model with the teacher's vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import PartialState
from trl import DistillationConfig, DistillationTrainer

from tuneloop.config.schema import Stage
from tuneloop.models.loading import (
    drop_layers,
    kept_layers,
    load_model,
    load_tokenizer,
    merge_adapter,
    resolve,
    tiny_copy,
)
from tuneloop.rundir import StageSummary
from tuneloop.train.stage import StageContext, finish, lora_config, stage_data, trl_args

# forward KL on fixed data: the student covers the teacher's whole distribution at each of the data's tokens
OFF_POLICY_DEFAULTS = {"beta": 0.0}


class DatasetDistillationTrainer(DistillationTrainer):
    """DistillationTrainer on the data's completions instead of the student's samples (off-policy)."""

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._answers: list[tuple[Any, Any]] = [(x["prompt"], x["completion"]) for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
        return [self._answer_ids(ids, p, c) for ids, (p, c) in zip(prompt_ids, self._answers, strict=True)]

    def _answer_ids(self, prompt_ids: list[int], prompt: Any, completion: Any) -> list[int]:
        """The completion's tokens as the chat template renders them after the prompt, through the end of turn."""
        tok = self.processing_class
        ids: list[int] | None = None
        if isinstance(completion, list):
            full = tok.apply_chat_template(
                prompt + completion,
                chat_template=self.chat_template,
                tokenize=True,
                return_dict=True,
                **self.chat_template_kwargs,
            )["input_ids"]
            if full[: len(prompt_ids)] == list(prompt_ids):
                ids = full[len(prompt_ids) :]
            text = "".join(m["content"] for m in completion)
        else:
            text = completion
        if ids is None:  # a template that re-renders the prompt differently: the text plus end of sequence
            ids = tok(text=text, add_special_tokens=False)["input_ids"] + [self.eos_token_ids[0]]
        end = next((i for i, t in enumerate(ids) if t in self.eos_token_ids), None)
        ids = ids if end is None else ids[: end + 1]
        return ids[: self.max_completion_length] if self.max_completion_length else ids


def train(stage: Stage, ctx: StageContext) -> StageSummary:
    recipe = ctx.recipe
    off_policy = stage.mode == "off_policy"
    tokenizer = load_tokenizer(ctx.model_source, recipe.base_model, ctx.recipe_dir)
    data = stage_data(stage, ctx)
    teacher_source, teacher_name = _teacher_source(stage, ctx)
    teacher = load_model(teacher_source, recipe.base_model).eval()
    teacher.requires_grad_(False)
    student = _student(stage, ctx, teacher_source, teacher_name)
    extra = OFF_POLICY_DEFAULTS if off_policy and "beta" not in stage.args else None
    config = trl_args(DistillationConfig, stage, ctx, has_eval=data.eval is not None, extra=extra)
    divergence = {0.0: "forward KL", 1.0: "reverse KL", 0.5: "JSD"}.get(config.beta, f"JSD β={config.beta:g}")
    answers = (
        "the data's completions"
        if off_policy
        else f"the student's own answers, up to {config.max_completion_length} tokens"
    )
    ctx.say(
        f"distillation: {stage.mode or 'on_policy'} on {answers}; {divergence} at temperature {config.temperature:g}"
    )
    trainer_cls = DatasetDistillationTrainer if off_policy else DistillationTrainer
    trainer = trainer_cls(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=lora_config(stage.peft, ctx),
    )
    summary = finish(trainer, stage, ctx, data, tokenizer)
    summary.distillation = {
        "mode": stage.mode or "on_policy",
        "teacher": teacher_name,
        "teacher_layers": teacher.config.get_text_config().num_hidden_layers,
        "student_layers": student.config.get_text_config().num_hidden_layers,
        "student_from": stage.student.from_,
        "kept_layers": getattr(student, "tuneloop_kept_layers", None),
        "beta": config.beta,
        "temperature": config.temperature,
    }
    return summary


def _teacher_source(stage: Stage, ctx: StageContext) -> tuple[str, str]:
    """Where the teacher loads from: its own reference, else the model the stage starts from; an adapter is folded
    into its base first (the student copies plain weights)."""
    if stage.teacher:
        source, name = _resolve(stage.teacher, ctx, "teacher"), stage.teacher
    else:
        source, name = ctx.model_source, ctx.model_name
    if (Path(source) / "adapter_config.json").is_file():
        out = ctx.stage_dir(stage) / "teacher-merged"
        if ctx.is_main:
            merge_adapter(Path(source), out)
        PartialState().wait_for_everyone()
        source = str(out)
    return source, name


def _resolve(name: str, ctx: StageContext, role: str) -> str:
    """A model reference as a local path; a smoke run swaps it for a tiny random copy, as for the base model."""
    ref = ctx.recipe.base_model.model_copy(update={"name": name, "revision": None, "chat_template": None})
    source = resolve(ref, ctx.recipe_dir, log=ctx.say)
    if ctx.smoke:
        source = tiny_copy(source, ref, ctx.run_dir / f"smoke-{role}", ctx.recipe.seed)
    return source


def _student(stage: Stage, ctx: StageContext, teacher_source: str, teacher_name: str) -> Any:
    spec = stage.student
    if spec.from_ != "teacher":
        model = load_model(_resolve(spec.from_, ctx, "student"), ctx.recipe.base_model)
        ctx.say(f"student: {spec.from_}, {model.config.get_text_config().num_hidden_layers} layers")
        return model
    model = load_model(teacher_source, ctx.recipe.base_model)
    layers = model.config.get_text_config().num_hidden_layers
    if spec.keep_layers is None:
        ctx.say(f"student: a copy of the teacher ({teacher_name}, {layers} layers)")
        return model
    keep = kept_layers(spec.keep_layers, layers)
    drop_layers(model, keep)
    model.tuneloop_kept_layers = keep
    ctx.say(f"student: the teacher ({teacher_name}) with {len(keep)} of its {layers} layers: {keep}")
    return model
