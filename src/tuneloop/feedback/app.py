"""The rater app (`tuneloop feedback serve CAMPAIGN`, Gradio 6): one item at a time from the rater's blind queue.

Who votes is the logged-in rater (`gr.Request.username`, checked against the store's argon2 hashes by `auth=`),
never a name typed into a box. Every handler reads the rater from the request and the store enforces what they
may touch, so calling the app's HTTP API directly gives a rater no more than the page does: their own queue, no
other rater's votes, no admin data. Model output is untrusted: it is shown in read-only text boxes, which render
no HTML at all. Buttons use `trigger_mode="once"` and every vote is idempotent in the store, so a double click or
a retried request stores one vote.

Keyboard: 1 = left better, 2 = right better, 3 = tie, 4 = both bad (pairwise tab, outside text fields).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from tuneloop.errors import TuneloopError
from tuneloop.feedback import campaigns, queue, store

KEYS = """
<script>
document.addEventListener("keydown", (e) => {
  const tag = (e.target.tagName || "").toLowerCase();
  if (tag === "textarea" || tag === "input") return;
  const id = {"1": "vote-left", "2": "vote-right", "3": "vote-tie", "4": "vote-both-bad"}[e.key];
  const button = id && document.getElementById(id);
  if (button) { e.preventDefault(); button.click(); }
});
</script>
"""


def _rater(request: gr.Request | None) -> str:
    name = getattr(request, "username", None) if request is not None else None
    if not name or store.role(name) is None:
        raise gr.Error("log in as an enabled rater")
    return name


def build(name: str) -> gr.Blocks:
    info = store.campaign(name)
    spec = info["spec"]
    tasks = store.active_tasks(spec)
    questions = spec["tasks"]["rating"]

    def progress(rater: str) -> str:
        mine = store.rater_votes(name, rater)
        return f"**{rater}** · {mine} votes cast · campaign {name}"

    def show(task: str, request: gr.Request):
        rater = _rater(request)
        a = queue.next_assignment(name, rater, task)
        if a is None:
            return None, "Nothing left for you in this task — thank you.", "", "", progress(rater)
        return a.id, store.prompt_text(a.prompt), a.left, a.right or "", progress(rater)

    def vote(task: str, assignment_id: int | None, value: dict, comment: str, request: gr.Request):
        rater = _rater(request)
        if assignment_id is None:
            raise gr.Error("no item to vote on")
        try:
            queue.record_vote(int(assignment_id), rater, value, f"a{int(assignment_id)}", comment or None)
        except TuneloopError as e:
            raise gr.Error(str(e)) from None
        return (*show(task, request), "")

    # Gradio injects the request into parameters annotated `gr.Request`, so handlers are defs, not lambdas
    def loader(task: str):
        def handler(request: gr.Request):
            return show(task, request)

        return handler

    def pairwise_vote(choice: str):
        def handler(i, c, request: gr.Request):
            return vote("pairwise", i, {"choice": choice}, c, request)

        return handler

    def rewrite(i, t, c, request: gr.Request):
        return vote("rewrite", i, {"rewrite": t}, c, request)

    def admin_view(request: gr.Request):
        return admin(name, request)

    def admin_visible(request: gr.Request):
        return gr.update(visible=store.role(_rater(request)) == "admin")

    with gr.Blocks(title=f"tuneloop feedback · {name}") as demo:
        status_md = gr.Markdown()
        with gr.Accordion("Guidelines", open=True):
            gr.Markdown(info["guidelines"])
        with gr.Tabs():
            if "pairwise" in tasks:
                _compare_tab(demo, status_md, pairwise_vote, loader("pairwise"))
            if "rating" in tasks:
                _rating_tab(demo, status_md, questions, vote, loader("rating"))
            if "rewrite" in tasks:
                _rewrite_tab(demo, status_md, rewrite, loader("rewrite"))
            admin_tab = _admin_tab(admin_view)
        demo.load(admin_visible, None, admin_tab)
    return demo


# Each tab's handlers answer (assignment id, prompt, left/answer, right, status, cleared comment); `load` fills the
# first item when the page opens. Buttons fire once per click (trigger_mode="once"): a double click is one vote.


def _compare_tab(demo: gr.Blocks, status_md: gr.Markdown, pairwise_vote: Callable, load: Callable) -> None:
    with gr.Tab("Compare", id="pairwise"):
        p_id = gr.State(None)
        p_prompt = gr.Textbox(label="Prompt", interactive=False, lines=4)
        with gr.Row():
            p_left = gr.Textbox(label="Answer A", interactive=False, lines=4, elem_id="answer-left")
            p_right = gr.Textbox(label="Answer B", interactive=False, lines=4, elem_id="answer-right")
        p_comment = gr.Textbox(label="Comment (optional)", lines=1)
        with gr.Row():
            buttons = {
                "left": gr.Button("A is better  [1]", elem_id="vote-left", variant="primary"),
                "right": gr.Button("B is better  [2]", elem_id="vote-right", variant="primary"),
                "tie": gr.Button("Tie  [3]", elem_id="vote-tie"),
                "both_bad": gr.Button("Both bad  [4]", elem_id="vote-both-bad"),
            }
        outs = [p_id, p_prompt, p_left, p_right, status_md, p_comment]
        for choice, button in buttons.items():
            button.click(pairwise_vote(choice), [p_id, p_comment], outs, trigger_mode="once", api_name=f"vote_{choice}")
        demo.load(load, None, outs[:5], api_name="next_pairwise")


def _rating_tab(demo: gr.Blocks, status_md: gr.Markdown, questions: list[dict], vote: Callable, load: Callable) -> None:
    with gr.Tab("Rate", id="rating"):
        r_id = gr.State(None)
        r_prompt = gr.Textbox(label="Prompt", interactive=False, lines=4)
        r_answer = gr.Textbox(label="Answer", interactive=False, lines=4)
        sliders = [gr.Slider(1, 5, value=3, step=1, label=q["text"]) for q in questions]
        r_comment = gr.Textbox(label="Comment (optional)", lines=1)
        r_submit = gr.Button("Submit rating", variant="primary", elem_id="rate-submit")
        r_outs = [r_id, r_prompt, r_answer, gr.Textbox(visible=False), status_md, r_comment]

        def rate(data: dict, request: gr.Request):  # inputs given as a set arrive as one dict
            value = {"ratings": {q["name"]: int(data[s]) for q, s in zip(questions, sliders, strict=True)}}
            return vote("rating", data[r_id], value, data[r_comment], request)

        r_submit.click(rate, {r_id, r_comment, *sliders}, r_outs, trigger_mode="once", api_name="rate")
        demo.load(load, None, r_outs[:5], api_name="next_rating")


def _rewrite_tab(demo: gr.Blocks, status_md: gr.Markdown, rewrite: Callable, load: Callable) -> None:
    with gr.Tab("Rewrite", id="rewrite"):
        w_id = gr.State(None)
        w_prompt = gr.Textbox(label="Prompt", interactive=False, lines=4)
        w_answer = gr.Textbox(label="Answer — edit it into a good one", lines=4, elem_id="rewrite-text")
        w_comment = gr.Textbox(label="Comment (optional)", lines=1)
        w_submit = gr.Button("Submit rewrite", variant="primary", elem_id="rewrite-submit")
        w_outs = [w_id, w_prompt, w_answer, gr.Textbox(visible=False), status_md, w_comment]
        w_submit.click(rewrite, [w_id, w_answer, w_comment], w_outs, trigger_mode="once", api_name="rewrite")
        demo.load(load, None, w_outs[:5], api_name="next_rewrite")


def _admin_tab(admin_view: Callable) -> gr.Tab:
    """Hidden until the page loads for an admin; `admin()` checks the role again, for the HTTP API."""
    with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
        a_summary = gr.Markdown("Admins only.")
        a_ranking = gr.Dataframe(headers=["rank", "model", "score", "95% CI", "wins", "losses", "ties"])
        a_plot = gr.Plot(label="Bradley–Terry scores with 95% CIs")
        a_raters = gr.Dataframe(headers=["rater", "votes", "gold correct", "gold accuracy [95% CI]", "flagged"])
        a_refresh = gr.Button("Refresh", elem_id="admin-refresh")
        a_refresh.click(admin_view, None, [a_summary, a_ranking, a_plot, a_raters], api_name="admin")
    return admin_tab


def admin(name: str, request: gr.Request) -> tuple[str, list[list], Any, list[list]]:
    """The admin view; the role is checked here, not only by hiding the tab, so the HTTP API refuses raters."""
    rater = _rater(request)
    if store.role(rater) != "admin":
        raise gr.Error("the admin view is for admins")
    rep = campaigns.report(name, resamples=500)
    lines = [f"**{rep['items']} items** ({rep['gold_items']} gold), {rep['overlap']} raters each"]
    for task, t in rep["tasks"].items():
        lines.append(f"- {task}: {t['votes']} votes, {t['complete_items']} items complete")
    for key, a in rep.get("agreement", {}).items():
        shown = "n/a" if a["value"] != a["value"] else f"{a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
        observed = f"; raters agree on {a['observed']:.0%} of pairs" if a.get("observed") is not None else ""
        lines.append(f"- agreement ({key}, Krippendorff's alpha): {shown}{observed}")
    if "position_bias" in rep:
        pb = rep["position_bias"]
        if pb["value"] == pb["value"]:
            lines.append(f"- P(left answer wins): {pb['value']:.2f} [{pb['ci_low']:.2f}, {pb['ci_high']:.2f}]")
    if rep["excluded_raters"]:
        lines.append(f"- flagged on gold items (left out): {', '.join(rep['excluded_raters'])}")
    ranking = [
        [
            r["rank"],
            r["name"],
            round(r["score"]),
            f"[{r['ci_low']:.0f}, {r['ci_high']:.0f}]",
            r["wins"],
            r["losses"],
            r["ties"],
        ]
        for r in rep.get("ranking", [])
    ]
    raters = []
    for r, n in sorted(rep["raters"].items()):
        g = rep["raters_gold"].get(r)
        acc = g["accuracy"] if g else None
        shown = f"{acc['value']:.2f} [{acc['ci_low']:.2f}, {acc['ci_high']:.2f}]" if acc and acc["n"] else "—"
        raters.append([r, n, f"{g['correct']}/{g['gold_items']}" if g else "—", shown, bool(g and g["flagged"])])
    return "\n".join(lines), ranking, _ranking_plot(rep.get("ranking", [])), raters


def _ranking_plot(ranking: list[dict]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * max(len(ranking), 1)))
    for y, r in enumerate(reversed(ranking)):
        ax.errorbar(r["score"], y, xerr=[[r["score"] - r["ci_low"]], [r["ci_high"] - r["score"]]], fmt="o", capsize=4)
    ax.set_yticks(range(len(ranking)), [r["name"] for r in reversed(ranking)])
    ax.set_xlabel("Bradley–Terry score (Elo scale), 95% CI")
    ax.set_title(" ", pad=14)  # room for Gradio's label over the top-left corner
    fig.tight_layout()
    return fig


def serve(name: str, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Launch the app with the store's accounts as Gradio's `auth`."""
    demo = build(name)
    demo.queue(default_concurrency_limit=16)
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=lambda user, password: store.check_password(user, password),
        auth_message=f"tuneloop feedback · {name}: log in with your rater account",
        head=KEYS,
        prevent_thread_lock=not block,
        quiet=True,
    )
