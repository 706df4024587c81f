"""Whether a PPO or GRPO run's held-out score moved beyond its noise (issue 24), from the
numbers the run stored: its held-out points (`HeldoutCheck.heldout_eval`: each a mean over
prompts with its SE clustered by prompt), the first against the last.

- the held-out score: Δ = s̄_last − s̄_first, SE(Δ) = sqrt(SE_first² + SE_last²)
  (objectives.difference_with_se); it rose / fell when Δ > 2·SE(Δ) / Δ < −2·SE(Δ), else it
  did not move beyond its noise (objectives.trend_verdict, k = TREND_SE = 2);
- the gap between training and held-out prompts, g = s̄_train − s̄_heldout at each point
  (its SE the same way), and whether it grew from the first point to the last beyond
  2·SE: only then is poor generalisation said.

The pages word it in the session's language (`sentences`), the run summary and the CLI in
English (`summary`). No sentence claims a change its numbers do not show.

`HeldoutCheck` (the end of this module) takes the points during the run: a part of
engine.training.ppo.PPOTrainer."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from engine import data

from engine.objectives import (TREND_SE, difference_with_se, prompt_clustered_mean, sequence_kl,
                               trend_verdict)
from engine.training.rl_prompts import in_language

METRICS = ("eval_train_score", "eval_train_score_se", "eval_heldout_score",
           "eval_heldout_score_se", "eval_heldout_answers")
GAP_VERDICT = {"rose": "grew", "fell": "shrank", "flat": "flat"}


def points(store, run_id: int) -> list[dict]:
    """The run's held-out points in step order: {"step", "train", "train_se", "heldout",
    "heldout_se", "answers"} (a missing SE or count: None); the points of a resumed run's
    earlier life too."""
    by_step: dict[int, dict] = {}
    for r in store.get_metrics(run_id, list(METRICS)):
        by_step.setdefault(int(r["step"]), {})[r["name"]] = float(r["value"])
    out = []
    for step in sorted(by_step):
        v = by_step[step]
        if "eval_heldout_score" not in v or "eval_train_score" not in v:
            continue
        answers = v.get("eval_heldout_answers")
        out.append({"step": step, "train": v["eval_train_score"],
                    "train_se": v.get("eval_train_score_se"),
                    "heldout": v["eval_heldout_score"],
                    "heldout_se": v.get("eval_heldout_score_se"),
                    "answers": None if answers is None else int(answers)})
    return out


def change(pts: list[dict], k: float = TREND_SE) -> dict | None:
    """The first and last held-out points compared: the held-out score's change Δ with its
    SE and verdict ("rose", "fell", "flat"; None without an SE), and the training-vs-held-
    out gap's change with its SE and verdict ("grew", "shrank", "flat"; None without an
    SE). None without a point; with one point, only that point (verdict None)."""
    if not pts:
        return None
    first, last = pts[0], pts[-1]
    out = {"points": len(pts), "first_step": first["step"], "last_step": last["step"],
           "first": first["heldout"], "first_se": first["heldout_se"],
           "last": last["heldout"], "last_se": last["heldout_se"],
           "answers": last["answers"], "change": None, "change_se": None, "verdict": None,
           "gap_first": None, "gap_last": None, "gap_change": None, "gap_change_se": None,
           "gap_verdict": None}
    if len(pts) < 2:
        return out
    d, se = difference_with_se(first["heldout"], first["heldout_se"],
                               last["heldout"], last["heldout_se"])
    out.update(change=d, change_se=se, verdict=trend_verdict(d, se, k))
    gaps = [difference_with_se(p["heldout"], p["heldout_se"], p["train"], p["train_se"])
            for p in (first, last)]
    g, g_se = difference_with_se(gaps[0][0], gaps[0][1], gaps[1][0], gaps[1][1])
    verdict = trend_verdict(g, g_se, k)
    out.update(gap_first=gaps[0][0], gap_last=gaps[1][0], gap_change=g, gap_change_se=g_se,
               gap_verdict=None if verdict is None else GAP_VERDICT[verdict])
    return out


def sentences(c: dict | None, k: float = TREND_SE) -> list[dict]:
    """The change in words: [{"key", "params"}] of the held-out score's sentence and, with
    two points or more, the gap's (i18n keys of the `ppo` catalogue)."""
    if c is None:
        return []
    if c["points"] < 2:
        return [{"key": "ppo.heldout_one_point",
                 "params": {"step": c["last_step"], "last": c["last"]}}]
    params = {key: c[key] for key in ("first", "last", "first_step", "last_step", "change")}
    if c["verdict"] is None:
        return [{"key": "ppo.heldout_no_se", "params": params}]
    params.update(bound=k * c["change_se"], first_se=c["first_se"], last_se=c["last_se"],
                  answers=c["answers"] or 0)
    out = [{"key": f"ppo.heldout_{c['verdict']}", "params": params}]
    if c["gap_verdict"] is not None:
        out.append({"key": f"ppo.gap_{c['gap_verdict']}",
                    "params": {"gap_first": c["gap_first"], "gap_last": c["gap_last"],
                               "gap_change": c["gap_change"],
                               "bound": k * c["gap_change_se"]}})
    return out


ANSWERS_FILE = "heldout.jsonl"


def append_answers(run_dir: Path, step: int, rows: list[dict]) -> None:
    """One held-out point's answers (`PPOTrainer.last_heldout`: set, prompt, answer,
    score, gold) as one JSON line {"step", "rows"} of the run folder's heldout.jsonl, so
    that every stored mean and SE can be recomputed from its answers (a resumed run
    appends the points it redoes: a step's last line is the one its metrics hold)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ANSWERS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": int(step), "rows": rows}, ensure_ascii=False) + "\n")


def read_answers(run_dir: Path) -> dict[int, list[dict]]:
    """The answers of each held-out point from heldout.jsonl ({step: rows}, a step's last
    line); {} without the file."""
    path = run_dir / ANSWERS_FILE
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            point = json.loads(line)
            out[int(point["step"])] = point["rows"]
    return out


def summary(store, run_id: int) -> dict:
    """What the run summary (and so `python -m engine train`'s JSON) says of the held-out
    check: {"heldout": the change's numbers, "heldout_sentence": its sentences in English};
    {} when the run has no held-out point."""
    from engine.schema import english

    c = change(points(store, run_id))
    if c is None:
        return {}
    text = " ".join(english(s["key"]).format(**s["params"]) for s in sentences(c))
    return {"heldout": c, "heldout_sentence": text}


class HeldoutCheck:
    """Training vs held-out prompts during a PPO/GRPO run (a part of
    engine.training.ppo.PPOTrainer, which sets cfg, store, prompts, log and samples
    answers with `sample_answers`)."""

    def heldout_sets(self) -> tuple[list, list]:
        """(K fixed training prompts, K held-out prompts): the dataset's eval-split prompts
        that are not training prompts, K = heldout_prompts, both picked once by the seed.
        No held-out prompts: said once in the log, and ([], [])."""
        if getattr(self, "_heldout", None) is None:
            cfg = self.cfg
            seen = {json.dumps(p, ensure_ascii=False, sort_keys=True) for p in self.prompts}
            held = [p for p in in_language(data.prompts_of(self.store, cfg.dataset, "eval"),
                                           cfg.prompt_language)
                    if p and json.dumps(p, ensure_ascii=False, sort_keys=True) not in seen]
            rng = random.Random(cfg.seed)
            rng.shuffle(held)
            train = list(self.prompts)
            rng.shuffle(train)
            K = cfg.heldout_prompts
            self._heldout = (train[:K], held[:K]) if held else ([], [])
            if not held:
                self.log(f"no held-out prompts: dataset {cfg.dataset!r} has no eval-split "
                         f"prompt outside the training prompts; the held-out evaluation is "
                         f"skipped")
        return self._heldout

    def heldout_due(self, step: int) -> bool:
        every = self.cfg.heldout_every
        return bool(every) and (step == 1 or step % every == 0 or step == self.cfg.max_steps)

    @torch.no_grad()
    def heldout_eval(self, step: int) -> dict[str, float]:
        """Training vs held-out prompts at this step: `heldout_answers` answers to each
        prompt of both sets (K = heldout_prompts each), sampled in one call the way the run
        samples (π_θ, its temperature and token limit, no gradient) with the same seed at
        every point, so that two points differ by the policy rather than by the draw;
        scored by the run's reward (and the gold one); the held-out answers' KL to the
        reference too. Each score is the mean over prompts of each prompt's mean answer,
        with its standard error clustered by prompt (objectives.prompt_clustered_mean:
        the SE of the K prompt means, metrics `<name>_se`); `eval_heldout_answers` counts
        the held-out answers scored. The last point's answers with their scores stay in
        `self.last_heldout` (run_steps appends them to the run's heldout.jsonl). {} when
        not due or no held-out set."""
        if not self.heldout_due(step):
            return {}
        train, held = self.heldout_sets()
        if not held:
            return {}
        A = self.cfg.heldout_answers
        torch.manual_seed(self.cfg.seed * 7_919)   # every point: the same random numbers
        ro = self.sample_answers(train + held, A)
        n = len(train) * A
        ref = self.ref_logprobs(ro.query[n:], ro.query_mask[n:], ro.response[n:], ro.mask[n:])
        kl = sequence_kl(ro.logp[n:], ref, ro.mask[n:].float())
        scores = self.reward_scores(ro.prompts, ro.texts)
        gold = self.gold_scores(ro.prompts[n:], ro.texts[n:]) if self.gold is not None else None
        golds = [None] * n + (gold.tolist() if gold is not None else [None] * len(held) * A)
        self.last_heldout = [
            {"set": "train" if i < n else "heldout", "prompt": prompt, "answer": text,
             "score": float(score), **({"gold": g} if g is not None else {})}
            for i, (prompt, text, score, g) in enumerate(zip(ro.prompts, ro.texts,
                                                                 scores.tolist(), golds))]

        def per_prompt(values: torch.Tensor) -> tuple[float | None, float | None]:
            return prompt_clustered_mean(values.reshape(-1, A).tolist())

        train_mean, train_se = per_prompt(scores[:n])
        held_mean, held_se = per_prompt(scores[n:])
        gold_mean, gold_se = per_prompt(gold) if gold is not None else (None, None)
        out = {"eval_train_score": train_mean, "eval_train_score_se": train_se,
               "eval_heldout_score": held_mean, "eval_heldout_score_se": held_se,
               "eval_heldout_kl": float(kl.mean()),
               "eval_heldout_gold": gold_mean, "eval_heldout_gold_se": gold_se,
               "eval_heldout_answers": float(len(held) * A)}
        return {k: v for k, v in out.items() if v is not None}
