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
  When the two orders disagree the pair is dropped or kept as a tie (`order_disagreement`).

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

from engine.feedback import templates as tpl
from engine.feedback.constitutions import DEFAULT as DEFAULT_CONSTITUTION
from engine.schema import ADVANCED, ConfigError, SamplingSettings, StageConfig, like, setting

MODES = ("critique", "compare")
DISAGREEMENT = ("drop", "tie")
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
    order_disagreement: str = setting("drop", choices=DISAGREEMENT)
    judge_max_new_tokens: int = setting(96, min=1, max=4096, group=ADVANCED)
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
        if self.mode == "critique" and self.dataset.strip() == self.prompts.strip():
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
