"""Monitor: follow one run live (status, progress, curves, sample predictions); stop, resume or delete it; hand it
in to an assignment or download its reproducible bundle. With accounts, a student sees only their own runs (the
engine's access rules) and no test values of a hidden-test assignment."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import streamlit as st

from engine.accounts import access
from engine.accounts.actor import Actor
from engine.classroom import assignments, bundle, handins
from engine.data.manifest import manifest_or_none
from engine.diagnosis import diagnose
from engine.errors import UserError, shown
from engine.runs import lifecycle, queue, store, worker
from engine.runs.paths import latest_preview, weights_note
from engine.tasks import METRIC_NOTES, auc_accuracy_note
from pages import _auth as auth
from pages import _widgets as w

# A refresh every 2 s slowed CPU training by 3.3 % (benchmarks/monitor.md); 5 s keeps it within 2 %.
POLL_SECONDS = float(os.environ.get("LIGHTBOX_MONITOR_SECONDS", 5))
RESUMABLE = ("failed", "cancelled", "interrupted")


def can_resume(run: dict) -> bool:
    return run["status"] in RESUMABLE or (run["status"] == "done" and (run["epoch"] or 0) < (run["epochs"] or 0))


def stop(run_id: str, actor: Actor | None = None) -> None:
    """Button callback: runs before the page redraws, so the page shows the new status at once."""
    try:
        outcome = lifecycle.cancel(run_id, actor=actor)
        st.session_state["monitor_notice"] = ("info", {
            "cancelled": "Cancelled before it started.",
            "cancelling": "Stopping at the next training step; the last finished epoch is kept.",
        }.get(outcome, f"The run is already {outcome}."))
    except Exception as err:  # noqa: BLE001 - shown as a sentence; UserError carries its own
        st.session_state["monitor_notice"] = ("error", _sentence(err, "Could not stop the run"))


def resume(run_id: str, actor: Actor | None = None) -> None:
    try:
        lifecycle.resume(run_id, actor=actor)
        st.session_state["monitor_notice"] = ("success", "Queued again: it continues from its last finished epoch.")
    except Exception as err:  # noqa: BLE001
        st.session_state["monitor_notice"] = ("error", _sentence(err, "Could not resume the run"))


def delete(run_id: str, actor: Actor | None = None) -> None:
    try:
        lifecycle.delete(run_id, actor=actor)
        st.session_state.pop("run_id", None)
        st.session_state["monitor_notice"] = ("success", f"Deleted run {w.as_text(run_id)} with its checkpoints "
                                              "and curves.")
    except Exception as err:  # noqa: BLE001
        st.session_state["monitor_notice"] = ("error", _sentence(err, "Could not delete the run"))


def delete_panel(run: dict, actor: Actor | None = None) -> None:
    if run["status"] in store.ACTIVE:
        st.caption("Stop the run before deleting it.")
        return
    st.caption("Removes the run from every page, with its curves, checkpoints and sample pictures. "
               "Download the model first (Predict page) if you want to keep it.")
    sure = st.checkbox(f"Yes, delete run {w.as_text(run['id'])}", key=f"monitor_delete_sure_{run['id']}")
    st.button("Delete run", key="monitor_delete", on_click=delete, args=(run["id"], actor), disabled=not sure)


def _sentence(err: Exception, what: str) -> str:
    """The notice for a failed button: the engine's sentence (as text: it quotes names), or a short apology."""
    if isinstance(err, UserError):
        return w.as_text(err)
    w.log.exception(what)
    return f"{what}: something unexpected went wrong; try again."


def choose_run(runs: list[dict]) -> dict:
    by_id = {r["id"]: r for r in runs}
    wanted = w.selected_run_id()
    if wanted and wanted not in by_id:
        st.error(f"There is no run '{w.as_text(shown(wanted))}' in this workspace; showing the newest run instead.")
        st.session_state.pop("run_id", None)
    picked = w.synced_selectbox("Run (newest first)", list(by_id), "run_id", "monitor_run",
                                format_func=lambda i: w.run_label(by_id[i]))
    w.remember_run_in_address(picked)
    return by_id[picked]


def show_notice() -> None:
    """What the last button did (set by its callback)."""
    notice = st.session_state.pop("monitor_notice", None)
    if notice:
        getattr(st, notice[0])(notice[1])


def header(run: dict, actor: Actor | None = None) -> None:
    cols = st.columns([4, 1, 1])
    with cols[0]:
        st.markdown(f"### {w.as_text(run['name'] or run['arch'])}")
        st.caption(f"`{run['id']}` · model **{run['arch']}** · dataset **{w.as_text(run['dataset_id'])}** · "
                   f"created {w.when(run['created_at'])}")
        w.status_badge(run["status"])
        kept = weights_note(run["id"]) if (run.get("config") or {}).get("pretrained", "none") != "none" else None
        if kept:
            st.caption(w.as_text(kept))             # what it kept of the weights it started from
    cols[1].button("Stop", key="monitor_stop", on_click=stop, args=(run["id"], actor), width="stretch",
                   disabled=run["status"] not in store.ACTIVE or bool(run.get("cancel_requested")),
                   help="Stops at the next step; the last finished epoch is kept and can be resumed.")
    cols[2].button("Resume", key="monitor_resume", on_click=resume, args=(run["id"], actor), width="stretch",
                   disabled=not can_resume(run), help="Continue from the last finished epoch.")
    show_notice()
    message = w.as_text(run.get("message") or "")       # the engine's words, which may quote a file name
    if run["status"] == "failed":
        st.error(f"The run failed: {message or 'no reason was recorded.'}")
    elif run["status"] == "interrupted":
        st.warning(message or "The run was interrupted; press Resume to continue.")
    elif run["status"] == "cancelled":
        st.info(message or "Stopped by the user.")
    elif run["status"] == "done":
        st.success(message or "Finished.")
    elif run["status"] == "queued" and message:
        st.info(message)                 # e.g. a fold that `train --folds` trains in its own process, not a worker
    elif run["status"] == "queued" and not any(x.get("device") != "starting" for x in worker.live_workers()):
        st.warning("Waiting for a worker: none is running. It starts with the app, or run `python -m engine worker`.")


def progress(run: dict, columns: dict[str, list]) -> None:
    epoch, epochs = run["epoch"] or 0, run["epochs"] or 0
    text = f"Epoch {epoch}/{epochs}"
    if run["status"] == "queued":
        text += " · waiting in the queue"
    elif run["status"] == "starting":
        text += " · starting: loading the data and building the model (Stop ends it at once)"
    elif run["status"] == "running":
        text += f" · {eta(columns, epochs - epoch)}"
        if run.get("cancel_requested"):
            text += " · stopping…"
    st.progress(min(1.0, max(0.0, float(run["progress"] or (epoch / epochs if epochs else 0)))), text=text)
    if (note := replan_note(run)):
        st.caption(note)


def replan_note(run: dict) -> str | None:
    """Why an Auto run's number of epochs changed while it trained (engine.training.handlers.replan)."""
    preset = (run.get("config") or {}).get("preset") or {}
    last = preset.get("replanned")
    if not last:
        return None
    times = int(last.get("times") or 1)
    return (f"Auto re-planned this run's length {'once' if times == 1 else f'{times} times'} to fit its "
            f"{preset.get('budget_minutes', 0):g}-minute budget: its timing probe planned "
            f"{last.get('first_epochs', last.get('from_epochs'))} epochs; after epoch {last.get('after_epoch')} an "
            f"epoch took about {float(last.get('epoch_seconds') or 0):.1f} s, so it trains {last.get('to_epochs')}. "
            "The learning-rate schedule follows the new end.")


def eta(columns: dict[str, list], epochs_left: int) -> str:
    seconds = w.curve(columns, "train", "epoch_seconds")[1][-3:]
    if not seconds:
        return "time left: estimating after the first epoch"
    return f"about {w.duration(sum(seconds) / len(seconds) * epochs_left)} left"


def numbers(run: dict) -> None:
    cols = st.columns(4)
    best = run.get("best_metric")
    cols[0].metric(f"Best validation {w.METRIC_TITLES.get(best or '', best or 'score')}",
                   "–" if run.get("best_value") is None else f"{run['best_value']:.3f}",
                   help="The best checkpoint is kept; later epochs can be worse.")
    if (uncertainty := spread(run.get("best") or {}, best)):
        cols[0].caption(uncertainty)
    cols[1].metric("Best epoch", run.get("best_epoch") or "–")
    cols[2].metric("Training time", w.duration(run.get("train_seconds")))
    cols[3].metric("Parameters", w.millions(run.get("params")))
    test = run.get("test") or {}
    if test and best in test:
        st.caption(f"Held-out test split ({test.get('n', '?')} images): "
                   + ", ".join(f"{w.METRIC_TITLES.get(k, k)} {v:.3f}" for k, v in test.items()
                               if k in w.TASK_METRICS.get(run["task"], ()) and isinstance(v, (int, float)) and v == v))


def spread(scores: dict, metric: str | None) -> str:
    """'95 % interval 0.71–0.86 · 18 images': how far the number could move on another set of images."""
    if not metric:
        return ""
    n = scores.get(f"{metric}_n", scores.get("n"))
    low_high = scores.get(f"{metric}_ci")
    parts = []
    if isinstance(low_high, list) and len(low_high) == 2 and None not in low_high and all(v == v for v in low_high):
        parts.append(f"95 % interval {low_high[0]:.2f}–{low_high[1]:.2f}")
    if n:
        parts.append(f"{n} image{'' if n == 1 else 's'}")
    if scores.get("empty_total"):
        parts.append(f"{scores.get('empty_correct', 0)}/{scores['empty_total']} empty slices left empty")
    return " · ".join(parts)


def more_metrics(run: dict) -> None:
    """Every validation number at the best epoch, with what the non-headline ones do not say."""
    best = {k: v for k, v in (run.get("best") or {}).items() if isinstance(v, (int, float)) and v == v}
    if not best:
        return
    with st.expander("More metrics (all validation numbers at the best epoch)"):
        st.dataframe([{"metric": w.METRIC_TITLES.get(k, k), "value": round(float(v), 4)} for k, v in best.items()],
                     hide_index=True, key="monitor_more_metrics")
        if "pixel_accuracy" in best:
            st.caption(METRIC_NOTES["pixel_accuracy"])
        if (note := auc_accuracy_note(best)):
            st.caption(note)


def findings(run: dict, rows: list[dict]) -> None:
    """Plain-language diagnosis: each finding one sentence and the next thing to try (engine.diagnosis)."""
    # a finished run: the manifest adds class names and counts
    manifest = None if run["status"] in store.ACTIVE else manifest_or_none(run["dataset_id"])
    key = (run["id"], run.get("epoch"), run["status"], len(rows))
    cached = st.session_state.get("_diagnosis")
    if cached and cached[0] == key:          # the panel refreshes every few seconds; rules rerun on new rows only
        found = cached[1]
    else:
        found = diagnose(run, rows, manifest)
        st.session_state["_diagnosis"] = (key, found)
    if found:
        st.markdown("**What Lightbox notices**")
        for finding in found:
            st.warning(w.as_text(finding["message"]), icon=":material/lightbulb:")


def sample_predictions(run: dict) -> None:
    path = latest_preview(run["id"])
    if path is None:
        st.caption("Sample predictions appear after the first epoch.")
        return
    match = re.search(r"(\d+)", path.stem)
    epoch = int(match.group(1)) if match else "?"
    how = ("each row: image · true mask · predicted mask" if run["task"] == "segmentation"
           else "true and predicted labels; green is right, red is wrong")
    # The file is a PNG already: saying so spares Streamlit re-encoding it on every refresh.
    st.image(str(path), caption=f"Validation images after epoch {epoch} ({how})", output_format="PNG")


def live_panel(run_id: str, seen_status: str, actor: Actor | None = None) -> None:
    run = store.get_run(run_id)
    if run is None:
        st.error("This run was removed from the store.")
        return
    run = access.strip_hidden(actor, access.check_run(actor, run, "follow"))
    if run["status"] != seen_status:
        st.rerun()          # the whole page follows the new status (buttons, messages, whether to poll)
    # Plain columns, not a DataFrame: this reruns every few seconds while a run trains (benchmarks/monitor.md)
    rows = w.metric_rows(run)
    columns = w.curve_columns(rows)
    progress(run, columns)
    numbers(run)
    findings(run, rows)
    more_metrics(run)
    if not columns["step"]:
        st.caption("Curves appear once the first training steps are logged.")
    else:
        left, right = st.columns(2)
        left.plotly_chart(w.loss_figure(columns), key="monitor_loss")
        scores = w.metric_figure(columns, run["task"])
        if scores.data:
            right.plotly_chart(scores, key="monitor_metric")
        else:
            right.caption("Validation scores appear after the first epoch.")
    sample_predictions(run)


def hand_in(name: str, run_id: str, actor: Actor | None) -> None:
    """Button callback: the engine scores the run once on the assignment's test split and keeps the hand-in."""
    try:
        done = handins.hand_in(actor, name, run_id)
        title = w.METRIC_TITLES.get(done["metric"], done["metric"])
        score = "" if done.get("value") is None else f" Its test {title}: {done['value']:.3f}."
        st.session_state["monitor_notice"] = ("success", f"Handed in to {w.as_text(name)}.{score}")
    except Exception as err:  # noqa: BLE001
        st.session_state["monitor_notice"] = ("error", _sentence(err, "Could not hand the run in"))


def handin_panel(run: dict, actor: Actor | None) -> None:
    """'Hand in' for a finished run on an assignment's dataset (the owner's own run; the engine checks)."""
    found = assignments.assignment_for_dataset(run["dataset_id"])
    if found is None or (actor is not None and run.get("owner") not in (None, actor.name)):
        return
    given = assignments.handin_of_run(run["id"])
    if given is not None:
        st.caption(f"Handed in to assignment {w.as_text(found['name'])}.")
        return
    limits = f" The deadline is {w.when_iso(found['deadline_iso'])}." if found.get("deadline_iso") else ""
    st.caption(f"This run is on the dataset of assignment {w.as_text(found['name'])}. Handing it in scores it once "
               f"on the assignment's test split; your latest hand-in is the one that counts.{limits}")
    st.button("Hand in", key="monitor_handin", on_click=hand_in, args=(found["name"], run["id"], actor),
              type="primary", disabled=run["status"] != "done",
              help="Only a finished run can be handed in.")


def bundle_panel(run: dict, actor: Actor | None) -> None:
    """One ZIP with what it takes to re-run this run: config, seed, dataset fingerprint, versions, curves, model."""
    key = f"monitor_bundle_{run['id']}"
    st.caption("Settings, seed, dataset fingerprint, library versions, curves, diagnosis and the exported model; "
               "`python -m engine reproduce BUNDLE.zip` trains it again and reports the difference.")
    if st.button("Prepare the bundle", key="monitor_bundle_build", disabled=run["status"] != "done"):
        with w.shows_errors("Making the bundle"), st.spinner("Exporting the model…"), \
                tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"lightbox-{run['id']}-bundle.zip"
            bundle.make_bundle(actor, run["id"], path)
            st.session_state[key] = path.read_bytes()
    if key in st.session_state:
        st.download_button("Download reproducible bundle", st.session_state[key],
                           f"lightbox-{run['id']}-bundle.zip", "application/zip", key="monitor_bundle_download")


def main() -> None:
    st.title("Monitor")
    actor = auth.page_actor()
    with w.shows_errors("Reading the runs"):
        queue.mark_stale_runs()
        runs = auth.shown_runs(actor, store.list_runs())
        if not runs:
            show_notice()           # a refused click on a run this user no longer sees
            st.info("No runs yet. Start one on the **Train** page, or from a demo on **Home**.")
            st.stop()
        run = choose_run(runs)
        header(run, actor)
        # Poll the store only while the run can still change; a finished run is drawn once.
        panel = st.fragment(run_every=POLL_SECONDS if run["status"] in store.ACTIVE else None)(live_panel)
        panel(run["id"], run["status"], actor)
        if run["status"] == "done":
            handin_panel(run, actor)
            with st.expander("Download reproducible bundle"):
                bundle_panel(run, actor)
        with st.expander("Settings of this run"):
            st.json(run["config"], expanded=False)
        with st.expander("Delete this run"):
            delete_panel(run, actor)


if __name__ == "__main__":      # Streamlit runs pages as __main__; benchmarks import the panel alone
    main()
