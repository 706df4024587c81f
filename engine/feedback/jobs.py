"""The `ai_feedback` stage: AI-made preference pairs from a constitution (issue 17).

Two modes, one background job each (progress per prompt, cancel, resume):

- **critique** (Bai et al. 2022, SL-CAI): the policy answers each prompt; the judge
  critiques the answer against a principle drawn from the constitution and writes a
  revision. The pair (chosen = revision, rejected = original answer) is appended to the
  preference dataset `dataset`, and (prompt, revision) to the SFT dataset `<dataset>-sft`.
- **compare** (RL-CAI / RLAIF): two answers per prompt, and the judge says which one
  follows the principle better, asked in both orders (A/B then B/A) to cancel position
  bias. When `prompts` is a preference dataset (and `resample` is off) its own pairs are
  judged and each AI pair records the source row (`meta.input_row`) and its label, so
  agreement with human votes can be measured; otherwise the policy samples two answers.
  When the two orders disagree the pair is dropped, kept as a tie, or labelled by the
  mean of the two orders' P(first answer better), in which a constant position bias
  cancels (`order_disagreement`: drop, tie, average). A small local judge is often
  biased towards one letter in both orders (the embedded 135M model says "A" with
  P ≈ 0.95 whichever answer is first): "drop" then keeps nothing, "average" (the
  default) keeps its debiased verdict, and a mean of exactly 1/2 (a text judge that
  answered the same letter twice) is kept as a tie, which training leaves out.

Every row made is stored at once with source "ai" and its provenance in `meta`
(constitution name and version, principle, judge, mode, templates' hash, confidence,
order agreement, this job's run id), so nothing made before a cancel is lost, and a
resumed run skips the prompts this run already did. Rows the judge could not be used for
(an unparsable answer, an endpoint error) are listed in the summary's `skipped`, with the
reason; the job goes on with the other prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from engine.feedback.agreement import POSITION_DRIVEN
from engine.feedback import templates as tpl
from engine.feedback.constitutions import DEFAULT as DEFAULT_CONSTITUTION
from engine.schema import ADVANCED, ConfigError, SamplingSettings, StageConfig, like, setting

MODES = ("critique", "compare")
DISAGREEMENT = ("drop", "tie", "average")
POLICY_STAGES = ("sft", "ppo", "dpo", "grpo")
SOURCE = "ai"


@dataclass
class AIFeedbackConfig(StageConfig, SamplingSettings):
    """Settings of an AI feedback job (model: the policy's base model)."""
    mode: str = setting("compare", choices=MODES)
    prompts: str = setting("sample-sft", widget="page")       # an SFT or preference dataset
    constitution: str = setting(DEFAULT_CONSTITUTION, widget="page")
    constitution_version: int | None = setting(None, min=1, optional=True, group=ADVANCED)
    limit: int = setting(16, min=1, max=1_000_000)             # prompts (or input pairs)
    dataset: str = setting("ai-preferences")                   # the output preference dataset
    policy_run: int | None = setting(None, widget="page")      # None: the base model answers
    resample: bool = setting(False)      # compare on a preference dataset: sample new answers
    judge: str = setting("embedded", widget="page")            # model spec of a local judge
    judge_run: int | None = setting(None, widget="page")       # an adapter run as the judge
    judge_url: str = setting("")         # an OpenAI-compatible base URL; empty: local judge
    judge_model: str = setting("")
    judge_api_key_env: str = setting("OPENAI_API_KEY", group=ADVANCED)
    timeout_s: float = setting(60.0, min=0.1, max=3600.0, step=1.0, group=ADVANCED)
    retries: int = setting(3, min=0, max=20, group=ADVANCED)
    concurrency: int = setting(4, min=1, max=64, group=ADVANCED)
    order_disagreement: str = setting("average", choices=DISAGREEMENT)
    judge_max_new_tokens: int = setting(96, min=1, max=4096, group=ADVANCED)
    judge_temperature: float = setting(0.0, min=0.0, max=5.0, step=0.05, group=ADVANCED)
    max_new_tokens: int = like("max_new_tokens", 64)
    critique_template: str = setting(tpl.DEFAULTS["critique"], group=ADVANCED)
    revision_template: str = setting(tpl.DEFAULTS["revision"], group=ADVANCED)
    compare_template: str = setting(tpl.DEFAULTS["compare"], group=ADVANCED)
    seed: int = setting(0, min=0, max=2**31 - 1, group=ADVANCED)

    def check(self) -> None:
        super().check()
        for kind in ("critique", "revision", "compare"):
            tpl.check_template(kind, getattr(self, f"{kind}_template"))
        for name in ("prompts", "dataset", "constitution"):
            if not getattr(self, name).strip():
                raise ConfigError(name, "a name is required")
        if self.dataset.strip() in (self.prompts.strip(), self.prompts.strip() + "-sft") or \
                (self.mode == "critique" and self.sft_dataset.strip() == self.prompts.strip()):
            raise ConfigError("dataset", "the output dataset must differ from the prompts' "
                              "dataset")
        if self.judge_url:
            check_url(self.judge_url)
            if not self.judge_model.strip():
                raise ConfigError("judge_model", "name the endpoint's model (e.g. the model "
                                  "a llama.cpp or vLLM server serves)")
        elif not self.judge.strip() and self.judge_run is None:
            raise ConfigError("judge", "name a judge model, a judge run or an endpoint URL")
        if self.judge_api_key_env and not self.judge_api_key_env.replace("_", "").isalnum():
            raise ConfigError("judge_api_key_env", "the name of an environment variable "
                              "(letters, digits and _)")

    def templates(self) -> dict[str, str]:
        return {"critique": self.critique_template, "revision": self.revision_template,
                "compare": self.compare_template}

    @property
    def sft_dataset(self) -> str:
        """Where critique mode writes (prompt, revision) rows."""
        return f"{self.dataset}-sft"


def check_url(url: str) -> None:
    """An http(s) URL with a host, or a ConfigError naming judge_url."""
    parts = urlparse(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("judge_url", f"{url!r} is not an http:// or https:// URL "
                          f"(e.g. http://127.0.0.1:8080/v1)")


# -- what a job works on, checked before any model loads ----------------------------------
@dataclass
class Plan:
    items: list[dict]                # {"prompt"} or {"prompt", "pair": (x, y), "row": row}
    constitution: dict
    source_kind: str
    policy: tuple[str, object, str] | None    # (base spec, adapter folder or None, label)
    judge: tuple[str, object, str] | None     # local judge (spec, adapter, label); None: URL


def _existing_kind(store, name: str) -> str | None:
    from storage import NotFound

    try:
        return store.get_dataset(name)["kind"]
    except NotFound:
        return None


def _adapter_run(store, run_id: int, field: str, stages: tuple[str, ...] | None = None):
    """(base spec, adapter folder, label) of a finished run with an adapter, or a
    ConfigError naming `field`."""
    from engine.inference.models import EMBEDDED, adapter_dir
    from storage import NotFound

    try:
        run = store.get_run(int(run_id))
    except NotFound:
        raise ConfigError(field, f"run {run_id} does not exist") from None
    if stages and run["stage"] not in stages:
        raise ConfigError(field, f"run {run_id} is a {run['stage']} run; pick a "
                          f"{', '.join(s.upper() for s in stages)} run")
    folder = adapter_dir(run["id"])
    if not (folder / "adapter_config.json").exists():
        raise ConfigError(field, f"run {run_id} ({run['stage']}) has no saved adapter "
                          f"(status {run['status']})")
    spec = (run.get("config") or {}).get("model") or run.get("model") or EMBEDDED
    return spec, folder, f"{run['stage']}#{run['id']}"


def _check_spec(spec: str, field: str) -> None:
    """A model folder that does not exist is refused now (hub ids and 'embedded' load later)."""
    from engine.inference.models import EMBEDDED, ModelLoadError, resolve

    if (spec or EMBEDDED).strip() == EMBEDDED:
        return
    try:
        resolve(spec)
    except ModelLoadError as exc:
        raise ConfigError(field, str(exc)) from None


def prepare(store, cfg: AIFeedbackConfig) -> Plan:
    """Datasets, constitution, policy and judge checked, and the items listed, before
    any model loads: a ValueError or ConfigError says what cannot be used."""
    from engine import data
    from engine.feedback.constitutions import get_constitution

    if cfg.prompts in data.SAMPLES:
        data.ensure_sample_datasets(store)
    source_kind = store.get_dataset(cfg.prompts)["kind"]
    out_kind = _existing_kind(store, cfg.dataset)
    if out_kind not in (None, "preference"):
        raise ValueError(f"dataset {cfg.dataset!r} is a {out_kind} dataset; AI feedback adds "
                         f"preference pairs: name a preference dataset or a new one")
    if cfg.mode == "critique":
        sft_kind = _existing_kind(store, cfg.sft_dataset)
        if sft_kind not in (None, "sft"):
            raise ValueError(f"dataset {cfg.sft_dataset!r} is a {sft_kind} dataset; critique "
                             f"mode adds (prompt, revision) rows to it: it must be an SFT "
                             f"dataset")
    constitution = get_constitution(store, cfg.constitution, cfg.constitution_version)
    judge_pairs = cfg.mode == "compare" and source_kind == "preference" and not cfg.resample
    if judge_pairs:
        rows = store.list_rows(cfg.prompts, limit=cfg.limit)
        items = [{"prompt": r["prompt"], "pair": (r["chosen"], r["rejected"]), "row": r}
                 for r in rows]
        policy = None
    else:
        items = [{"prompt": p} for p in data.prompts_of(store, cfg.prompts)[: cfg.limit]]
        if cfg.policy_run is not None:
            policy = _adapter_run(store, cfg.policy_run, "policy_run", POLICY_STAGES)
        else:
            _check_spec(cfg.model, "model")
            policy = (cfg.model, None, "base")
    if not items:
        raise ValueError(f"dataset {cfg.prompts!r} has no prompts")
    if cfg.judge_url:
        judge = None
    elif cfg.judge_run is not None:
        judge = _adapter_run(store, cfg.judge_run, "judge_run")
        judge = (judge[0], judge[1], f"{judge[2]} on {judge[0]}")
    else:
        _check_spec(cfg.judge, "judge")
        judge = (cfg.judge, None, cfg.judge)
    return Plan(items, constitution, source_kind, policy, judge)


def done_items(store, cfg: AIFeedbackConfig, run_id: int) -> dict[str, set[int]]:
    """The items this run already made rows for ({"pairs": ..., "sft": ...}), from the
    rows' meta (job_run, item): what a resumed run skips."""
    out: dict[str, set[int]] = {"pairs": set(), "sft": set()}
    for key, name in (("pairs", cfg.dataset), ("sft", cfg.sft_dataset)):
        if _existing_kind(store, name) is None:
            continue
        for row in store.list_rows(name):
            meta = row.get("meta") or {}
            if meta.get("job_run") == run_id and isinstance(meta.get("item"), int):
                out[key].add(meta["item"])
    return out


# -- models ---------------------------------------------------------------------------------
def _load(spec: str, adapter, cache: dict):
    """(model, tokenizer) of a base spec with an optional adapter, loaded once per job."""
    key = (spec, str(adapter) if adapter else None)
    if key not in cache:
        from engine.inference.models import load_adapter, load_base

        loaded = load_base(spec)
        model = loaded.model
        if adapter is not None:
            model = load_adapter(model, adapter, adapter_name="default")
            model.eval()
        cache[key] = (model, loaded.tokenizer)
    return cache[key]


def make_judge(cfg: AIFeedbackConfig, plan: Plan, cache: dict):
    from engine.feedback.endpoint import Endpoint
    from engine.feedback.judge import EndpointJudge, LocalJudge

    if cfg.judge_url:
        return EndpointJudge(Endpoint(cfg.judge_url, cfg.judge_model, cfg.judge_api_key_env,
                                      cfg.timeout_s, cfg.retries, cfg.concurrency,
                                      temperature=cfg.judge_temperature))
    spec, adapter, label = plan.judge
    model, tokenizer = _load(spec, adapter, cache)
    return LocalJudge(model, tokenizer, label, temperature=cfg.judge_temperature,
                      seed=cfg.seed)


def prompt_for_judge(prompt) -> str:
    """A prompt as the judge reads it: the text, or a conversation's turns as lines."""
    from storage.db import split_prompt

    return split_prompt(prompt)[0]


def principle_of(principles: list[str], seed: int, item: int) -> str:
    """The principle drawn for item `item` (the same on a resume)."""
    import random

    return random.Random(seed * 1_000_003 + item).choice(principles)


# -- the job --------------------------------------------------------------------------------
def run_ai_feedback(cfg: AIFeedbackConfig, ctx) -> dict:
    """The `ai_feedback` stage (see the module docstring). Returns the summary:
    {pairs_made, sft_rows_made, skipped: [{row, prompt, reason}], seconds, judge, ...}."""
    import time

    t0 = time.perf_counter()
    store = ctx.store
    plan = prepare(store, cfg)
    done = done_items(store, cfg, ctx.run_id)
    total = len(plan.items)
    todo = [i for i in range(total) if i not in done["pairs"]]
    if ctx.resume and len(todo) < total:
        ctx.log(f"resumed: {total - len(todo)} of {total} prompts already done by this run")
    ctx.progress(total - len(todo), total, "loading models")
    for name, kind in ((cfg.dataset, "preference"),) + (
            ((cfg.sft_dataset, "sft"),) if cfg.mode == "critique" else ()):
        if _existing_kind(store, name) is None:
            try:
                store.create_dataset(name, kind, description=f"AI feedback ({cfg.mode})")
            except Exception:  # noqa: BLE001 - DatasetExists: created meanwhile
                if _existing_kind(store, name) != kind:
                    raise
    cache: dict = {}
    judge = make_judge(cfg, plan, cache)
    policy = _load(plan.policy[0], plan.policy[1], cache) if plan.policy and todo else None
    base_meta = {"constitution": plan.constitution["name"],
                 "constitution_version": plan.constitution["version"],
                 "judge": judge.label, "mode": cfg.mode,
                 "templates": tpl.templates_hash(cfg.templates()), "job_run": ctx.run_id,
                 "prompts_dataset": cfg.prompts,
                 "policy": plan.policy[2] if plan.policy else None}
    stats = {"pairs": 0, "sft": 0, "agree": 0, "judged": 0, "confidence": 0.0}
    skipped: list[dict] = []
    chunk = cfg.concurrency if cfg.judge_url else 1
    for start in range(0, len(todo), chunk):
        ctx.check_cancel()
        indices = todo[start:start + chunk]
        if cfg.mode == "critique":
            pairs, sft_rows, skips = _critique(cfg, plan, indices, policy, judge, base_meta)
            sft_rows = [r for r in sft_rows if r["meta"]["item"] not in done["sft"]]
            if sft_rows:  # before the pairs: a pair marks its item done
                store.add_rows(cfg.sft_dataset, sft_rows, source=SOURCE)
                stats["sft"] += len(sft_rows)
        else:
            pairs, skips = _compare(cfg, plan, indices, policy, judge, base_meta, stats)
        if pairs:
            store.add_rows(cfg.dataset, pairs, source=SOURCE)
            stats["pairs"] += len(pairs)
            ctx.samples(indices[-1] + 1, [{
                "prompt": prompt_for_judge(r["prompt"]), "response": r["chosen"],
                "rejected": r["rejected"], "principle": r["meta"]["principle"],
                "confidence": r["meta"]["confidence"], "item": r["meta"]["item"]}
                for r in pairs])
        skipped.extend(skips)
        for s in skips:
            ctx.log(f"prompt {s['row']} skipped: {s['reason']}", "warning")
        finished = total - len(todo) + start + len(indices)
        ctx.progress(finished, total, f"{finished}/{total} prompts, {stats['pairs']} pairs "
                                      f"made, {len(skipped)} skipped")
    summary = {"mode": cfg.mode, "dataset": cfg.dataset,
               "pairs_made": stats["pairs"], "skipped": skipped,
               "pairs_made_before": len(done["pairs"]),
               "prompts": total, "prompts_done_before": total - len(todo),
               "seconds": round(time.perf_counter() - t0, 2), "judge": judge.label,
               "constitution": plan.constitution["name"],
               "constitution_version": plan.constitution["version"]}
    if cfg.mode == "critique":
        summary.update(sft_dataset=cfg.sft_dataset, sft_rows_made=stats["sft"])
    elif stats["judged"]:
        order_agreement = stats["agree"] / stats["judged"]
        summary.update(order_agreement=round(order_agreement, 4),
                       mean_confidence=round(stats["confidence"] / stats["judged"], 4),
                       position_driven=1.0 - order_agreement > POSITION_DRIVEN)
    if judge.stats():
        summary["endpoint"] = judge.stats()
    return summary


def _sample(cfg: AIFeedbackConfig, policy, prompts: list, seed: int, n: int = 1) -> list[str]:
    from engine.inference.generate import SamplingConfig, generate

    model, tokenizer = policy
    scfg = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p,
                          max_new_tokens=cfg.max_new_tokens, seed=seed,
                          batch_size=max(1, len(prompts)))
    return generate(model, tokenizer, prompts, scfg, num_return_sequences=n)


def _skip(i: int, item: dict, reason: str) -> dict:
    """A skipped item for the report: its position among the job's prompts (`row`), the
    prompt, the reason, and the source pair's id when the job judged a dataset's pairs."""
    out = {"row": i, "prompt": prompt_for_judge(item["prompt"])[:200], "reason": reason}
    if "row" in item:
        out["input_row"] = item["row"]["id"]
    return out


def _critique(cfg, plan, indices, policy, judge, base_meta):
    """Answer, critique, revise: (preference rows, SFT rows, skipped) of some items."""
    from engine.feedback.judge import JudgeError

    items = [plan.items[i] for i in indices]
    answers = _sample(cfg, policy, [it["prompt"] for it in items], cfg.seed + indices[0])
    principles = [principle_of(plan.constitution["principles"], cfg.seed, i) for i in indices]
    texts = [prompt_for_judge(it["prompt"]) for it in items]
    skips, live = [], []
    for k, (i, it, a) in enumerate(zip(indices, items, answers)):
        if not a.strip():
            skips.append(_skip(i, it, "the policy's answer is empty"))
        else:
            live.append(k)
    critiques = judge.write([tpl.fill("critique", cfg.critique_template, prompt=texts[k],
                                      response=answers[k], principle=principles[k])
                             for k in live], cfg.judge_max_new_tokens)
    ok = []
    for k, c in zip(live, critiques):
        if isinstance(c, JudgeError):
            skips.append(_skip(indices[k], items[k], f"critique: {c}"))
        else:
            ok.append((k, c))
    revisions = judge.write([tpl.fill("revision", cfg.revision_template, prompt=texts[k],
                                      response=answers[k], principle=principles[k],
                                      critique=c) for k, c in ok], cfg.judge_max_new_tokens)
    pairs, sft_rows = [], []
    for (k, c), r in zip(ok, revisions):
        i, it = indices[k], items[k]
        if isinstance(r, JudgeError):
            skips.append(_skip(i, it, f"revision: {r}"))
            continue
        if r.strip() == answers[k].strip():
            skips.append(_skip(i, it, "the revision is the same as the answer"))
            continue
        if r.strip() == c.strip():  # a small judge often writes its critique again
            skips.append(_skip(i, it, "the revision repeats the critique"))
            continue
        meta = {**base_meta, "principle": principles[k], "critique": c, "item": i,
                "confidence": None, "order_agreement": None}
        pairs.append({"prompt": it["prompt"], "chosen": r, "rejected": answers[k],
                      "meta": meta})
        sft_rows.append({"prompt": it["prompt"], "response": r, "meta": dict(meta)})
    skips.sort(key=lambda s: s["row"])
    return pairs, sft_rows, skips


def _compare(cfg, plan, indices, policy, judge, base_meta, stats):
    """Two answers judged in both orders: (preference rows, skipped) of some items."""
    from engine.feedback.judge import JudgeError

    items = [plan.items[i] for i in indices]
    if all("pair" in it for it in items):
        answers = [it["pair"] for it in items]
    else:
        flat = _sample(cfg, policy, [it["prompt"] for it in items], cfg.seed + indices[0], 2)
        answers = [(flat[2 * k], flat[2 * k + 1]) for k in range(len(items))]
    principles = [principle_of(plan.constitution["principles"], cfg.seed, i) for i in indices]
    skips, live, prompts = [], [], []
    for k, (i, it, (x, y)) in enumerate(zip(indices, items, answers)):
        if not x.strip() or not y.strip():
            skips.append(_skip(i, it, "an answer is empty"))
            continue
        if x.strip() == y.strip():
            skips.append(_skip(i, it, "the two answers are the same"))
            continue
        live.append(k)
        text = prompt_for_judge(it["prompt"])
        for a, b in ((x, y), (y, x)):
            prompts.append(tpl.fill("compare", cfg.compare_template, prompt=text,
                                    response_a=a, response_b=b, principle=principles[k]))
    verdicts = judge.prefer_a(prompts)
    pairs = []
    for n, k in enumerate(live):
        i, it, (x, y) = indices[k], items[k], answers[k]
        first, second = verdicts[2 * n], verdicts[2 * n + 1]
        bad = [v for v in (first, second) if isinstance(v, JudgeError)]
        if bad:
            skips.append(_skip(i, it, "; ".join(dict.fromkeys(str(b) for b in bad))))
            continue
        p1, p2 = first, 1.0 - second           # P(x is better), asked x-first then y-first
        p = (p1 + p2) / 2
        agree = (p1 > 0.5) == (p2 > 0.5) and p1 != 0.5 and p2 != 0.5
        stats["judged"] += 1
        stats["agree"] += int(agree)
        stats["confidence"] += max(p, 1 - p)
        if not agree and cfg.order_disagreement == "drop":
            skips.append(_skip(i, it, f"the judge's two orders disagree (P(first answer "
                                      f"better) = {p1:.2f} asked first, {p2:.2f} asked second)"))
            continue
        # "average" with no preference left (a text judge answering A then A: 1 and 0)
        # is a tie too: neither answer is better
        tie = not agree and (cfg.order_disagreement == "tie" or p == 0.5)
        x_wins = p >= 0.5
        chosen, rejected = (x, y) if x_wins else (y, x)
        meta = {**base_meta, "principle": principles[k], "item": i,
                "confidence": round(max(p, 1 - p), 4), "order_agreement": agree,
                "p_first": round(p1, 4), "p_second": round(p2, 4), "tie": tie}
        if "row" in it:
            row = it["row"]
            meta.update(input_row=row["id"], input_dataset=cfg.prompts,
                        input_source=row.get("source") or "",
                        input_label="chosen",      # the source row prefers its `chosen`
                        ai_choice="tie" if tie else ("chosen" if x_wins else "rejected"),
                        agrees_with_input=bool(not tie and x_wins))
            if (row.get("meta") or {}).get("choice"):
                meta["input_choice"] = row["meta"]["choice"]
        pairs.append({"prompt": it["prompt"], "chosen": chosen, "rejected": rejected,
                      "meta": meta})
    skips.sort(key=lambda s: s["row"])
    return pairs, skips
