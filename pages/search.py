"""Search: define a hyperparameter search, follow its trials live, read Optuna's plots, train with the best.
In a class a student sees and runs their own searches only; their trials are their runs, within the assignment's
limits (the engine checks both)."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from engine import workspace
from engine.accounts import access
from engine.config import BY_NAME, default_loss
from engine.data.dataset import list_datasets
from engine.models import DEFAULT_ARCH, models_for
from engine.runs import queue, submit
from engine.search import baseline
from engine.search import study as search
from engine.search.plots import PLOT_NOTES, available_plots, fingerprint
from engine.training.losses import losses_for
from pages import _auth as auth
from pages import _settings as s
from pages import _widgets as w

POLL_SECONDS = 3
BATCH_SIZES = [4, 8, 16, 32, 64]
REPEAT_SECONDS = 10         # the same form sent again this soon is one click delivered twice, not a new search
SAMPLERS = {"tpe": "TPE (learns from earlier trials)", "random": "Random"}
PRUNERS = {"median": "Median (stop below-median trials)", "hyperband": "Hyperband", "none": "Off"}
STATE_COLOURS = {"running": "blue", "complete": "green", "pruned": "orange", "fail": "red", "cancelled": "violet",
                 "waiting": "gray"}
PARAM_TITLES = {"lr": "learning rate", "weight_decay": "weight decay", "batch_size": "batch size",
                "arch": "architecture", "loss": "loss", "optimizer": "optimizer", "augment_level": "augmentation"}
DEAD_RUN = ("interrupted", "failed", "cancelled", "deleted")


def level_note(level: str) -> str:
    parts = search.AUGMENT_LEVELS[level]
    return f"**{level}**: {', '.join(parts) or 'no augmentation'}"


# ---- (1) define a search ----------------------------------------------------------------------------------

def trials_label(n: int) -> str:
    return f"Start {n} trial{'' if n == 1 else 's'}"


def number(name: str, where, label: str, value, key: str, note: str = "", **kwargs):
    """A number input whose range and help come from the setting `name` in engine.config."""
    setting = BY_NAME[name]
    kind = int if setting.kind == "int" else float
    bounds = {"min_value": kind(setting.low), "max_value": kind(setting.high), **kwargs}
    return where.number_input(label, value=kind(value), key=key, help=" ".join(
        filter(None, (setting.help, note, setting.teach))), **bounds)


def search_form(manifest: dict) -> dict | None:
    """The form's values as plain data once the start button is pressed, else None.

    Enter in a field does not submit (only the button does). The number of trials sits above the form, outside
    it, so the button can say how many trials it starts: values inside a form reach the script only on submit."""
    task = manifest["task"]
    models = {spec.name: spec for spec in models_for(task)}
    losses = {spec.name: spec for spec in losses_for(task)}
    objectives = [m for m in w.TASK_METRICS[task] if m in search.OBJECTIVES]
    n_trials = int(st.number_input("Number of trials", 1, 1000, 20, key="search_trials",
                                   help="How many settings to try in all; the start button below says it too."))
    with st.form("search_form", enter_to_submit=False):
        v: dict = {"task": task, "models": models, "n_trials": n_trials}
        v["archs"] = st.multiselect("Architectures to try", list(models), default=[DEFAULT_ARCH[task]],
                                    format_func=lambda n: models[n].title, key=f"search_archs_{task}",
                                    help=f"{BY_NAME['arch'].teach} With more than one, the search also picks "
                                         "the architecture.")
        left, right = st.columns(2)
        v["objective"] = left.selectbox("Optimise for", objectives, format_func=lambda m: f"validation "
                                        f"{w.METRIC_TITLES[m]}", key=f"search_objective_{task}",
                                        help="Each trial is scored by its best epoch on this metric.")
        v["name"] = right.text_input("Name (optional)", key="search_name", placeholder="e.g. lr sweep")
        lr = BY_NAME["lr"]
        st.markdown(f"**{lr.label}**: searched on a log scale, so each tenfold step "
                    "(0.0001–0.001, 0.001–0.01, …) gets the same share of trials.")
        left, right = st.columns(2)
        v["lr"] = (number("lr", left, "Lowest", 1e-4, "search_lr_low", step=1e-4, format="%g"),
                   number("lr", right, "Highest", 1e-2, "search_lr_high", step=1e-4, format="%g"))
        wd = BY_NAME["weight_decay"]
        v["wd_on"] = st.checkbox(f"Also search {wd.label.lower()}", key="search_wd_on", help=s.help_text(wd))
        left, right = st.columns(2)
        # A log-scale range cannot start at the setting's 0: the lowest bound starts just above it.
        v["wd"] = (left.number_input(f"Lowest {wd.label.lower()}", 1e-8, wd.high, 1e-6, step=1e-5, format="%g",
                                     key="search_wd_low", help=wd.help),
                   right.number_input(f"Highest {wd.label.lower()}", 1e-8, wd.high, 1e-2, step=1e-5, format="%g",
                                      key="search_wd_high", help=wd.help))
        left, right = st.columns(2)
        v["batch_sizes"] = left.multiselect(f"{BY_NAME['batch_size'].label}s", BATCH_SIZES, default=[8, 16],
                                            key="search_batch", help=s.help_text(BY_NAME["batch_size"]))
        optimizer = BY_NAME["optimizer"]
        v["optimizers"] = right.multiselect(f"{optimizer.label}s", list(optimizer.choices), default=["adam"],
                                            key="search_optimizers", format_func=optimizer.title,
                                            help=s.help_text(optimizer))
        left, right = st.columns(2)
        v["losses"] = left.multiselect("Losses", list(losses), default=[default_loss(task)],
                                       format_func=lambda n: losses[n].title, key=f"search_losses_{task}",
                                       help=f"{BY_NAME['loss'].teach} The search still scores by the metric.")
        v["levels"] = right.multiselect("Augmentation strength", list(search.AUGMENT_LEVELS), default=["none"],
                                        key="search_levels", help=BY_NAME["augment"].teach)
        st.caption(" · ".join(level_note(level) for level in search.AUGMENT_LEVELS))
        cols = st.columns(3)
        v["epochs"] = int(number("epochs", cols[0], "Epochs per trial", 5, "search_epochs",
                                 note="The budget of one trial; pruning may stop it earlier."))
        v["image_size"] = int(number("image_size", cols[1], BY_NAME["image_size"].label, 64, "search_size",
                                     step=8))
        v["minutes"] = int(cols[2].number_input("Time budget (minutes, 0 = none)", 0, 100_000, 0,
                                                key="search_minutes",
                                                help="No new trial starts after this; the running one finishes."))
        cols = st.columns(3)
        v["sampler"] = cols[0].radio("How to pick settings", list(SAMPLERS), format_func=SAMPLERS.get,
                                     key="search_sampler", help="TPE tries more near settings that worked; "
                                                                "random tries anywhere.")
        v["pruner"] = cols[1].radio("Stop weak trials early", list(PRUNERS), format_func=PRUNERS.get,
                                    key="search_pruner", help="Saves time on settings that are clearly behind.")
        v["seed"] = int(number("seed", cols[2], BY_NAME["seed"].label, 0, "search_seed",
                               note="The same seed draws the same settings again."))
        started = st.form_submit_button(trials_label(n_trials), type="primary", key="search_start")
    return v if started else None


def problem(v: dict) -> str | None:
    """The first thing in the form that cannot work, as a sentence; None when the search can start."""
    lists = (("archs", "architecture"), ("batch_sizes", "batch size"), ("optimizers", "optimizer"),
             ("losses", "loss"), ("levels", "augmentation strength"))
    for key, what in lists:
        if not v[key]:
            return f"Choose at least one {what}."
    if v["lr"][0] >= v["lr"][1]:
        return "The lowest learning rate must be below the highest one."
    if v["wd_on"] and v["wd"][0] >= v["wd"][1]:
        return "The lowest weight decay must be below the highest one."
    too_big = [v["models"][a] for a in v["archs"] if v["models"][a].min_size > v["image_size"]]
    if too_big:
        return f"{too_big[0].title} needs images of at least {too_big[0].min_size} px; raise the image size."
    if v["name"].strip() and v["name"].strip() in {s["name"] for s in search.list_studies()}:
        return f"There is already a search called '{v['name'].strip()}'; choose another name."
    return None


def study_spec(dataset_id: str, v: dict) -> search.StudySpec:
    augment = search.AUGMENT_LEVELS[v["levels"][0]]
    # Settings with a single choice go into the base too: a trial's Optuna params name only the searched
    # ones, and 'Train with the best parameters' rebuilds the run from base + params.
    base = {"arch": v["archs"][0], "epochs": v["epochs"], "image_size": v["image_size"], "seed": v["seed"],
            "preview_samples": 2, "batch_size": v["batch_sizes"][0], "optimizer": v["optimizers"][0],
            "loss": v["losses"][0], "augment": list(augment),
            "augment_params": {k: dict(p) for k, p in augment.items()}}
    space = search.SearchSpace(lr=v["lr"], weight_decay=v["wd"] if v["wd_on"] else None,
                               batch_sizes=list(v["batch_sizes"]), archs=list(v["archs"]), losses=list(v["losses"]),
                               optimizers=list(v["optimizers"]), augment_levels=list(v["levels"]))
    return search.StudySpec(dataset_id=dataset_id, base=base, space=space, objective=v["objective"],
                            n_trials=v["n_trials"], timeout=v["minutes"] * 60 or None, sampler=v["sampler"],
                            pruner=v["pruner"], seed=v["seed"], name=v["name"].strip())


def start(manifest: dict, v: dict) -> None:
    sent = repr([manifest["id"], *sorted((k, repr(x)) for k, x in v.items() if k != "models")])
    last = st.session_state.get("_search_last_start")
    if last and last[0] == sent and time.time() - last[1] < REPEAT_SECONDS:     # before the name check below
        st.info(f"Search '{w.as_text(last[2])}' was started from these settings a moment ago; one click starts one "
                "search. Change a setting to start another one.")
        return
    reason = problem(v)
    if reason:
        st.error(w.as_text(reason))
        return
    with w.shows_errors("Starting the search"):
        name = search.create_study(study_spec(manifest["id"], v), actor=ACTOR)
        search.launch_search(name, **auth.acting(ACTOR))
        st.session_state["_search_last_start"] = (sent, time.time(), name)
        st.session_state["study"] = name
        st.success(f"Search '{w.as_text(name)}' started: {v['n_trials']} trials run one after another in the "
                   "background. Follow them below; each trial is also a run on Monitor and Compare.")


# ---- (2) follow a study -----------------------------------------------------------------------------------

def study_label(s: dict) -> str:
    spec = s.get("spec") or {}
    objective = w.METRIC_TITLES.get(spec.get("objective", ""), "score")
    best = "" if s["best_value"] is None else f" · best {objective} {s['best_value']:.3f}"
    return f"{s['name']} · {spec.get('dataset_id', '?')} · {s['trials']} trial(s){best}"


def choose_study(studies: list[dict]) -> dict:
    by_name = {s["name"]: s for s in studies}
    picked = w.synced_selectbox("Search (newest first)", list(by_name), "study", "search_study",
                                format_func=lambda n: study_label(by_name[n]))
    return by_name[picked]


def stalled(rows: list[dict]) -> list[int]:
    """Trials still 'running' whose run died (the search process stopped): they wait for a restart."""
    return [r["trial"] for r in rows if r["state"] == "running" and r["run_status"] in DEAD_RUN]


def was_stopped(spec: dict, info: dict, proc: dict | None) -> bool:
    """Stopped by the user (the Stop button, `search --stop`) with trials still to run, and not continued since."""
    at, states = info.get(search.STOPPED_AT), info["states"]
    if not at or states.get("running"):
        return False
    if states.get("complete", 0) + states.get("pruned", 0) >= spec.get("n_trials", 0):
        return False
    return proc is None or proc["started"] <= at


def process_died(spec: dict, info: dict, proc: dict | None) -> str | None:
    """The last log line of a search process (started from this page) that died with trials still to run."""
    if not proc or proc["alive"] or info["states"].get("running"):
        return None
    timeout = spec.get("timeout")
    if timeout and time.time() > proc["started"] + timeout:
        return None                                         # it stopped at its time limit, as asked
    finished = info["states"].get("complete", 0) + info["states"].get("pruned", 0)
    if finished >= spec.get("n_trials", 0):
        return None
    return proc["last_line"] or "no message was written"


def is_active(spec: dict, created: float, info: dict, rows: list[dict], ended: bool = False) -> bool:
    """Whether the study can still change on its own, i.e. whether the panel should keep polling."""
    if stalled(rows) or ended:
        return False
    states = info["states"]
    if states.get("running"):
        return True
    timeout = spec.get("timeout")
    if timeout and time.time() > created + timeout + 60:
        return False
    return states.get("complete", 0) + states.get("pruned", 0) < spec.get("n_trials", 0)


def study_state(name: str, spec: dict, created: float) -> dict:
    """What the live panel and the buttons under it decide on, read once per draw."""
    queue.mark_stale_runs()        # a run whose process died shows as interrupted, not running forever
    info, rows = search.summary(name, actor=ACTOR), search.trials_table(name, actor=ACTOR)
    proc = search.background_process(name)
    stopped = was_stopped(spec, info, proc)
    limit = info.get(search.LIMIT_REACHED)      # an assignment's limit ended it: Continue would only stop again
    died = None if stopped or limit else process_died(spec, info, proc)
    return {"info": info, "rows": rows, "stopped": stopped, "died": died, "limit": limit,
            "active": is_active(spec, created, info, rows, stopped or bool(died) or bool(limit)),
            "verdict": baseline.verdict(name, info, actor=ACTOR) if info["best_value"] is not None else None}


def outline(state: dict) -> tuple:
    """What, when it changes, redraws the whole page: polling on or off, the Stop/Continue and Train buttons."""
    verdict = state["verdict"] or {}
    return (state["active"], state["stopped"], bool(state["died"]), bool(state["limit"]), verdict.get("offer"),
            verdict.get("reason"))


def param_text(name: str, value) -> str:
    shown = f"{value:.2e}" if isinstance(value, float) else str(value)
    return f"{PARAM_TITLES.get(name, name)} = **{shown}**"


def counts(info: dict, n_trials: int) -> None:
    states = info["states"]
    finished = states.get("complete", 0) + states.get("pruned", 0)
    st.progress(min(1.0, finished / max(1, n_trials)), text=f"{finished} of {n_trials} trials finished")
    badges = [f":{STATE_COLOURS[s]}-badge[{states[s]} {s}]" for s in STATE_COLOURS if states.get(s)]
    st.markdown(" ".join(badges) or "No trial has started yet.")


def best(info: dict, objective: str) -> None:
    if info["best_value"] is None:
        st.caption("The best result appears when the first trial finishes.")
        return
    left, right = st.columns([1, 3])
    left.metric(f"Best validation {w.METRIC_TITLES.get(objective, objective)}", f"{info['best_value']:.3f}",
                help=f"Trial #{info['best_trial']}, run {info['best_run_id']}.")
    right.markdown(f"Best settings (trial #{info['best_trial']}):  \n"
                   + "  \n".join(param_text(k, v) for k, v in info["best_params"].items()))


def trial_table(rows: list[dict], objective: str) -> None:
    if not rows:
        return
    score = w.METRIC_TITLES.get(objective, objective)
    frame = pd.DataFrame(rows).rename(columns={"value": score, "run_status": "run status", "run_id": "run",
                                               **PARAM_TITLES})
    frame[score] = pd.to_numeric(frame[score], errors="coerce")      # no score (pruned, running): a blank cell
    colours = {s: f"color: {c}; font-weight: bold" for s, c in
               {"running": "#1f6feb", "complete": "#1a7f37", "pruned": "#bc4c00", "fail": "#d1242f",
                "cancelled": "#8250df"}.items()}
    formats = {score: st.column_config.NumberColumn(format="%.3f")}
    for column in ("learning rate", "weight decay"):
        if column in frame:
            formats[column] = st.column_config.NumberColumn(format="%.2e")
    st.dataframe(frame.style.map(lambda s: colours.get(s, ""), subset=["state"]), hide_index=True,
                 column_config=formats)


def plots(name: str, objective: str) -> None:
    """Optuna's plots, recomputed only when a trial changed (each tick would otherwise refit importances)."""
    study = search.load_study(name)
    token = (workspace.db_url(), name, fingerprint(study))
    cache = st.session_state.get("_search_plots")
    if not cache or cache[0] != token:
        cache = st.session_state["_search_plots"] = (token, available_plots(
            study, target_name=w.METRIC_TITLES.get(objective, objective)))
    figures = cache[1]
    for i, (tab, (title, figure)) in enumerate(zip(st.tabs(list(figures)), figures.items())):
        with tab:
            st.caption(PLOT_NOTES[title])
            if isinstance(figure, str):
                st.info(w.as_text(figure))
            else:
                st.plotly_chart(figure, key=f"search_plot_{i}")


def live_panel(name: str, spec: dict, created: float, seen: tuple) -> None:
    state = study_state(name, spec, created)
    if outline(state) != seen:
        st.rerun()                # the page follows: polling on or off, Stop or Continue, 'Train with the best'
    info, rows, objective = state["info"], state["rows"], spec.get("objective", "")
    counts(info, spec.get("n_trials", 0))
    dead = stalled(rows)
    if state["stopped"]:
        finished = info["states"].get("complete", 0) + info["states"].get("pruned", 0)
        st.info(f"This search was stopped after {finished} of {spec.get('n_trials', '?')} trials finished; "
                "the trials that were running are cancelled. Press **Continue this search** to run the rest.")
    elif state["limit"]:
        st.warning(f"This search ended before all its trials: {w.as_text(state['limit'])}")
    elif dead:
        which = ", ".join(f"#{n}" for n in dead)
        st.warning(f"The search stopped while trial {which} {'was' if len(dead) == 1 else 'were'} running (the "
                   "server may have restarted). Press **Continue this search** to go on.")
    elif state["died"]:
        st.warning(f"The search process stopped before running all its trials. Its last message: "
                   f"“{w.as_text(state['died'])}”. Press **Continue this search** to go on.")
    best(info, objective)
    trial_table(rows, objective)
    st.subheader("Plots")
    plots(name, objective)


def continue_search(name: str) -> None:
    with w.shows_errors("Continuing the search"):
        search.launch_search(name, **auth.acting(ACTOR))
        st.session_state["_search_continued"] = name      # one restart per click, not one per rerun
        st.success("The search goes on in the background; the stopped trials are run again.")


def stop(name: str) -> None:
    """Stop the search, then draw the page again so the panel shows it stopped."""
    with w.shows_errors("Stopping the search"):
        with st.spinner("Stopping the search: cancelling its running trials…"):
            result = search.stop_search(name, actor=ACTOR)
        st.session_state.pop("_search_continued", None)    # Continue may be pressed again
        cancelled = result["cancelled_trials"]
        which = f" Cancelled trial {', '.join(f'#{n}' for n in cancelled)}." if cancelled else ""
        st.session_state["_search_notice"] = f"Search '{w.as_text(name)}' stopped.{which} Continue it any time."
        st.rerun()


def train_best(name: str) -> None:
    with w.shows_errors("Queueing the best settings"):
        run_id = submit.submit(search.best_config(name, actor=ACTOR), **auth.acting(ACTOR))
        w.open_run(run_id)


def actions(name: str, state: dict) -> None:
    """Train with the best settings (only when they beat the default run or a constant guess), and Stop or
    Continue."""
    verdict = state["verdict"]
    left, right = st.columns(2)
    if left.button("Train with the best parameters", type="primary", disabled=not (verdict and verdict["offer"]),
                   key="search_train_best", help="Queues an ordinary run with the best trial's settings.",
                   width="stretch"):
        train_best(name)
    if state["active"]:
        stop_pressed = right.button("Stop this search", key="search_stop", width="stretch",
                                    help="Cancels the running trials and starts no new one; you can continue it "
                                         "later.")
        if stop_pressed:
            stop(name)
    elif state["stopped"] or state["died"] or stalled(state["rows"]):
        continue_pressed = right.button("Continue this search", key="search_continue", width="stretch",
                                        disabled=st.session_state.get("_search_continued") == name)
        if continue_pressed:
            continue_search(name)
    if verdict:
        st.caption(w.as_text(verdict["reason"]))
    notice = st.session_state.pop("_search_notice", None)
    if notice:
        st.success(notice)


def results(studies: list[dict]) -> None:
    chosen = choose_study(studies)
    name, spec = chosen["name"], chosen["spec"] or {}
    state = study_state(name, spec, chosen["created"])
    seen = outline(state)
    st.caption(f"Dataset **{w.as_text(spec.get('dataset_id', '?'))}** · {spec.get('n_trials', '?')} trials of "
               f"{(spec.get('base') or {}).get('epochs', '?')} epochs · sampler {spec.get('sampler', '?')} · "
               f"pruning {spec.get('pruner', '?')} · created {w.when(chosen['created'])}. "
               f"Each trial is a run named '{w.as_text(name)} #N' on Monitor and Compare.")
    panel = st.fragment(run_every=POLL_SECONDS if state["active"] else None)(live_panel)
    panel(name, spec, chosen["created"], seen)
    actions(name, state)
    with st.expander("Settings of this search"):
        st.json(spec, expanded=False)


st.title("Search")
st.caption("Let Optuna try many training settings for you. Each trial is an ordinary run; weak ones are stopped "
           "early, and the plots show which settings mattered.")
ACTOR = auth.page_actor()
with w.shows_errors("Reading the searches"):
    studies = search.list_studies(ACTOR)
    with st.expander("New search", expanded=not studies, icon=":material/add:"):
        datasets = [d for d in list_datasets() if access.can_see_dataset(ACTOR, d)]
        if not datasets:
            st.info("There is no dataset yet. Upload images on the **Data** page, or start from a demo on **Home**.")
        else:
            manifest = w.pick_dataset(datasets, key="search_dataset")
            values = search_form(manifest)
            if values is not None:
                start(manifest, values)
                studies = search.list_studies(ACTOR)
    st.subheader("Results")
    if not studies:
        st.info("No searches yet. Define one above and press its **Start** button.")
    else:
        results(studies)
