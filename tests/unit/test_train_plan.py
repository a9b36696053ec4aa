"""The budgeted run's training plan (clipq.train.plan): floors, determinism, priority, precision, the record."""

from __future__ import annotations

import pytest

from clipq.train.plan import CHUNKS, COSTS, KNOBS, PRIORITY, PlanRequest, make_plan, predict

FULL = dict(clip_steps=700, vqa_questions=3500, img2prompt_epochs=2, reading_ce_steps=500, reading_ce_text_steps=200)
FLOORS = dict(clip_steps=450, vqa_questions=3500, img2prompt_epochs=1, reading_ce_steps=500)


def _req(budget: float | None = 450.0, **floors: int) -> PlanRequest:
    return PlanRequest(full=FULL, floors={**FLOORS, **floors}, budget_s=budget)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_every_knob_stays_between_its_floor_and_the_full_plan(precision):
    for s_per_step in (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0, 5.0):
        plan = make_plan(_req(), s_per_step, precision)
        for k in KNOBS:
            assert FLOORS[k] <= plan.work[k] <= FULL[k], (s_per_step, k, plan.work)
        # never over the budget unless the floors alone are
        assert plan.predicted_s <= 450.0 or plan.work == {k: FLOORS[k] for k in KNOBS}


def test_a_fast_machine_runs_the_full_plan_and_a_slow_one_the_floors():
    fast = make_plan(_req(), 0.05, "bf16")
    assert fast.work == {k: FULL[k] for k in KNOBS} and "within the budget" in fast.why
    slow = make_plan(_req(), 2.0, "bf16")
    assert slow.work == {k: FLOORS[k] for k in KNOBS}
    assert "floors" in slow.why and "over the budget" in slow.why and slow.predicted_floors_s > 450.0
    # no budget, or no measurement: the full plan, nothing predicted
    for plan in (make_plan(_req(None), 2.0, "fp32"), make_plan(_req(), None, "fp32")):
        assert plan.work == {k: FULL[k] for k in KNOBS} and plan.predicted_s is None


def test_the_plan_is_deterministic_given_the_calibration_and_moves_in_whole_chunks():
    plans = [make_plan(_req(), 0.25, "bf16").to_dict() for _ in range(3)]
    assert plans[0] == plans[1] == plans[2]
    for s_per_step in (0.2, 0.22, 0.24, 0.26, 0.28, 0.3):
        w = make_plan(_req(), s_per_step, "bf16").work
        assert (w["clip_steps"] - FLOORS["clip_steps"]) % CHUNKS["clip_steps"] == 0 or w["clip_steps"] == FULL["clip_steps"]
    # a slower machine never gets more work
    works = [make_plan(_req(), x / 100, "bf16").work["clip_steps"] for x in range(5, 80)]
    assert works == sorted(works, reverse=True)


def test_what_is_left_over_the_floors_goes_by_priority():
    assert PRIORITY[0] == "clip_steps"
    costs = COSTS["bf16"]
    floors_s = sum(predict(costs, 0.3, {k: FLOORS[k] for k in KNOBS}).values())
    # room for exactly two chunks of CLIP and nothing more: CLIP gets them, image -> prompt keeps its floor
    chunk_s = 0.3 * costs.clip_per_step * CHUNKS["clip_steps"]
    plan = make_plan(_req(floors_s + 2.5 * chunk_s), 0.3, "bf16", costs)
    assert plan.work["clip_steps"] == FLOORS["clip_steps"] + 2 * CHUNKS["clip_steps"]
    assert plan.work["img2prompt_epochs"] == FLOORS["img2prompt_epochs"]
    assert "clip_steps +100" in plan.why


def test_the_plan_reads_as_steps_per_trainer_and_why():
    plan = make_plan(_req(), 0.3, "fp32")
    text = "\n".join(plan.lines(96))
    assert "fp32" in text and "0.300 s per step" in text and "budget 450 s" in text
    for name in ("CLIP", "VQA", "image -> prompt", "reading", "why:"):
        assert name in text
    assert f"{plan.work['clip_steps']:,} steps (floor 450, full plan 700)" in text
    assert "37 steps per epoch" in text  # 3,500 questions at batch 96
    d = plan.to_dict()
    assert d["work"]["reading_ce_text_steps"] == 200 and d["precision"] == "fp32" and d["floors"] == FLOORS
    # the reading row's text stage follows its image stage where a plan shrinks it
    short = make_plan(PlanRequest(full=FULL, floors={**FLOORS, "reading_ce_steps": 250}, budget_s=1.0), 1.0, "fp32")
    assert short.work["reading_ce_steps"] == 250 and short.reading_ce_text_steps == 100


def test_pipeline_runs_the_plan_records_it_and_honours_fp32(small_world, tmp_path):
    from clipq.train.pipeline import TrainSettings, train_tasks

    seen = []
    s = TrainSettings(preset="test", progress=False, clip_steps=40, batch_size=16, train_seconds=0.01,
                      precision="fp32", questions_per_epoch=64, img2prompt_epochs=3, reading_steps=2,
                      reading=dict(ce_steps=12, ce_text_steps=6),
                      floors=dict(clip_steps=20, img2prompt_epochs=1, reading_ce_steps=8),
                      clip=dict(calibrate_steps=4, warmup=2), on_plan=seen.append)
    res = train_tasks(str(small_world), str(tmp_path / "a"), ["clip", "img2prompt", "reading"], s)
    assert len(seen) == 1  # decided once, after CLIP's calibration steps
    plan = res["plan"]
    assert plan["precision"] == "fp32" and res["clip"]["precision"] == "fp32"
    assert res["img2prompt"]["precision"] == "fp32" and res["reading"]["precision"] == "fp32"
    # a 10 ms budget fits nothing: every knob at its floor, and every trainer ran exactly that
    assert plan["work"]["clip_steps"] == 20 and res["clip"]["steps"] == 20
    assert res["clip"]["calibrated_s_per_step"] == pytest.approx(plan["s_per_clip_step"], rel=1e-3, abs=1e-4)
    assert plan["work"]["img2prompt_epochs"] == 1 and res["img2prompt"]["epochs"] == 1
    assert plan["work"]["reading_ce_steps"] == 8 and res["reading"]["config"]["ce_steps"] == 8
    assert res["reading"]["config"]["ce_text_steps"] == plan["work"]["reading_ce_text_steps"] == 3
    assert set(plan["seconds_by_trainer"]) == {"clip", "img2prompt", "reading"}
    assert set(plan["predicted_by_trainer"]) >= {"clip", "img2prompt", "reading"} and "over the budget" in plan["why"]


def test_pipeline_without_a_budget_records_the_full_plan(small_world, tmp_path):
    from clipq.train.pipeline import TrainSettings, train_tasks

    s = TrainSettings(preset="test", progress=False, clip_steps=6, batch_size=16, img2prompt_epochs=1,
                      floors=dict(clip_steps=2))
    res = train_tasks(str(small_world), str(tmp_path / "a"), ["clip", "img2prompt"], s)
    assert res["clip"]["steps"] == 6 and res["plan"]["work"]["clip_steps"] == 6
    assert res["plan"]["why"].startswith("no time budget") and res["plan"]["s_per_clip_step"] is None


def test_demo_precision_is_checked_and_offered_on_the_command_line(tmp_path):
    import argparse

    from clipq.app.commands import demo
    from clipq.app.demo_stages import run_demo
    from clipq.runtime.errors import ClipqError

    with pytest.raises(ClipqError, match="precision"):
        run_demo(tmp_path / "d", precision="fp16", stages=["data"])
    assert not (tmp_path / "d" / "data").exists()  # refused before any stage ran
    p = argparse.ArgumentParser()
    demo.add_parser(p.add_subparsers())
    assert p.parse_args(["demo", "--precision", "fp32"]).precision == "fp32"
    assert p.parse_args(["demo"]).precision == "auto"
