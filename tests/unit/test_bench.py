"""`engine bench`: a time-boxed default with a stated precision, the long form behind a flag, the contract's keys.

How long the default takes is measured by the benchmark itself (its "seconds" and "over_budget"), not here."""
from __future__ import annotations

import io
import os

import pytest

from engine import bench
from engine.cli.main import build_parser
from engine.errors import UserError


def _settings(*argv: str) -> dict:
    from engine.cli.train import bench_settings
    return bench_settings(build_parser("bench").parse_args(["bench", *argv]))


def test_default_is_time_boxed_and_the_long_form_is_a_flag():
    quick = _settings()
    assert quick["rounds"] is None and quick["budget"] <= 170 and quick["model"] == "unet"   # ≤ 3 min in all
    long = _settings("--long")
    assert long["model"] == "all" and long["rounds"] == 8 and long["steps"] == 8 and long["budget"] is None
    fixed = _settings("--rounds", "4", "--model", "resnet18")
    assert fixed["rounds"] == 4 and fixed["budget"] is None and fixed["model"] == "resnet18"
    boxed = _settings("--long", "--budget", "600")
    assert boxed["rounds"] is None and boxed["budget"] == 600 and boxed["steps"] == 8
    with pytest.raises(UserError, match="--rounds must be at least 1"):
        _settings("--rounds", "0")


def test_spread_gives_median_quartiles_and_a_bootstrap_interval():
    values = [0.9, 0.95, 1.0, 1.02, 1.05, 1.3]
    out = bench.spread(values)
    assert out["median"] == pytest.approx(1.01)
    assert out["iqr"] == [pytest.approx(0.962, abs=1e-3), pytest.approx(1.043, abs=1e-3)]
    low, high = out["ci95"]
    assert 0.9 <= low <= out["median"] <= high <= 1.3
    assert bench.spread(values) == out                           # seeded: the same figures every time
    assert bench.spread([1.0, 1.0, 1.0])["ci95"] == [1.0, 1.0]


def test_the_budget_of_a_command_counts_from_its_process_start():
    assert 0 < bench.process_age() < 24 * 3600                     # this test process started a little while ago


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_every_round_only_in_a_terminal():
    for stream, expected in ((_Terminal(), ["bench: a", "bench: b"]), (_Pipe(), ["bench: a"])):
        log = bench.BenchLog(stream)
        log.line("a")
        log.detail("b")
        assert stream.getvalue().splitlines() == expected
    quiet = _Terminal()
    bench.BenchLog(quiet, enabled=False).line("a")
    assert quiet.getvalue() == ""


def test_tiny_bench_keeps_the_contract_keys_states_its_precision_and_logs_a_few_lines(lightbox_env):
    stream = _Pipe()
    home = os.environ["LIGHTBOX_HOME"]
    out = bench.run_bench(model="unet", steps=1, batch=2, size=32, device="cpu", budget=0.0, min_rounds=3,
                          log=bench.BenchLog(stream))
    assert os.environ["LIGHTBOX_HOME"] == home                    # the scratch workspace is gone again
    assert set(bench.CONTRACT_KEYS) <= set(out)
    assert all(out[k] > 0 for k in bench.CONTRACT_KEYS)
    assert out["rounds"] == 3 and out["cases"][0]["rounds"] == 3    # a spent budget still measures min_rounds
    assert out["ratio_ci95"][0] <= out["ratio"] <= out["ratio_ci95"][1]
    assert out["ratio_iqr"][0] <= out["ratio"] <= out["ratio_iqr"][1]
    assert out["over_budget"] is True and out["seconds"] > 0 and out["budget_seconds"] == 0.0
    assert out["data_wait"]["augment"] == bench.BENCH_AUGMENT and 0 < out["data_wait"]["host"] < 1
    assert "device" not in out["data_wait"]                       # both data paths are measured on CUDA only
    lines = stream.getvalue().splitlines()
    assert 4 <= len(lines) <= 6 and all(line.startswith("bench: ") for line in lines)   # no per-round lines
    assert any("preparing its augmented batch (cpu)" in line for line in lines)
    assert "95 % interval" in lines[-2] and "3 rounds" in lines[-2] and "s over: at least 3 rounds" in lines[-1]
