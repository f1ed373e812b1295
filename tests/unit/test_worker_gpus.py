"""Which GPUs the embedded worker shows a run's process: its slot's one, or N of them for a run on N devices."""
from __future__ import annotations

from engine.config import RunConfig
from engine.runs.submit import create_run
from engine.runs.worker import visible_gpus


def test_a_run_sees_its_slots_gpu_and_a_run_on_n_devices_sees_n(tiny_classification):
    one = create_run(RunConfig(dataset_id=tiny_classification, arch="lenet5", image_size=32, batch_size=8))
    two = create_run(RunConfig(dataset_id=tiny_classification, arch="lenet5", image_size=32, batch_size=8,
                               devices=2))
    assert visible_gpus(one, 0, 0) is None and visible_gpus(two, 0, 0) is None     # a CPU machine: nothing set
    assert visible_gpus(one, 1, 2) == "1"
    assert visible_gpus(two, 0, 4) == "0,1" and visible_gpus(two, 3, 4) == "3,0"
    assert visible_gpus(two, 0, 1) == "0"            # more devices than the machine has: preflight refuses it there
