"""Schedules (labkit.api's) against their formulas, and the method reading them at the
engine's optimizer step."""
import math

import pandas as pd
import pytest
from pydantic import ValidationError

from labkit.api import Schedule, runinfo, train, value_at


def test_cosine_linear_exp_ramps_match_their_formulas():
    spe, total = 10, 50  # steps per epoch, steps of the run
    cosine = Schedule(shape="cosine", start=0.996, end=1.0)
    linear = Schedule(shape="linear", start=0.04, end=0.07)
    exp = Schedule(shape="exp", start=1e-2, end=1e-4)
    for step in range(total):
        t = step / (total - 1)
        assert cosine.value(step, spe, total) == pytest.approx(
            0.996 + 0.004 * (1 - math.cos(math.pi * t)) / 2, abs=1e-15)
        assert linear.value(step, spe, total) == pytest.approx(0.04 + 0.03 * t, abs=1e-15)
        assert exp.value(step, spe, total) == pytest.approx(1e-2 * (1e-4 / 1e-2) ** t, rel=1e-12)
    # the reference's CosSched(0.996, 1): start, middle, end
    assert cosine.value(0, spe, total) == 0.996
    assert cosine.value(total - 1, spe, total) == 1.0


def test_ramp_over_some_epochs_then_constant():
    warmup = Schedule(shape="linear", start=0.04, end=0.07, epochs=3)  # LinWarmup(.04,.07,3)
    spe, total = 10, 100
    assert warmup.value(0, spe, total) == 0.04
    assert warmup.value(15, spe, total) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert warmup.value(29, spe, total) == pytest.approx(0.07)
    assert [warmup.value(s, spe, total) for s in (30, 55, 99)] == [0.07, 0.07, 0.07]


def test_numbers_are_constants_and_bad_schedules_are_refused():
    assert value_at(0.1, 123, 10, 1000) == 0.1
    with pytest.raises(ValidationError):
        Schedule(shape="exp", start=0.0, end=1.0)
    with pytest.raises(ValidationError):
        Schedule(shape="quadratic", start=0.0, end=1.0)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_logged_teacher_momentum_and_temperature_follow_the_engine_steps(
        dino_run, dino_registries, accumulate):
    momentum = {"shape": "cosine", "start": 0.9, "end": 1.0}
    temp = {"shape": "linear", "start": 0.04, "end": 0.07, "epochs": 1}
    run = dino_run(epochs=2, batch_size=50, subset=300, teacher_momentum=momentum,
                   teacher_temp=temp, probe_every=0, top={"accumulate": accumulate})
    assert train(run, dino_registries, progress=False) == "finished"
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    # optimizer steps: 6 batches of 50 per epoch, `accumulate` batches per step
    batches = math.ceil(300 / 50)
    spe = math.ceil(batches / accumulate)
    total = 2 * spe
    for epoch in (1, 2):
        last = epoch * spe - 1  # the index of the epoch's last optimizer step
        t = last / (total - 1)
        assert log["teacher-momentum"][epoch - 1] == pytest.approx(
            0.9 + 0.1 * (1 - math.cos(math.pi * t)) / 2, abs=1e-12)
        assert log["teacher-momentum"][epoch - 1] == value_at(
            Schedule(**momentum), last, spe, total)
    assert list(log["teacher-temp"]) == pytest.approx([0.07, 0.07])
    assert list(log["student-temp"]) == [0.1, 0.1]
