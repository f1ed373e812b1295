"""Export a trained run for use outside Lightbox: a TorchScript model, its preprocessing, and a model card."""
from __future__ import annotations

import json
import tempfile
import warnings
import zipfile
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

import torch

from engine.accounts import access
from engine.accounts.actor import Actor
from engine.data.dataset import MAX_STORED_SIDE, load_manifest
from engine.errors import UserError
from engine.inference.predict import load_run_model
from engine.models.registry import count_parameters, get_spec
from engine.runs import store

MODEL_FILE, PREPROCESSING_FILE, CARD_FILE = "model.torchscript.pt", "preprocessing.json", "model_card.md"
TOLERANCE = 1e-5

NOT_A_DEVICE = ("**This model is not a medical device.** It was trained in Lightbox for education and research, "
                "has not been clinically validated or approved by any regulator, and must not be used for "
                "diagnosis, treatment or any other clinical decision.")


def export_run(run_id: str, out_dir: Path | str, actor: Actor | None = None) -> dict[str, Path]:
    """Write the three files into out_dir and return their paths by kind (model, preprocessing, model_card).
    A student exports only their own runs."""
    if actor is not None:
        access.check_run(actor, run_id, "export")
    _, ckpt, model, config, info = load_run_model(run_id)
    example = torch.rand(2, int(info["channels"]), config.image_size, config.image_size,
                         generator=torch.Generator().manual_seed(0))
    traced = trace(model, example)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / MODEL_FILE, "preprocessing": out / PREPROCESSING_FILE, "model_card": out / CARD_FILE}
    traced.save(str(paths["model"]))
    paths["preprocessing"].write_text(json.dumps(preprocessing(run_id, model, config, info), indent=2))
    paths["model_card"].write_text(model_card(run_id, model, config, info, ckpt, actor))
    return paths


def trace(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """torch.jit.trace on the CPU in eval mode, refused unless it reproduces the eager model within TOLERANCE."""
    model = model.cpu().eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")     # TracerWarnings about shapes frozen as constants: the size is fixed
            traced = torch.jit.trace(model, example, check_trace=False)
            check = torch.rand(example.shape, generator=torch.Generator().manual_seed(1))   # not the traced input
            gap = float((traced(check) - model(check)).abs().max())
    except Exception as err:  # noqa: BLE001 - tracing fails in many ways; the user needs one sentence
        raise UserError(f"This architecture could not be exported to TorchScript ({type(err).__name__}); "
                        "use the checkpoint file instead.") from err
    if not gap <= TOLERANCE:
        raise UserError(f"The exported model differs from the trained one by {gap:.2g}; "
                        "use the checkpoint file instead.")
    return traced


def preprocessing(run_id: str, model, config, info: dict) -> dict:
    """Everything another program needs to feed the exported model the way Lightbox trained it."""
    size, channels = config.image_size, int(info["channels"])
    segmentation = info["task"] == "segmentation"
    return {
        "run_id": run_id,
        "task": info["task"],
        "architecture": config.arch,
        "classes": list(info["classes"]),
        "input": {"shape": ["N", channels, size, size], "dtype": "float32", "range": [0.0, 1.0],
                  "channels": channels, "colour": "grayscale" if channels == 1 else "RGB"},
        "image_size": size,
        "resize": {"method": "bilinear", "antialias": True, "align_corners": False,
                   "note": (f"images longer than {MAX_STORED_SIDE} px are first scaled down to that longest side "
                            "(aspect kept), as stored at ingest; then the whole image is stretched to a square "
                            "(no crop, no padding)")},
        "intensity": ("8-bit images divided by 255; 16-bit images scaled from their own min to max; DICOM: "
                      "modality LUT (slope/intercept), then the file's window (WindowCenter/WindowWidth or VOI "
                      "LUT; without one the series min to max), MONOCHROME1 inverted"),
        "channel_matching": "gray is repeated to 3 channels for RGB models; RGB is averaged to gray for 1-channel ones",
        "normalisation": {"inside_model": True, "mean": model.normalize.mean.flatten().tolist(),
                          "std": model.normalize.std.flatten().tolist(),
                          "note": "applied by the model itself: feed [0, 1] images, do not normalise again"},
        "output": ("logits (N, classes, size, size): resize bilinearly to the original image, then argmax"
                   if segmentation else "logits (N, classes): softmax gives class probabilities"),
        "torch_version": torch.__version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _dataset_lines(dataset_id: str) -> list[str]:
    try:
        manifest = load_manifest(dataset_id)
    except UserError:
        return [f"- Dataset `{dataset_id}` (no longer in the workspace; split counts unknown)"]
    splits = {s: 0 for s in ("train", "val", "test")}
    for sample in manifest.get("samples", []):
        splits[sample["split"]] = splits.get(sample["split"], 0) + 1
    counts = ", ".join(f"{name} {n}" for name, n in splits.items())
    return [f"- Dataset: **{manifest.get('name', dataset_id)}** (`{dataset_id}`), {manifest['task']}",
            f"- Images per split: {counts}",
            f"- Classes: {', '.join(manifest['classes'])}"]


def _metric_table(metrics: dict | None) -> list[str]:
    scalars = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not scalars:
        return ["_Not available._"]
    rows = ["| metric | value |", "|---|---|"]
    rows += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scalars.items()]
    return rows


def model_card(run_id: str, model, config, info: dict, ckpt: dict, actor: Actor | None = None) -> str:
    """A Markdown card: data, architecture, settings, validation and test metrics, intended use, limitations.
    A student's card of a run on an assignment with a hidden test carries no test values."""
    spec = get_spec(config.arch, config.task)
    run = access.strip_hidden(actor, store.get_run(run_id) or {})
    best = run.get("best") or ckpt.get("best_metrics")
    settings = {k: getattr(config, k) for k in ("epochs", "batch_size", "image_size", "optimizer", "lr", "schedule",
                                                "loss", "augment", "pretrained", "freeze_backbone", "seed")}
    settings["augment"] = ", ".join(config.augment) or "none"
    settings["model_options"] = config.model_options or "defaults"
    lines = [
        f"# Model card: {config.name or spec.title} (run `{run_id}`)", "",
        NOT_A_DEVICE, "",
        "## Data", *_dataset_lines(config.dataset_id), "",
        "## Architecture",
        f"- {spec.title}{f' ({spec.year})' if spec.year else ''}: {spec.note}",
        f"- Parameters: {count_parameters(model):,}",
        f"- Input: {info['channels']} channel(s), {config.image_size}×{config.image_size} px, values in [0, 1]", "",
        "## Training settings", *[f"- {k}: {v}" for k, v in settings.items()], "",
        f"## Validation metrics (best epoch {ckpt.get('epoch', '?')}, selected on {config.monitor})",
        *_metric_table(best), "",
        "## Held-out test metrics (test split, never used for training or model selection)",
        *_metric_table(run.get("test")), "",
        "## Intended use",
        "Education and research: learning how deep networks behave on medical images, and comparing "
        "architectures and settings. Not for patient care.", "",
        "## Limitations",
        "- Trained on a small dataset from one source; performance on images from other scanners, protocols, "
        "hospitals or populations is unknown and likely lower.",
        "- Metrics above come from the splits of this one dataset; they are estimates with wide uncertainty.",
        f"- Expects images prepared exactly as described in `{PREPROCESSING_FILE}`; other windowing, sizes or "
        "channel orders change its output.",
        "- Saliency maps (Grad-CAM) show where the score is sensitive, not a clinical reason for the output.", "",
        NOT_A_DEVICE, "",
    ]
    return "\n".join(lines)


def export_zip(run_id: str, actor: Actor | None = None) -> bytes:
    """The exported files in one ZIP (for a download button), under a folder named after the run."""
    with tempfile.TemporaryDirectory(prefix="lightbox-export-") as tmp:
        paths = export_run(run_id, Path(tmp), actor=actor)
        buffer = BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in paths.values():
                archive.write(path, f"lightbox-{run_id}/{path.name}")
    return buffer.getvalue()
