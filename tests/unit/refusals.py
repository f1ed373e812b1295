"""Shared by the hostile-input tests: what a CLI refusal must look like, and a real checkpoint to tamper with."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.cli.main import main
from engine.config import RunConfig
from engine.models.network import build_network


def one_error_line(stderr: str) -> str:
    """The CLI's refusal: exactly one non-blank line, starting 'error:', and no traceback anywhere."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("error:") and "Traceback" not in stderr
    return lines[0]


def main_refusal(capsys, *argv: str) -> tuple[int, str]:
    """Run `python -m engine ARGV` in this process; its exit code and its one error line."""
    code = main(list(argv))
    return code, one_error_line(capsys.readouterr().err)


def lightbox_checkpoint(path: Path) -> Path:
    """A real Lightbox checkpoint (a LeNet-5 for two 1-channel classes at 32 px) without training one."""
    config = RunConfig(dataset_id="elsewhere", arch="lenet5", task="classification", image_size=32)
    info = {"task": "classification", "channels": 1, "classes": ["a", "b"], "num_classes": 2, "mask_levels": {}}
    model = build_network(config, info, [0.0], [1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": config.to_dict(), "dataset": info, "epoch": 1}, path)
    return path
