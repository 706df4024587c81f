"""The fixed benchmark workloads: which rows, how many, how long (see bench/README.md).

DPO trains on the same pairs as the reward stage; GRPO samples answers to the same
prompts as PPO. Rows come from the project's sample assets (assets/sample_sft.jsonl,
assets/sample_preferences.jsonl) and, where those are missing or too few fit, from
the HH-RLHF harmless test split in the shared folder, read at run time and never
copied into the repository. Only rows whose full chat-templated sequence fits in
`max_length` tokens are kept, so neither side truncates (TRL's RewardTrainer drops
longer pairs while the engine truncates them: with rows that fit, both train on the
very same tokens). If fewer rows fit than wanted, the list is cycled.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSET_SFT = ROOT / "assets" / "sample_sft.jsonl"
ASSET_PREFS = ROOT / "assets" / "sample_preferences.jsonl"
HH_TEST = Path(os.environ.get("RLHF_LAB_SHARED", "/work/shared")) / "data" / \
    "hh-rlhf-harmless-test.jsonl.gz"


@dataclass
class Workload:
    """One stage's workload; both sides get exactly these numbers."""
    stage: str
    rows: int = 64               # examples (sft), pairs (reward, dpo) or prompts (ppo, grpo)
    batch_size: int = 8          # examples / pairs / prompts per optimizer step (ppo: rollout;
    #                              grpo: 4 prompts, each answered group_size times)
    max_length: int = 128        # tokens per sequence (prompt + response)
    warmup: int = 1              # steps not measured
    measured: int = 3            # steps measured (median reported)
    new_tokens: int = 32         # ppo, grpo: tokens sampled per prompt (at most)
    minibatches: int = 2         # ppo: minibatches per rollout batch
    ppo_epochs: int = 1          # ppo: passes over each rollout
    beta: float = 0.1            # dpo: β of the sigmoid loss; grpo: the KL coefficient
    group_size: int = 4          # grpo: answers per prompt (TRL's num_generations)
    reward_rule: str = "ends_with_period"   # grpo: the built-in rule (a function in TRL)
    lora: dict = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.05,
                                                "target_modules": None})

    def __post_init__(self):
        # each side's own default: LoRA dropout 0.05 in SFT; none in reward (TRL's
        # RewardTrainer switches dropout off, the engine's reward stage has none), PPO,
        # DPO (both sides train without dropout: disable_dropout=True in TRL, eval mode
        # in the engine) and GRPO
        if self.stage in ("reward", "ppo", "dpo", "grpo"):
            self.lora["dropout"] = 0.0
        if self.stage == "grpo":
            # B prompts × G answers a step; GRPO's usual β (the engine's and DeepSeekMath's)
            self.batch_size, self.beta = 4, 0.04

    @property
    def steps(self) -> int:
        return self.warmup + self.measured

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = self.steps
        return d


# -- reading sources -----------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def to_messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def parse_hh_transcript(text: str) -> list[dict]:
    """'\\n\\nHuman: … \\n\\nAssistant: …' → chat messages."""
    messages = []
    for chunk in text.split("\n\nHuman: ")[1:]:
        human, *assistant = chunk.split("\n\nAssistant: ")
        messages.append({"role": "user", "content": human.strip()})
        for a in assistant:
            messages.append({"role": "assistant", "content": a.strip()})
    return messages


def hh_pair(row: dict) -> dict | None:
    """An HH-RLHF row as {prompt (messages), chosen, rejected}; None if the two
    transcripts do not share every turn but the last answer."""
    chosen, rejected = parse_hh_transcript(row["chosen"]), parse_hh_transcript(row["rejected"])
    if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
        return None
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return None
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        return None
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return None
    return {"prompt": chosen[:-1], "chosen": chosen[-1]["content"],
            "rejected": rejected[-1]["content"]}


def asset_pairs() -> list[dict]:
    if not ASSET_PREFS.exists():
        return []
    out = []
    for r in read_jsonl(ASSET_PREFS):
        if all(k in r for k in ("prompt", "chosen", "rejected")) and \
                isinstance(r["chosen"], str) and isinstance(r["rejected"], str):
            out.append({"prompt": to_messages(r["prompt"]), "chosen": r["chosen"],
                        "rejected": r["rejected"]})
    return out


def asset_sft() -> list[dict]:
    if not ASSET_SFT.exists():
        return []
    out = []
    for r in read_jsonl(ASSET_SFT):
        response = r.get("response", r.get("completion"))
        if "prompt" in r and isinstance(response, str) and response:
            out.append({"prompt": to_messages(r["prompt"]), "response": response})
    return out


def hh_pairs() -> list[dict]:
    if not HH_TEST.exists():
        return []
    return [p for p in (hh_pair(r) for r in read_jsonl(HH_TEST)) if p]


# -- choosing rows that fit -----------------------------------------------------------------
# TRL's templating keeps the template's tokens after the end-of-turn ("\n"), the engine
# stops at it: keep a few tokens of room so that no row is cut or dropped on either side
FIT_MARGIN = 4


def _fits(tokenizer, prompt, response: str, max_length: int) -> int | None:
    """Token count of prompt + response through the chat template, None if it does not fit
    in max_length − FIT_MARGIN tokens."""
    from engine.inference.chat import encode_completion

    enc = encode_completion(tokenizer, prompt, response, max_length)
    if enc.truncated or len(enc.input_ids) > max_length - FIT_MARGIN:
        return None
    return len(enc.input_ids)


def _take(rows: list[dict], n: int) -> list[dict]:
    if not rows:
        raise RuntimeError("no benchmark rows fit in max_length: add assets or lower the "
                           "length (or give the HH-RLHF file in RLHF_LAB_SHARED/data)")
    return [rows[i % len(rows)] for i in range(n)]


def select_pairs(tokenizer, n: int, max_length: int) -> tuple[list[dict], str]:
    sources = [("assets/sample_preferences.jsonl", asset_pairs), ("hh-rlhf-harmless-test",
                                                                   hh_pairs)]
    return _select(sources, n, lambda r: (
        _fits(tokenizer, r["prompt"], r["chosen"], max_length) is not None
        and _fits(tokenizer, r["prompt"], r["rejected"], max_length) is not None))


def select_sft(tokenizer, n: int, max_length: int) -> tuple[list[dict], str]:
    def from_pairs():
        return [{"prompt": p["prompt"], "response": p["chosen"]} for p in hh_pairs()]

    sources = [("assets/sample_sft.jsonl", asset_sft), ("hh-rlhf-harmless-test (chosen)",
                                                        from_pairs)]
    return _select(sources, n, lambda r: _fits(tokenizer, r["prompt"], r["response"],
                                               max_length) is not None)


def _select(sources, n: int, fits) -> tuple[list[dict], str]:
    """Rows that fit, from the first source that has n of them; else all that fit, cycled."""
    kept_all, names = [], []
    for name, load in sources:
        kept = []
        for r in load():
            if fits(r):
                kept.append(r)
                if len(kept) >= n:
                    break
        if len(kept) >= n:
            return kept[:n], name
        if kept:
            kept_all += kept
            names.append(name)
    return _take(kept_all, n), " + ".join(names) + (" (cycled)" if len(kept_all) < n else "")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def build_data(tokenizer, folder: Path, rows: int, max_length: int,
               new_tokens: int) -> dict:
    """Write sft.jsonl, pairs.jsonl (+ pairs_eval.jsonl) and prompts.jsonl; return their
    paths, sources and token counts."""
    sft, sft_src = select_sft(tokenizer, rows, max_length)
    pairs, pairs_src = select_pairs(tokenizer, rows + 8, max_length)
    # PPO prompts: from the pairs, short enough that prompt + new tokens fit in max_length
    from engine.inference.chat import encode_prompt

    prompts = [{"prompt": p["prompt"]} for p in pairs
               if len(encode_prompt(tokenizer, p["prompt"])) + new_tokens <= max_length]
    prompts = _take(prompts, rows)
    from engine.inference.chat import encode_completion

    sft_tokens = sum(len(encode_completion(tokenizer, r["prompt"], r["response"],
                                           max_length).input_ids) for r in sft)
    pair_tokens = sum(len(encode_completion(tokenizer, r["prompt"], r[k], max_length).input_ids)
                      for r in pairs[:rows] for k in ("chosen", "rejected"))
    prompt_tokens = sum(len(encode_prompt(tokenizer, r["prompt"])) for r in prompts)
    return {
        "sft": str(write_jsonl(folder / "sft.jsonl", sft)),
        "pairs": str(write_jsonl(folder / "pairs.jsonl", pairs[:rows])),
        "pairs_eval": str(write_jsonl(folder / "pairs_eval.jsonl", pairs[rows:rows + 8])),
        "prompts": str(write_jsonl(folder / "prompts.jsonl", prompts)),
        "sources": {"sft": sft_src, "pairs": pairs_src, "prompts": pairs_src},
        "tokens": {"sft": sft_tokens, "pairs": pair_tokens, "prompts": prompt_tokens},
    }
