"""Programmatic rewards: a fixed menu of scoring rules, chosen by name with parameters.

They stand in for a learned reward model when a person wants to see PPO optimise
something legible (and watch it be gamed: a rule is the easiest reward to hack).
The menu is closed on purpose: a name and JSON-able parameters, never code.

Every reward maps (prompt, response) -> float, roughly in [-1, 1], and is exposed
through the same interface as a learned reward model's scorer:
`scorer.score(prompts, responses) -> list[float]`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.inference.chat import prompt_text

_WORD = re.compile(r"[\w'’-]+", re.UNICODE)

POLITENESS_MARKERS = (
    "please", "thank you", "thanks", "kindly", "happy to help", "glad to help",
    "you're welcome", "my pleasure", "merci", "s'il vous plaît", "s'il te plaît",
    "je vous en prie", "avec plaisir", "volontiers", "bien cordialement",
)
FRENCH_WORDS = frozenset(
    "le la les un une des du de et est sont pas ne je tu il elle nous vous ils elles "
    "que qui dans pour sur avec ce cette ces mais ou donc au aux son sa ses leur mon ma "
    "mes ton ta très plus bien être avoir fait comme tout aussi oui non merci bonjour "
    "quel quelle quels quelles où quand comment pourquoi combien à en se par c'est fois "
    "font écrit donne décris écris".split())
ENGLISH_WORDS = frozenset(
    "the an and is are not i you he she we they that which in for on with this these "
    "but or so to of his her their my your very more well be have do as all also yes no "
    "thanks hello it was were who what where when why how does did can should there at "
    "by from wrote describe write give name explain".split())


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def _contains(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive match of a word or phrase."""
    phrase = phrase.strip().lower()
    if not phrase:
        return False
    return re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", (text or "").lower()) is not None


# -- the rules (one function per rule, its formula in the docstring) ---------------------
def ends_with_period(prompt: str, response: str, mark: str = ".") -> float:
    """R = 1 if the response (stripped) ends with `mark` (a full stop), else 0."""
    return 1.0 if (response or "").strip().endswith(mark) else 0.0


def target_length(prompt: str, response: str, target: int = 12, unit: str = "words") -> float:
    """R = −|n − n*| / n*  with n the response length in `unit` (words or characters)
    and n* the target: 0 at the target, −1 at 0 or twice the target."""
    if unit not in ("words", "chars"):
        raise ValueError(f"target_length: unit {unit!r} is not 'words' or 'chars'")
    target = max(1, int(target))
    n = len(words(response)) if unit == "words" else len((response or "").strip())
    return -abs(n - target) / target


def contains_words(prompt: str, response: str, words: list[str] | str = ("please",)) -> float:
    """R = (number of the listed words present in the response) / (number listed)."""
    listed = _word_list(words)
    if not listed:
        return 0.0
    return sum(_contains(response, w) for w in listed) / len(listed)


def avoids_words(prompt: str, response: str, words: list[str] | str = ("sorry",)) -> float:
    """R = 1 − (number of the listed words present in the response) / (number listed)."""
    return 1.0 - contains_words(prompt, response, words)


def politeness(prompt: str, response: str, cap: int = 2) -> float:
    """R = min(c, cap) / cap  with c the number of politeness markers
    (please, thank you, merci, s'il vous plaît, ...) in the response."""
    cap = max(1, int(cap))
    count = sum(_contains(response, m) for m in POLITENESS_MARKERS)
    return min(count, cap) / cap


def language_fr(prompt: str, response: str) -> float:
    """R = (n_fr − n_en) / max(1, n_fr + n_en)  with n_fr, n_en the counts of common
    French and English function words in the response: +1 all French, −1 all English."""
    ws = words(response)
    n_fr = sum(w in FRENCH_WORDS for w in ws)
    n_en = sum(w in ENGLISH_WORDS for w in ws)
    return (n_fr - n_en) / max(1, n_fr + n_en)


def language_of(text: str) -> str | None:
    """'fr' or 'en': the language with more common function words in the text; None on a
    tie (no function word at all, or as many of each)."""
    ws = words(text)
    n_fr = sum(w in FRENCH_WORDS for w in ws)
    n_en = sum(w in ENGLISH_WORDS for w in ws)
    return "fr" if n_fr > n_en else "en" if n_en > n_fr else None


def same_language(prompt: str, response: str) -> float:
    """R = +1 if the response is in the prompt's language, −1 if in the other one, 0 when
    either cannot be told (language_of: more French or more English function words)."""
    asked, answered = language_of(prompt), language_of(response)
    if asked is None or answered is None:
        return 0.0
    return 1.0 if asked == answered else -1.0


def _word_list(value) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [str(w).strip() for w in value if str(w).strip()]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    fn: Callable[..., float]
    defaults: dict[str, Any] = field(default_factory=dict)


REWARDS: dict[str, RewardSpec] = {
    "ends_with_period": RewardSpec("ends_with_period", ends_with_period, {"mark": "."}),
    "target_length": RewardSpec("target_length", target_length, {"target": 12, "unit": "words"}),
    "contains_words": RewardSpec("contains_words", contains_words, {"words": ["please"]}),
    "avoids_words": RewardSpec("avoids_words", avoids_words, {"words": ["sorry"]}),
    "politeness": RewardSpec("politeness", politeness, {"cap": 2}),
    "language_fr": RewardSpec("language_fr", language_fr, {}),
    "same_language": RewardSpec("same_language", same_language, {}),
}
DEFAULT_REWARD = "ends_with_period"
# GRPO's default rules, summed: a complete sentence (ends with a full stop), about 12 words,
# in the question's language. Each alone is easy to game (a string of dots ends with a full
# stop); together the best-paid answer is a short complete answer a person can read, and
# a string of dots scores 1 − 1 + 0 = 0 against about 2 for such an answer.
DEFAULT_GROUP_REWARDS = ("ends_with_period", "target_length", "same_language")


def names() -> list[str]:
    return list(REWARDS)


def defaults(name: str) -> dict[str, Any]:
    return dict(_spec(name).defaults)


def _spec(name: str) -> RewardSpec:
    if name not in REWARDS:
        raise ValueError(f"built-in reward {name!r} is unknown; choose one of {names()}")
    return REWARDS[name]


def check_params(name: str, params: dict | None) -> dict[str, Any]:
    """The reward's parameters (defaults filled in); unknown names are an error."""
    spec = _spec(name)
    params = dict(params or {})
    unknown = set(params) - set(spec.defaults)
    if unknown:
        raise ValueError(f"built-in reward {name!r}: unknown parameter(s) {sorted(unknown)}; "
                         f"known: {sorted(spec.defaults)}")
    return {**spec.defaults, **params}


class BuiltinScorer:
    """A built-in reward with the reward-model scorer interface."""

    def __init__(self, name: str = DEFAULT_REWARD, params: dict | None = None):
        self.name = name
        self.params = check_params(name, params)
        self.fn = _spec(name).fn

    def score(self, prompts: list, responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError("score: prompts and responses differ in number")
        return [float(self.fn(prompt_text(p), r, **self.params))
                for p, r in zip(prompts, responses)]

    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({shown})"


def get_scorer(name: str = DEFAULT_REWARD, params: dict | None = None) -> BuiltinScorer:
    return BuiltinScorer(name, params)
