"""A budgeted run's training plan: steps per trainer, decided once from a short calibration, with floors.

Why: the demo's earlier budget was a wall-clock race. Every trainer ran the share of its steps that CLIP's
first steps predicted would fit, so a CPU 40 % slower than the one the plan was made on gave CLIP 334 of
700 steps, every VQA variant 18 steps and the reading row 240, and the results inverted (V2 below V1,
reading 22 %; docs/training.md#the-training-plan). A plan instead:

1. starts every trainer at its **floor**: the least work that keeps its result's shape, measured (VQA's
   full epochs, without which the mapper barely moves and V2 falls below V1; the reading row's 500 image
   steps, below which it stays near chance; a CLIP that still separates kind);
2. predicts the time of the floors and of the full plan from CLIP's measured seconds per step (its first
   ``calibrate_steps`` steps) and the measured cost of every other trainer in CLIP steps
   (:data:`COSTS`, per precision: bf16 autocast and fp32 differ);
3. spends what the budget leaves over the floors in :data:`PRIORITY` order (what buys most first), in
   whole chunks, so timing noise of a few percent gives the same plan.

Once decided, every trainer runs exactly its planned steps whatever the clock says; the only trainer
still timed is VQA's equal-time control V2t, whose length *is* V3's time by definition. A plan whose
floors do not fit the budget runs the floors and says so: results keep their shape, the run takes longer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: what the plan sets, in the order it is printed: CLIP's steps, VQA's questions per epoch (every
#: variant), image -> prompt's epochs (Model A), the reading cross-entropy row's image-tower steps
#: (its text stage follows at ``ce_text_share`` of them)
KNOBS = ("clip_steps", "vqa_questions", "img2prompt_epochs", "reading_ce_steps")
#: where the time left over the floors goes first. CLIP's steps feed every later task (VQA's object
#: questions, retrieval, reading all read its image tower); image -> prompt's second epoch moved A by
#: +0.005 cosine and the ensemble less (docs/training.md#the-training-plan)
PRIORITY = ("clip_steps", "reading_ce_steps", "vqa_questions", "img2prompt_epochs")
#: extra work is granted in whole chunks of these (CLIP 50 steps: a few % of calibration noise keeps the plan)
CHUNKS = {"clip_steps": 50, "vqa_questions": 500, "img2prompt_epochs": 1, "reading_ce_steps": 50}


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """Every trainer's time in CLIP training steps of the same run and precision (the calibration's unit).

    ``*_fixed``: what does not shrink with the steps (loading, embedding, scoring); the others are per
    unit of the knob. Measured from one demo run per precision (docs/training.md#the-training-plan):
    seconds of each trainer / CLIP's calibrated seconds per step.
    """

    clip_per_step: float  # later steps cost more than the calibration's (hard batches, evaluation of the curve)
    clip_fixed: float
    vqa_per_question: float  # the five variants' training together, per question of an epoch
    vqa_fixed: float  # image embeddings, the LM, scoring every variant on val and test
    img2prompt_per_epoch: float
    img2prompt_fixed: float  # MiniLM targets of every prompt, the filter sweep, Model B and its sweep
    reading_per_ce_step: float  # one image step of the cross-entropy row and its share of text steps
    reading_fixed: float  # the synthetic words, the seed's rows at their few steps, scoring


#: bf16: the demo's full plan on a quiet 2-core AMD EPYC (Zen 5, family 26; 2026-12-07): each trainer's
#: seconds over CLIP's calibrated 0.109 s per step (CLIP 84 s, VQA 62, image -> prompt 35, reading 51),
#: less the fixed costs removed since. fp32: the `--precision fp32` demo on the same Zen 5, shared (load
#: 3-7), at the floors: CLIP 232 s, VQA 542 s (343 of them training: its unfrozen LM steps are 4x a CLIP
#: step in fp32), image -> prompt 56 s, reading 97 s, against 0.496 s per CLIP step. Every run records
#: the prediction beside each trainer's time (docs/training.md#the-training-plan)
COSTS: dict[str, CostModel] = {
    "bf16": CostModel(clip_per_step=1.1, clip_fixed=45.0, vqa_per_question=0.107, vqa_fixed=165.0,
                      img2prompt_per_epoch=40.0, img2prompt_fixed=240.0, reading_per_ce_step=0.4,
                      reading_fixed=245.0),
    "fp32": CostModel(clip_per_step=1.1, clip_fixed=25.0, vqa_per_question=0.2, vqa_fixed=400.0,
                      img2prompt_per_epoch=20.0, img2prompt_fixed=95.0, reading_per_ce_step=0.13,
                      reading_fixed=130.0),
}


@dataclass(frozen=True)
class PlanRequest:
    """The full plan (what a fast machine runs), the floors, and the budget (seconds of training)."""

    full: dict[str, int]
    floors: dict[str, int]
    budget_s: float | None
    ce_text_share: float = 0.4  # reading: text-stage steps per image step (200 / 500 in the full plan)

    def floor(self, knob: str) -> int:
        return min(self.full[knob], self.floors.get(knob, self.full[knob]))


@dataclass
class TrainPlan:
    """The plan chosen: the work per trainer, its predicted time, and why."""

    precision: str
    s_per_clip_step: float | None
    budget_s: float | None
    work: dict[str, int]
    full: dict[str, int]
    floors: dict[str, int]
    predicted_s: float | None = None
    predicted_full_s: float | None = None
    predicted_floors_s: float | None = None
    predicted_by_trainer: dict[str, float] = field(default_factory=dict)
    why: str = ""
    ce_text_share: float = 0.4

    @property
    def reading_ce_text_steps(self) -> int:
        if self.work["reading_ce_steps"] == self.full["reading_ce_steps"]:
            return self.full.get("reading_ce_text_steps", round(self.ce_text_share * self.work["reading_ce_steps"]))
        return max(1, round(self.ce_text_share * self.work["reading_ce_steps"]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["work"] = {**self.work, "reading_ce_text_steps": self.reading_ce_text_steps}
        return d

    def lines(self, vqa_batch_size: int = 96) -> list[str]:
        """The plan as a person reads it: one line per trainer (work, floor, full), then why."""
        w, fl, fu = self.work, self.floors, self.full

        def of(k: str, unit: str) -> str:
            return f"{w[k]:,} {unit} (floor {fl[k]:,}, full plan {fu[k]:,})"

        per_epoch = -(-w["vqa_questions"] // vqa_batch_size)
        pred = self.predicted_by_trainer
        at = (lambda k: f"; predicted {pred[k]:.0f} s") if pred else (lambda k: "")
        head = f"training plan ({self.precision}"
        if self.s_per_clip_step is not None:
            head += f"; CLIP measured at {self.s_per_clip_step:.3f} s per step"
        head += f"; budget {self.budget_s:.0f} s)" if self.budget_s is not None else "; no budget)"
        return [
            head + ":",
            f"  CLIP             {of('clip_steps', 'steps')}{at('clip')}",
            f"  VQA              {of('vqa_questions', 'questions per epoch')} = {per_epoch} steps per epoch "
            f"x 5 variants{at('vqa')}",
            f"  image -> prompt  {of('img2prompt_epochs', 'epochs of Model A')}{at('img2prompt')}",
            f"  reading          synthetic_ce {of('reading_ce_steps', 'image steps')} + "
            f"{self.reading_ce_text_steps} text steps{at('reading')}",
            f"  why: {self.why}",
        ]


def predict(costs: CostModel, s_per_step: float, work: dict[str, int]) -> dict[str, float]:
    """Seconds per trainer for ``work`` on a machine whose CLIP step takes ``s_per_step``."""
    c = costs
    return {
        "clip": s_per_step * (c.clip_fixed + c.clip_per_step * work["clip_steps"]),
        "vqa": s_per_step * (c.vqa_fixed + c.vqa_per_question * work["vqa_questions"]),
        "img2prompt": s_per_step * (c.img2prompt_fixed + c.img2prompt_per_epoch * work["img2prompt_epochs"]),
        "reading": s_per_step * (c.reading_fixed + c.reading_per_ce_step * work["reading_ce_steps"]),
    }


def make_plan(req: PlanRequest, s_per_step: float | None, precision: str,
              costs: CostModel | None = None) -> TrainPlan:
    """The plan for a machine whose CLIP step took ``s_per_step`` seconds (None or no budget: the full plan).

    Deterministic: the same request, measurement and precision give the same plan. Every knob is at
    least its floor and at most the full plan; the budget left over the floors goes to the knobs in
    :data:`PRIORITY` order, in whole :data:`CHUNKS`, each knob filled before the next gets any.
    """
    floors = {k: req.floor(k) for k in KNOBS}
    base = dict(precision=precision, s_per_clip_step=s_per_step, budget_s=req.budget_s, full=dict(req.full),
                floors=floors, ce_text_share=req.ce_text_share)
    if req.budget_s is None or s_per_step is None:
        return TrainPlan(work={k: req.full[k] for k in KNOBS}, why="no time budget: the full plan", **base)
    costs = costs or COSTS.get(precision, COSTS["fp32"])

    def total(work: dict[str, int]) -> float:
        return sum(predict(costs, s_per_step, work).values())

    full_s = total({k: req.full[k] for k in KNOBS})
    floors_s = total(floors)
    work = dict(floors)
    if full_s <= req.budget_s:
        work = {k: req.full[k] for k in KNOBS}
        why = f"the full plan is predicted at {full_s:.0f} s, within the budget"
    elif floors_s >= req.budget_s:
        why = (f"even the floors are predicted at {floors_s:.0f} s, over the budget: they run anyway "
               f"(results keep their shape; the run takes longer)")
    else:
        granted = []
        for k in PRIORITY:
            while work[k] < req.full[k]:
                trial = {**work, k: min(req.full[k], work[k] + CHUNKS[k])}
                if total(trial) > req.budget_s:
                    break
                work = trial
            if work[k] > floors[k]:
                granted.append(f"{k} +{work[k] - floors[k]:,}")
        why = (f"the full plan is predicted at {full_s:.0f} s, over the budget; the floors at {floors_s:.0f} s; "
               f"what is left went to " + (", ".join(granted) if granted else "nothing (less than one chunk)")
               + f" (priority: {', '.join(PRIORITY)})")
    plan = TrainPlan(work=work, why=why, **base)
    plan.predicted_s = round(total(work), 1)
    plan.predicted_full_s = round(full_s, 1)
    plan.predicted_floors_s = round(floors_s, 1)
    plan.predicted_by_trainer = {k: round(v, 1) for k, v in predict(costs, s_per_step, work).items()}
    return plan
