"""The `predict` and `export` commands."""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from engine.errors import UserError
from engine.inference.batch import mask_png, output_stem, predict_zip, results_csv
from engine.inference.export import export_run
from engine.inference.predict import load_predictor


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("predict", "predict images (or a ZIP of images) with a trained run")
    p.add_argument("--run", required=True, help="run id (from `runs`)")
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG/JPEG/TIFF/BMP/DICOM files, or .zip archives")
    p.add_argument("--out", default=None, help="folder for results.csv, mask PNGs and overlays")
    p.add_argument("--tta", action="store_true", help="average over the image and its horizontal flip")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(handler=cmd_predict)

    p = add("export", "write a TorchScript model, preprocessing.json and a model card")
    p.add_argument("--run", required=True, help="run id (from `runs`)")
    p.add_argument("out", help="output folder")
    p.set_defaults(handler=cmd_export)


def cmd_predict(args) -> dict[str, Any]:
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} is not a file; give image files or .zip archives.")
    out = Path(args.out) if args.out else None
    predictor = load_predictor(args.run, args.device, actor=args.actor)
    results: list[dict] = []
    for path in paths:
        if path.suffix.lower() == ".zip":
            results += _predict_zip(args.run, path, out, args.tta, args.actor)
            continue
        predictions = predictor.predict_file(path, str(path), tta=args.tta)
        results += [_result(p, len(predictions), out) for p in predictions]
    if out:
        (out / "results.csv").write_text(results_csv([_flat(r) for r in results]))
    return {"run_id": args.run, "results": results}


def _result(prediction, frames: int, out: Path | None) -> dict[str, Any]:
    """One JSON entry; with --out, segmentation masks and overlays are written next to results.csv."""
    entry: dict[str, Any] = {"file": prediction.name, "frame": prediction.frame}
    if prediction.task == "classification":
        entry.update(prediction=prediction.label, probabilities=prediction.probabilities)
        return entry
    entry.update(foreground_fraction=prediction.foreground_fraction, areas=prediction.areas)
    if out:
        stem = output_stem(prediction.name, prediction.frame, frames)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        (out / "overlays").mkdir(exist_ok=True)
        (out / "masks" / f"{stem}.png").write_bytes(mask_png(prediction))
        Image.fromarray(prediction.overlay).save(out / "overlays" / f"{stem}.png")
        entry.update(mask_path=str(out / "masks" / f"{stem}.png"), overlay_path=str(out / "overlays" / f"{stem}.png"))
    return entry


def _predict_zip(run_id: str, path: Path, out: Path | None, tta: bool, actor=None) -> list[dict[str, Any]]:
    if out is None:
        raise UserError(f"Predicting on {path.name} writes many files; add --out FOLDER.")
    target = out / path.stem
    with open(predict_zip(run_id, path, target, tta, actor=actor), newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["file"] = f"{path.name}/{row['file']}"
        if row.get("mask_path"):
            row["mask_path"] = str(target / row["mask_path"])
    return [{k: _number(v) for k, v in row.items() if v != ""} for row in rows]


def _number(text: str) -> Any:
    """CSV cells back to the numbers they were (the JSON output should not quote 0.93)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _flat(entry: dict[str, Any]) -> dict[str, Any]:
    """A JSON entry as a CSV row: nested probabilities/areas become prob_<class>/area_<class> columns."""
    row = {k: v for k, v in entry.items() if not isinstance(v, dict)}
    row.update({f"prob_{c}": p for c, p in entry.get("probabilities", {}).items()})
    row.update({f"area_{c}": a for c, a in entry.get("areas", {}).items()})
    return row


def cmd_export(args) -> dict[str, Any]:
    paths = export_run(args.run, Path(args.out), actor=args.actor)
    return {"run_id": args.run, "files": {kind: str(path) for kind, path in paths.items()}}
