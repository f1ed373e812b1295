"""Auto preset vs the current defaults at equal wall-clock budget, on every dataset the project can generate.

    .venv/bin/python benchmarks/auto.py [--budget-minutes 1] [--only NAME,...] [--out benchmarks/auto.json]

Datasets: the two demos (engine/data/demo.py) and variants built here from the same generators — fewer images,
smaller images, low contrast, two sources differing in brightness, small structures, classes 9 : 1. Each dataset
is trained twice, interleaved (Auto then defaults, or the other way round on alternate datasets, since the machine
is shared): each arm gets the same wall clock from the moment it starts (the Auto arm's timing probe included);
a run still going at the budget is stopped and scored with its best checkpoint. Scores: Dice for segmentation,
balanced accuracy for classification (it equals accuracy on balanced data and does not reward the majority class
on imbalanced data), with the best checkpoint, on the dataset's held-out test split (6-27 images) and on a fresh
test set of at least 300 images from the same generator with other seeds (never ingested, never seen in
training). The verdict per dataset comes from the fresh set: Auto is ahead or behind only when the 95 % paired
bootstrap interval of the difference leaves out zero, otherwise level. `uptime`'s load is logged per arm.

    .venv/bin/python benchmarks/auto.py --table RESULTS.json      # the table of a finished run again"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LIGHTBOX_HOME", tempfile.mkdtemp(prefix="lightbox-auto-bench-"))
os.environ.setdefault("LIGHTBOX_NO_AUTOWORKER", "1")

import numpy as np
from PIL import Image
from scipy import ndimage

from engine import metrics
from engine.config import RunConfig
from engine.data import demo
from engine.data.ingest import ingest
from engine.data.manifest import load_manifest
from engine.presets import apply_preset, auto_settings
from engine.runs import execute
from engine.runs.submit import create_run
from engine.training.events import Event

# ---- datasets --------------------------------------------------------------------------------------------

def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def cardiac(out: Path, n: int, size: int, seed: int, change=None) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = demo.cardiac_slice(rng, size)
        pixels = image / 255.0
        if change:
            pixels = change(pixels, i, rng)
        _save(out / "images" / f"case_{i:03d}.png", _u8(pixels))
        _save(out / "masks" / f"case_{i:03d}.png", mask * 255)


def nodule_image(rng, size: int, nodules: int | None, radius: tuple[float, float] = (2.0, 4.0)):
    """Small bright nodules (None: 1–3) on a textured background with dark distractor blobs; (image, mask)."""
    y, x = np.mgrid[0:size, 0:size]
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3)
    image = 0.35 + 0.08 * field / (field.std() + 1e-8)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4) if nodules is None else nodules):
        cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(*radius)
        disk = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        image[disk] += 0.22
        mask[disk] = 1
    for _ in range(rng.integers(2, 5)):
        cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(3.0, 6.0)
        image[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] -= 0.15
    image = ndimage.gaussian_filter(image, 0.7) + 0.03 * rng.standard_normal((size, size))
    return image, mask


def small_structures(out: Path, n: int, size: int, seed: int) -> None:
    """1–3 small bright nodules (radius 2–4 px) on a textured background with dark distractor blobs."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = nodule_image(rng, size, None)
        _save(out / "images" / f"case_{i:03d}.png", _u8(image))
        _save(out / "masks" / f"case_{i:03d}.png", mask * 255)


def small_lesions(out: Path, counts: dict[str, int], size: int, seed: int) -> None:
    """Classification decided by a small object: 'nodule' images hold one or two bright nodules of radius 3–5 px,
    'normal' ones none; both have the same texture and dark distractors."""
    rng = np.random.default_rng(seed)
    for kind, count in counts.items():
        for k in range(count):
            image, _ = nodule_image(rng, size, int(rng.integers(1, 3)) if kind == "nodule" else 0, (3.0, 5.0))
            _save(out / kind / f"{kind}_{k:03d}.png", _u8(image))


def xrays(out: Path, counts: dict[str, int], size: int, seed: int, change=None) -> None:
    rng = np.random.default_rng(seed)
    bodies = {"chest": demo._chest, "abdomen": demo._abdomen}
    i = 0
    for kind, count in counts.items():
        for k in range(count):
            pixels = demo.xray(rng, size, bodies[kind]) / 255.0
            if change:
                pixels = change(pixels, i, rng)
            _save(out / kind / f"{kind}_{k:03d}.png", _u8(pixels))
            i += 1


def low_contrast(pixels, i, rng):
    return 0.45 + 0.3 * (pixels - 0.45) + 0.03 * rng.standard_normal(pixels.shape)


def two_sources(pixels, i, rng):
    return pixels * 0.45 + 0.02 if i % 2 else pixels          # every other image from a dark scanner


DATASETS = {   # name: (task, builder(out, seed offset))
    "seg-demo": ("segmentation", lambda o, s: demo.write_demo("segmentation", o, n=120, size=128, seed=1 + s)),
    "seg-few-images": ("segmentation", lambda o, s: cardiac(o, 40, 128, 2 + s)),
    "seg-64px": ("segmentation", lambda o, s: cardiac(o, 120, 64, 3 + s)),
    "seg-low-contrast": ("segmentation", lambda o, s: cardiac(o, 120, 128, 4 + s, low_contrast)),
    "seg-two-sources": ("segmentation", lambda o, s: cardiac(o, 120, 128, 5 + s, two_sources)),
    "seg-small-structures": ("segmentation", lambda o, s: small_structures(o, 120, 128, 6 + s)),
    "cls-demo": ("classification", lambda o, s: demo.write_demo("classification", o, n=120, size=128, seed=1 + s)),
    "cls-few-images": ("classification", lambda o, s: xrays(o, {"chest": 20, "abdomen": 20}, 128, 2 + s)),
    "cls-64px": ("classification", lambda o, s: xrays(o, {"chest": 60, "abdomen": 60}, 64, 3 + s)),
    "cls-low-contrast": ("classification",
                         lambda o, s: xrays(o, {"chest": 60, "abdomen": 60}, 128, 4 + s, low_contrast)),
    "cls-two-sources": ("classification", lambda o, s: xrays(o, {"chest": 60, "abdomen": 60}, 128, 5 + s, two_sources)),
    "cls-imbalanced-9to1": ("classification", lambda o, s: xrays(o, {"chest": 162, "abdomen": 18}, 128, 6 + s)),
    "cls-small-lesion-2to1": ("classification",
                              lambda o, s: small_lesions(o, {"normal": 120, "nodule": 60}, 128, 7 + s)),
}


def build(name: str, scratch: Path, seed: int = 0) -> str:
    task, write = DATASETS[name]
    folder = scratch / name
    folder.mkdir(parents=True, exist_ok=True)
    write(folder, seed)
    return ingest(folder, task, name=name).dataset_id


FRESH_SEED = 1000       # a fresh test set's generator seeds start here: no image of it is in the dataset
FRESH_AT_LEAST = 300    # images: a difference of one image is then 0.3 % of accuracy, not the split's 4-17 %


def build_fresh(name: str, scratch: Path, seed: int = 0) -> Path:
    """A second, larger test set from the same generator with other seeds, never ingested or seen in training:
    the dataset's own test split holds 6-27 images, too few to tell two arms apart (one image of 18 is 0.056)."""
    task, write = DATASETS[name]
    out = scratch / f"{name}-fresh"
    files_per_image = 2 if task == "segmentation" else 1          # an image and its mask
    k = 0
    while len(list(out.rglob("*.png"))) // files_per_image < FRESH_AT_LEAST:
        write(out / f"batch{k}", FRESH_SEED + 100 * k + seed)
        k += 1
    return out


def fresh_score(run_id: str, task: str, folder: Path) -> tuple[float, list]:
    """The run's best model on a fresh test set: mean Dice over the images that hold a structure, or balanced
    accuracy (mean recall of the classes); and what each image scored, in file order (for a paired comparison:
    each Dice, or each (true class, predicted class))."""
    from engine.inference.predict import load_predictor, read_frames
    predictor = load_predictor(run_id, device="cpu")
    segmentation = task == "segmentation"
    files = sorted(folder.rglob("images/*.png" if segmentation else "*.png"))
    predictions = []
    for first in range(0, len(files), 32):
        paths = files[first:first + 32]
        masks = [np.asarray(Image.open(p.parent.parent / "masks" / p.name)) for p in paths] if segmentation else None
        predictions += predictor.predict_arrays([read_frames(p)[0] for p in paths], masks=masks,
                                                names=[p.name for p in paths])
    if segmentation:
        dice = [pred.scores["dice_mean"] for pred in predictions if pred.truth.any()]   # as the trainer counts
        return float(np.mean(dice)), dice
    pairs = [(p.parent.name, pred.label) for p, pred in zip(files, predictions)]
    return balanced_accuracy(pairs), pairs


def balanced_accuracy(pairs: list) -> float:
    """engine.metrics' balanced accuracy of (true class, predicted class) name pairs."""
    names = sorted({name for pair in pairs for name in pair})
    index = {name: i for i, name in enumerate(names)}
    truth, said = zip(*[(index[t], index[s]) for t, s in pairs])
    return metrics.balanced_accuracy(np.array(said), np.array(truth), len(names))


def paired_interval(metric: str, a: list, d: list, draws: int = 2000) -> tuple[float, float]:
    """95 % interval of Auto − defaults on the fresh test set by a paired bootstrap: the same resampled images
    scored for both arms (what one test set can tell apart; a new training seed varies more)."""
    score = (lambda scores: float(np.mean(scores))) if metric == "dice" else balanced_accuracy
    rng = np.random.default_rng(0)
    n = len(a)
    diffs = []
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        diffs.append(score([a[i] for i in pick]) - score([d[i] for i in pick]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


# ---- one arm ---------------------------------------------------------------------------------------------

class WallClock:
    """Stops the run once the arm's wall-clock budget is spent (the best checkpoint is kept and scored)."""

    def __init__(self, started: float, seconds: float) -> None:
        self.started, self.seconds = started, seconds

    def attach(self, events) -> None:
        events.on(Event.STEP_END, self.check)

    def check(self, trainer, **_) -> None:
        if time.monotonic() - self.started > self.seconds:
            trainer.state.should_stop = True


def load() -> float:
    return os.getloadavg()[0]


def arm(name: str, dataset_id: str, budget_minutes: float, fresh: Path | None = None) -> dict:
    started = time.monotonic()
    load_before = load()
    config_kw: dict = {"dataset_id": dataset_id}
    if name == "auto":
        preset = auto_settings(load_manifest(dataset_id), device="cpu", budget_minutes=budget_minutes)
        config_kw = apply_preset(config_kw, preset)
    config = RunConfig(**config_kw, device="cpu", name=name)
    run_id = create_run(config, status="starting")
    run = execute.run_job(run_id, handlers=[WallClock(started, budget_minutes * 60)])
    seconds = time.monotonic() - started
    task = run["config"]["task"]
    metric = "dice" if task == "segmentation" else "balanced_accuracy"
    test = run.get("test") or {}
    best = run.get("best") or {}
    fresh_test, per_image = fresh_score(run_id, task, fresh) if fresh and run.get("best") else (None, [])
    return {"arm": name, "status": run["status"], "message": run.get("message"), "seconds": round(seconds, 1),
            "epochs_done": run.get("epoch"), "epochs_planned": run["config"]["epochs"],
            "epochs_probe": config_kw.get("epochs", 10) if name == "auto" else None,
            "replans": ((run["config"].get("preset") or {}).get("replanned") or {}).get("times", 0),
            "image_size": run["config"]["image_size"], "batch_size": run["config"]["batch_size"],
            "arch": run["config"]["arch"], "augment": run["config"]["augment"], "loss": run["config"]["loss"],
            "schedule": run["config"]["schedule"], "class_weights": run["config"]["class_weights"],
            "metric": metric, "test": test.get(metric), "test_n": test.get("n"), "val_best": best.get(metric),
            "fresh_test": fresh_test, "fresh_n": len(per_image), "fresh_per_image": per_image,
            "load_before": round(load_before, 2), "load_after": round(load(), 2)}


def run_pair(dataset_id: str, budget_minutes: float, threads: int, fresh: Path) -> list[dict]:
    """Both arms at once, each its own process limited to `threads` CPU threads: the same wall clock under the same
    load (whatever else the machine does slows both alike), instead of one after the other."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = {which: subprocess.Popen([sys.executable, __file__, "--arm", which, "--dataset-id", dataset_id,
                                      "--budget-minutes", str(budget_minutes), "--threads", str(threads),
                                      "--fresh", str(fresh)],
                                     env=env, stdout=subprocess.PIPE, text=True)
             for which in ("auto", "default")}
    rows = []
    for which, proc in procs.items():
        out, _ = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            raise SystemExit(f"the {which} arm failed (exit {proc.returncode})")
        rows.append(json.loads(lines[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=1.0)
    parser.add_argument("--only", default="", help="comma-separated dataset names")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "auto.json"))
    parser.add_argument("--parallel", action="store_true",
                        help="run the two arms of a dataset at the same time, one CPU thread each")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per arm with --parallel")
    parser.add_argument("--seed", type=int, default=0, help="added to every dataset's generator seed")
    parser.add_argument("--table", help="print the table of a results JSON and stop")
    parser.add_argument("--arm", choices=("auto", "default"), help=argparse.SUPPRESS)
    parser.add_argument("--dataset-id", help=argparse.SUPPRESS)
    parser.add_argument("--fresh", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if args.arm:                                   # one arm in its own process (--parallel)
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(arm(args.arm, args.dataset_id, args.budget_minutes, Path(args.fresh))), flush=True)
        return
    names = [n for n in DATASETS if not args.only or n in args.only.split(",")]
    results = {"budget_minutes": args.budget_minutes, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "cpus": os.cpu_count(), "parallel": args.parallel,
               "threads_per_arm": args.threads if args.parallel else None, "seed": args.seed, "rows": []}
    with tempfile.TemporaryDirectory() as scratch:
        for i, name in enumerate(names):
            dataset_id = build(name, Path(scratch), args.seed)
            fresh = build_fresh(name, Path(scratch), args.seed)
            if args.parallel:
                rows = run_pair(dataset_id, args.budget_minutes, args.threads, fresh)
            else:
                order = ("auto", "default") if i % 2 == 0 else ("default", "auto")
                rows = [arm(which, dataset_id, args.budget_minutes, fresh) for which in order]
            for row in rows:
                row = {"dataset": name, **row}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))


def _replans(row: dict) -> str:
    if row.get("epochs_probe") is None:             # a row from before the re-plan was recorded
        return ""
    return f" ({row['epochs_probe']}, {row.get('replans', 0)})"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def verdict(a: dict, d: dict) -> tuple[str, str]:
    """("ahead" | "level" | "behind", "+0.012 [−0.004, +0.027]"): ahead or behind only when the fresh test set's
    95 % interval of the difference leaves out zero; rows from before the fresh test set compare the split's."""
    if not a.get("fresh_per_image") or not d.get("fresh_per_image"):
        diff = (a["test"] or 0) - (d["test"] or 0)
        return ("ahead" if diff > 0 else "behind" if diff < 0 else "level"), f"{diff:+.3f} (split's test)"
    diff = a["fresh_test"] - d["fresh_test"]
    low, high = paired_interval(a["metric"], a["fresh_per_image"], d["fresh_per_image"])
    word = "ahead" if low > 0 else "behind" if high < 0 else "level"
    return word, f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]"


def table(results: dict) -> str:
    rows = {}
    for r in results["rows"]:
        rows.setdefault(r["dataset"], {})[r["arm"]] = r
    header = ("| dataset | metric | fresh test: Auto | defaults | Auto − defaults [95 % interval] | verdict | "
              "split's test (n): Auto | defaults | Auto: px, epochs done/planned (probe's plan, re-plans), s | "
              "defaults: px, epochs done/planned, s | load |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    words = []
    for name, arms in rows.items():
        a, d = arms.get("auto"), arms.get("default")
        if not a or not d:
            continue
        word, diff = verdict(a, d)
        words.append(word)
        lines.append(f"| {name} | {a['metric']} (n={a.get('fresh_n')}) | {_score(a.get('fresh_test'))} | "
                     f"{_score(d.get('fresh_test'))} | {diff} | {word} | {_score(a['test'])} ({a['test_n']}) | "
                     f"{_score(d['test'])} | {a['image_size']}, {a['epochs_done']}/{a['epochs_planned']}"
                     f"{_replans(a)}, {a['seconds']:.0f} | "
                     f"{d['image_size']}, {d['epochs_done']}/{d['epochs_planned']}, {d['seconds']:.0f} | "
                     f"{a['load_before']:.1f} / {d['load_before']:.1f} |")
    lines.append("")
    lines.append(f"Auto ahead on {words.count('ahead')}, level on {words.count('level')}, "
                 f"behind on {words.count('behind')}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
