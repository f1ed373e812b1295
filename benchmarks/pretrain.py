"""Autoencoder pre-training vs training from scratch (issue 15 item 3), on the synthetic cardiac MRI generator.

One labelled pool (train) and one validation set are generated once; the 10 %, 25 % and 100 % label sets are nested
prefixes of the pool (each image is its own patient here), ingested as separate datasets with the same val/ folder,
so every run is scored on the same validation images. The unlabeled set is more slices from the same generator
with another seed, without masks. For each pre-training mode one encoder is made (U-Net, same architecture settings
as the fine-tunes); every arm then trains with the same settings and the same epochs, and the best validation Dice
(the product's "best epoch", picked on that same validation split, for both arms alike) and the last epoch's Dice
are reported, as the mean over the seeds. Wall-clock is measured per run on this machine (shared CPU: read the
seconds as rough).

    .venv/bin/python benchmarks/pretrain.py [--train 80] [--val 40] [--unlabeled 400] [--size 64] [--epochs 40]
        [--pretrain-epochs 15] [--seeds 0 1 2] [--modes denoising masked] [--out benchmarks/pretrain.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import RunConfig
from engine.data.demo import cardiac_slice
from engine.data.ingest import ingest
from engine.pretrain import library
from engine.pretrain.autoencoder import pretrain
from engine.pretrain.unlabeled import ingest_unlabeled
from engine.training.trainer import Trainer

FRACTIONS = (0.10, 0.25, 1.0)


def write_slices(folder: Path, n: int, size: int, seed: int, masks: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    slices = [cardiac_slice(rng, size) for _ in range(n)]
    if not masks:
        folder.mkdir(parents=True, exist_ok=True)
        for i, (image, _) in enumerate(slices):
            Image.fromarray(image).save(folder / f"u{i:04d}.png")
    return slices


def labelled_dataset(root: Path, train: list, val: list, test: list, name: str) -> str:
    """train/, val/ and test/ folders fix every split (a missing one would be carved from train)."""
    for split, slices in (("train", train), ("val", val), ("test", test)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, (image, mask) in enumerate(slices):
            Image.fromarray(image).save(root / split / "images" / f"{split}{i:04d}.png")
            Image.fromarray(mask * 255).save(root / split / "masks" / f"{split}{i:04d}.png")
    return ingest(root, "segmentation", name=name, group_by="none").dataset_id


def fine_tune(dataset_id: str, args, seed: int, pretrained: str, run_dir: Path) -> dict:
    config = RunConfig(dataset_id=dataset_id, arch="unet", image_size=args.size, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=seed, device="cpu", pretrained=pretrained,
                       model_options=args.model_options, preview_samples=0)
    started = time.perf_counter()
    trainer = Trainer(config, run_dir)
    state = trainer.fit()
    return {"best_dice": state.best_value, "best_epoch": state.best_epoch,
            "last_dice": state.last_metrics.get("dice"), "seconds": round(time.perf_counter() - started, 1),
            "train_images": len(trainer.train_images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=80)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--unlabeled", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["denoising", "masked"])
    parser.add_argument("--model-options", type=json.loads, default={"depth": 3, "base": 16})
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("pretrain.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    work = Path(tempfile.mkdtemp(prefix="pretrain-bench-"))
    os.environ["LIGHTBOX_HOME"] = str(work / "ws")
    pool = write_slices(work, args.train, args.size, seed=101, masks=True)
    val = write_slices(work, args.val, args.size, seed=202, masks=True)
    test = write_slices(work, 4, args.size, seed=404, masks=True)         # not scored: keeps train whole
    datasets = {f: labelled_dataset(work / f"labels-{f:.2f}", pool[:max(2, round(f * args.train))], val, test,
                                    f"cardiac {f:.0%}") for f in FRACTIONS}
    write_slices(work / "unlabeled", args.unlabeled, args.size, seed=303, masks=False)
    unlabeled = ingest_unlabeled(work / "unlabeled", "extra slices")
    arms = {"scratch": ("none", None)}
    for mode in args.modes:
        started = time.perf_counter()
        encoder = pretrain(unlabeled, "unet", args.size, args.pretrain_epochs, mode, "cpu", seed=0,
                           batch_size=16, lr=args.lr, model_options=args.model_options)
        info = library.load_encoder(encoder)
        arms[mode] = (str(library.encoder_path(encoder)),
                      {"seconds": round(time.perf_counter() - started, 1), "loss": info["loss"],
                       "input_loss": info["input_loss"], "history": info["history"]})
        print(f"pre-trained {mode}: loss {info['history'][0]:.4f} → {info['loss']:.4f} "
              f"(corrupted input {info['input_loss']:.4f}), {arms[mode][1]['seconds']} s", flush=True)
    results = []
    for fraction in FRACTIONS:
        for seed in args.seeds:
            for arm, (pretrained, _) in arms.items():       # arms alternate, so drifts in CPU load hit all alike
                row = fine_tune(datasets[fraction], args, seed, pretrained, work / f"run-{fraction}-{seed}-{arm}")
                row |= {"fraction": fraction, "seed": seed, "arm": arm}
                results.append(row)
                print(json.dumps(row), flush=True)
    summary = summarise(results, arms)
    args.out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"},
                                    "pretraining": {m: a[1] for m, a in arms.items() if a[1]},
                                    "runs": results, "summary": summary}, indent=1, default=str))
    print(table(summary))


def summarise(results: list[dict], arms: dict) -> list[dict]:
    rows = []
    for fraction in FRACTIONS:
        for arm in arms:
            mine = [r for r in results if r["fraction"] == fraction and r["arm"] == arm]
            best = [r["best_dice"] for r in mine]
            rows.append({"fraction": fraction, "arm": arm, "train_images": mine[0]["train_images"],
                         "best_dice": statistics.mean(best), "best_sd": statistics.pstdev(best),
                         "last_dice": statistics.mean(r["last_dice"] for r in mine),
                         "seconds": statistics.mean(r["seconds"] for r in mine), "seeds": len(mine)})
    return rows


def table(summary: list[dict]) -> str:
    lines = ["| labels | training images | start | best val Dice (mean ± sd) | last-epoch Dice | s per run |",
             "|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['fraction']:.0%} | {r['train_images']} | {r['arm']} | {r['best_dice']:.3f} ± "
                     f"{r['best_sd']:.3f} | {r['last_dice']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
