"""Judges: who critiques, revises and compares answers.

`engine.feedback.jobs.make_judge` gives one of:

- `LocalJudge`: a model the lab loads itself (the embedded one, a local Hugging Face
  folder, a hub id, or a finished run's adapter on its base). It *writes* critiques and
  revisions through the model's chat template (greedy, or sampled at judge_temperature),
  and it *compares* by scoring, not by parsing free text: after the filled comparison
  prompt and the assistant header, the next-token log-probabilities of "A" and "B"
  (each letter's tokens with and without a leading space, log-sum-exp'ed) give
  P(A) = σ(s_A − s_B), a label and a confidence in one forward pass, even from a 135M
  model that writes nothing parsable.
- `EndpointJudge`: an OpenAI-compatible chat endpoint (engine.feedback.endpoint). It writes
  with the endpoint's answers, and compares by parsing the answer leniently
  (`parse_choice`: "A", "B.", "Response A", "**B**", "Answer B is better", ...); an answer
  that names neither or both letters is reported for that row, never guessed.

Both return, per item, either the result or a `JudgeError` (kept in the job's report;
the row is skipped, nothing else is lost).
"""
from __future__ import annotations

import re
from typing import Any

from engine.feedback.endpoint import Endpoint, EndpointError


class JudgeError(RuntimeError):
    """The judge gave nothing usable for one row (the reason is the message)."""


# -- parsing a free-text choice ------------------------------------------------------------
_NAMED = re.compile(r"\b(?:response|answer|option|reply|candidate|réponse)\s*\(?([AB])\)?"
                    r"(?![A-Za-z])", re.IGNORECASE)
# a capital A or B standing for an answer; "A" followed by a lower-case word is the
# English article ("A good answer ...") unless that word says something about it
_LETTER = re.compile(r"(?<![A-Za-z])(B(?![A-Za-z])|A(?=$|[^\w\s]|\s+(?:is|was|seems|"
                     r"because|follows|fits|wins|answers|est|car|respecte|suit|and|or|et|ou)\b"
                     r"|\s+[A-Z]|\s*\n))")
_BOTH = re.compile(r"^\W*(?:both\s+)?[AB]\s+(?:and|or|&|nor|vs\.?|et|ou)\s+[AB](?![A-Za-z])",
                   re.IGNORECASE)
_DECOR = re.compile(r"^[\s\"'*_`#>(\[]*")


def parse_choice(text: str) -> str | None:
    """"A" or "B" from a judge's free-text answer, or None when it names neither or both.

    In order: the answer starts with the letter ("A", "B.", "**A**", "(B) because ...",
    "A is better"); it names exactly one ("Response A", "answer B is better", "Réponse A");
    exactly one letter stands alone in it ("I prefer B"). The article in "A good answer"
    is not the letter A."""
    if not isinstance(text, str) or not text.strip():
        return None
    body = text.strip()
    if body.strip("*_`'\"()[]. :").upper() in ("A", "B"):
        return body.strip("*_`'\"()[]. :").upper()
    if _BOTH.match(body):
        return None
    lead = _LETTER.match(body, _DECOR.match(body).end())
    if lead:
        return lead.group(1)
    named = {m.group(1).upper() for m in _NAMED.finditer(body)}
    if named:
        return named.pop() if len(named) == 1 else None
    lone = set(_LETTER.findall(body))
    return lone.pop() if len(lone) == 1 else None


# -- judges --------------------------------------------------------------------------------
class Judge:
    label: str = ""
    kind: str = ""

    def write(self, prompts: list[str], max_new_tokens: int) -> list[str | JudgeError]:
        raise NotImplementedError

    def prefer_a(self, prompts: list[str]) -> list[float | JudgeError]:
        """P(answer A is the better one) for each filled comparison prompt."""
        raise NotImplementedError

    def stats(self) -> dict:
        return {}


class LocalJudge(Judge):
    """A model loaded by the lab (see the module docstring)."""
    kind = "local"

    def __init__(self, model, tokenizer, label: str, max_prompt_length: int | None = None,
                 temperature: float = 0.0, seed: int = 0):
        self.model, self.tokenizer, self.label = model, tokenizer, label
        self.temperature, self.seed, self._calls = temperature, seed, 0
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_prompt_length = max_prompt_length or limit
        self._letters = {letter: _letter_ids(tokenizer, letter) for letter in ("A", "B")}

    def write(self, prompts: list[str], max_new_tokens: int) -> list[str | JudgeError]:
        from engine.inference.generate import SamplingConfig, generate

        limit = max(16, self.max_prompt_length - max_new_tokens)
        self._calls += 1
        cfg = SamplingConfig(greedy=self.temperature <= 0,
                             temperature=max(self.temperature, 0.01), top_p=1.0,
                             max_new_tokens=max_new_tokens,
                             seed=self.seed + self._calls, batch_size=max(1, len(prompts)),
                             max_prompt_length=limit)
        out = []
        for text in generate(self.model, self.tokenizer, prompts, cfg):
            out.append(text if text.strip() else JudgeError("the judge wrote nothing"))
        return out

    def prefer_a(self, prompts: list[str]) -> list[float | JudgeError]:
        import torch

        from engine.inference.chat import encode_prompt

        device = next(self.model.parameters()).device
        out: list[float | JudgeError] = []
        with torch.no_grad():
            for prompt in prompts:  # one at a time: no padding shifts the positions
                ids = encode_prompt(self.tokenizer, prompt, self.max_prompt_length - 1)
                logits = _last_logits(self.model, torch.tensor([ids], device=device))
                logp = torch.log_softmax(logits, -1)
                score = {k: torch.logsumexp(logp[v], 0) for k, v in self._letters.items()}
                p_a = torch.sigmoid(score["A"] - score["B"]).item()
                out.append(float(p_a))
        return out


def _last_logits(model, input_ids):
    """The next-token logits after the last position (the LM head on that position only,
    where the model supports `logits_to_keep`)."""
    try:
        out = model(input_ids, logits_to_keep=1)
    except TypeError:
        out = model(input_ids)
    return out.logits[0, -1].float()


def _letter_ids(tokenizer, letter: str) -> list[int]:
    """The first token of `letter` and of " letter" (what a model may write first)."""
    ids = set()
    for text in (letter, " " + letter):
        toks = tokenizer.encode(text, add_special_tokens=False)
        if toks:
            ids.add(toks[0])
    return sorted(ids)


class EndpointJudge(Judge):
    """An OpenAI-compatible chat endpoint as the judge."""
    kind = "endpoint"

    def __init__(self, endpoint: Endpoint, compare_max_tokens: int = 8):
        self.endpoint = endpoint
        self.label = endpoint.label
        self.compare_max_tokens = compare_max_tokens

    def _ask(self, prompt: str, max_tokens: int) -> str:
        return self.endpoint.chat(prompt, max_tokens)

    def write(self, prompts: list[str], max_new_tokens: int) -> list[str | JudgeError]:
        answers = self.endpoint.map(lambda p: self._ask(p, max_new_tokens), prompts)
        out = []
        for a in answers:
            if isinstance(a, EndpointError):
                out.append(JudgeError(str(a)))
            elif not a.strip():
                out.append(JudgeError("the judge endpoint answered with empty text"))
            else:
                out.append(a.strip())
        return out

    def prefer_a(self, prompts: list[str]) -> list[float | JudgeError]:
        answers = self.endpoint.map(lambda p: self._ask(p, self.compare_max_tokens), prompts)
        out: list[float | JudgeError] = []
        for a in answers:
            if isinstance(a, EndpointError):
                out.append(JudgeError(str(a)))
                continue
            letter = parse_choice(a)
            if letter is None:
                out.append(JudgeError(f"unparsable judge answer (expected A or B): {a[:80]!r}"))
            else:
                out.append(1.0 if letter == "A" else 0.0)
        return out

    def stats(self) -> dict:
        return dict(self.endpoint.stats)


def errors_in(values: list[Any]) -> list[JudgeError]:
    return [v for v in values if isinstance(v, JudgeError)]
