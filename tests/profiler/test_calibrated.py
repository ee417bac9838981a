"""The calibrated estimator object (profiler.Estimator): estimate, eval pass and fit, which the
planner and the CLI reach through one object."""

from __future__ import annotations

import dataclasses

from catalog import get_gpu, get_model
from profiler import Estimator, Method, TuningConfig
from profiler.calibration import FIRST_PRINCIPLES, all_reference_measurements, calibration_for
from profiler.estimator import estimate, eval_pass

CONFIG = TuningConfig(
    method=Method.LORA, lora_rank=16, lora_targets="all-linear", micro_batch_size=2, seq_len=1024
)


def test_the_object_estimates_with_each_gpus_calibration() -> None:
    spec, estimator = get_model("llama2-7b"), Estimator()
    for name in ("h100", "rtx4090", "l4"):
        gpu = get_gpu(name)
        assert estimator.calibration(gpu) is calibration_for(gpu)
        mine = estimator.estimate(spec, CONFIG, gpu)
        assert mine == estimate(spec, CONFIG, gpu, calibration=calibration_for(gpu))
        assert estimator.eval_pass(spec, CONFIG, gpu) == eval_pass(
            spec, CONFIG, gpu, calibration=calibration_for(gpu)
        )


def test_another_calibration_source_is_one_argument() -> None:
    spec, gpu = get_model("llama2-7b"), get_gpu("h100")
    plain = Estimator(calibration_of=lambda _: FIRST_PRINCIPLES)
    assert plain.estimate(spec, CONFIG, gpu).bands == ()  # no cross-validated bands
    assert (
        plain.estimate(spec, CONFIG, gpu).step_time_s
        != Estimator().estimate(spec, CONFIG, gpu).step_time_s
    )


def test_fit_keeps_what_the_measurements_cannot_show() -> None:
    """Fitted on torch AdamW rows alone, the 8-bit AdamW terms and the sharded strategies'
    reserved memory come from the reference calibration."""
    gpu = get_gpu("h100")
    rows = [m for m in all_reference_measurements() if m.config.optimizer.value == "adamw"]
    reference = calibration_for(gpu)
    mine = Estimator().fit(rows, get_model, gpu)
    assert mine.fit_inputs == len(rows) == 52
    assert mine.bnb8_host_s_per_tensor == reference.bnb8_host_s_per_tensor
    assert mine.reserved_by_sharding == reference.reserved_by_sharding
    bare = Estimator(
        calibration_of=lambda _: dataclasses.replace(reference, reserved_by_sharding=())
    )
    assert bare.fit(rows, get_model, gpu).reserved_by_sharding == ()
