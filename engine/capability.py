"""What RLHF costs: capability retention, measured on short questions with known answers.

Every model of a comparison answers the same questions greedily (short answers, batched),
and each answer is scored against the question's references by a normalised match:

    An answer is correct when the normalised form of one of its references (the answer
    or an alias) appears as a whole-word span in the normalised FIRST SENTENCE of the
    answer: its first non-empty line, cut at the first ".", "!", "?" or ";" that is
    followed by a space or ends the line.

Normalising (`normalize`) lower-cases, maps œ/æ to oe/ae, strips accents, turns
punctuation (apostrophes and hyphens included) into spaces, writes the number words of
English and French as digits ("twenty-four", "vingt-quatre", "dix-huit", "vingt et un" ->
"24", "24", "18", "21"; English up to 99, French up to 69, "hundred"/"cent" and
"thousand"/"mille" alone), then drops the articles "the a an le la les l un une" (the
French elided l' too). So "The capital is Paris." matches "Paris", "vingt-cinq" matches
"25", while "Parisian" does not match "Paris" and "120" does not match "12" (whole words
only). A model that lists several candidates in its first sentence is credited (the
embedded model once answers 72 / 8 with "seven-two-three-four-five-six-seven-eight-nine");
greedy short answers rarely do that.

The shipped set (assets/capability_questions.jsonl, written for this project: capitals,
arithmetic, colours, simple science, EN and FR) is built so that no reference appears in
its own question: an answer that only repeats the question is never counted correct. An
SFT dataset can be the question set instead: its prompts are the questions and the first
sentence of each completion the reference, with the same matching (strict: the model must
say that whole sentence).

Accuracy per model carries a 95 % Wilson interval (engine.compare.wilson_interval); a model
differs from the base only when the intervals do not overlap (objectives.retention_verdict).
"""
from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

from engine.objectives import capability_accuracy, retention_verdict

SHIPPED = "shipped"
QUESTIONS_PATH = Path(__file__).resolve().parent.parent / "assets" / "capability_questions.jsonl"
LANGS = ("en", "fr")
# appended to each shipped question: the model input, not a page's text
INSTRUCTION = {"en": "Answer with one word or number.",
               "fr": "Réponds par un seul mot ou un nombre."}
ARTICLES = frozenset({"the", "a", "an", "le", "la", "les", "l", "un", "une"})

_UNITS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
          "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
          "eighteen": 18, "nineteen": 19,
          # French ("zéro" is "zero" once its accent goes; "un"/"une" are articles too,
          # so they count as 1 only after "et": "vingt et un")
          "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7,
          "huit": 8, "neuf": 9, "dix": 10, "onze": 11, "douze": 12, "treize": 13,
          "quatorze": 14, "quinze": 15, "seize": 16}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90, "vingt": 20, "trente": 30, "quarante": 40,
         "cinquante": 50, "soixante": 60}
_ALONE = {"hundred": 100, "cent": 100, "thousand": 1000, "mille": 1000}
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)")


def strip_accents(text: str) -> str:
    text = text.replace("œ", "oe").replace("æ", "ae").replace("Œ", "Oe").replace("Æ", "Ae")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _numbers(tokens: list[str]) -> list[str]:
    """Number words as digits: a tens word with a unit ("twenty four", "vingt et un"),
    "dix" with sept/huit/neuf, a unit, a tens word, hundred/thousand alone."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok in _TENS:
            value = _TENS[tok]
            if nxt in _UNITS and 1 <= _UNITS[nxt] <= 9:
                out.append(str(value + _UNITS[nxt]))
                i += 2
                continue
            if nxt in ("et", "and") and i + 2 < len(tokens) and tokens[i + 2] in ("un", "one"):
                out.append(str(value + 1))
                i += 3
                continue
            out.append(str(value))
        elif tok == "dix" and nxt in ("sept", "huit", "neuf"):
            out.append(str(10 + _UNITS[nxt]))
            i += 2
            continue
        elif tok in _UNITS:
            out.append(str(_UNITS[tok]))
        elif tok in _ALONE:
            out.append(str(_ALONE[tok]))
        else:
            out.append(tok)
        i += 1
    return out


def normalize(text: str) -> str:
    """Lower-case, no accents, punctuation as spaces, number words as digits, no articles
    (the rule of the module docstring); words joined by single spaces."""
    text = strip_accents(str(text).lower())
    text = re.sub(r"[\W_]+", " ", text)
    tokens = _numbers(text.split())
    return " ".join(t for t in tokens if t not in ARTICLES)


def first_sentence(text: str) -> str:
    """The first non-empty line of `text`, cut at its first sentence end (". ", "! ", "? ",
    "; " or one of those ending the line); a decimal point ("3.14") does not cut."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    match = _SENTENCE_END.search(line)
    return line[:match.start()] if match else line


def contains_span(haystack: str, needle: str) -> bool:
    """Whether the words of `needle` appear consecutively among the words of `haystack`."""
    words, target = haystack.split(), needle.split()
    if not target:
        return False
    n = len(target)
    return any(words[i:i + n] == target for i in range(len(words) - n + 1))


def is_correct(answer: str, references: list[str]) -> bool:
    """True when a normalised reference is a whole-word span of the normalised first
    sentence of the answer (module docstring). A reference that normalises to nothing
    (only an article, only punctuation) never matches."""
    head = normalize(first_sentence(answer))
    return any(contains_span(head, normalize(ref)) for ref in references)


# -- question sets ---------------------------------------------------------------------------
def load_questions(path: str | Path | None = None) -> list[dict]:
    """The shipped questions: [{id, lang, question, answer, aliases}], checked row by row
    (a bad row raises ValueError naming its line and field)."""
    path = Path(path) if path else QUESTIONS_PATH
    out, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {number}: not JSON ({exc.msg})") from None
        for name in ("id", "lang", "question", "answer"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise ValueError(f"{path.name} line {number}: field {name!r} is missing or empty")
        if row["lang"] not in LANGS:
            raise ValueError(f"{path.name} line {number}: lang {row['lang']!r} is not "
                             f"one of {LANGS}")
        if row["id"] in seen:
            raise ValueError(f"{path.name} line {number}: id {row['id']!r} is used twice")
        aliases = row.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip()
                                                    for a in aliases):
            raise ValueError(f"{path.name} line {number}: field 'aliases' must be a list of "
                             f"non-empty strings")
        seen.add(row["id"])
        out.append({"id": row["id"], "lang": row["lang"], "question": row["question"],
                    "answer": row["answer"], "aliases": aliases})
    return out


def shipped_questions(limit: int = 0) -> list[dict]:
    """The shipped set as questions to ask: prompt = question + the language's one-line
    instruction, references = answer + aliases. With limit > 0: the first ⌈limit/2⌉ English
    and the first ⌊limit/2⌋ French questions (both languages in a small run)."""
    rows = load_questions()
    if limit > 0:
        en = [r for r in rows if r["lang"] == "en"][:(limit + 1) // 2]
        fr = [r for r in rows if r["lang"] == "fr"][:limit // 2]
        rows = en + fr
    return [{"id": r["id"], "lang": r["lang"], "question": r["question"],
             "prompt": f"{r['question']}\n{INSTRUCTION[r['lang']]}",
             "references": [r["answer"], *r["aliases"]]} for r in rows]


def dataset_questions(store, dataset: str, split: str | None = None, limit: int = 0,
                      seed: int = 0) -> list[dict]:
    """An SFT dataset as a question set: each prompt a question, the first sentence of its
    completion the reference (same matching). limit > 0 draws that many rows (seeded)."""
    from engine.data.curation import iter_rows

    info = store.get_dataset(dataset)   # NotFound names the dataset
    if info["kind"] != "sft":
        raise ValueError(f"capability: dataset {dataset!r} is a {info['kind']} dataset; "
                         f"its questions need an SFT dataset (prompt and completion)")
    rows = [r for r in iter_rows(store, dataset, split)
            if normalize(first_sentence(r.get("response") or ""))]
    if not rows:
        where = f" in its {split} split" if split else ""
        raise ValueError(f"capability: dataset {dataset!r} has no row with a completion{where}")
    if 0 < limit < len(rows):
        picked = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in picked]
    return [{"id": f"{dataset}-{r.get('id', i)}", "lang": None,
             "question": r["prompt"] if isinstance(r["prompt"], str) else None,
             "prompt": r["prompt"], "references": [first_sentence(r["response"])]}
            for i, r in enumerate(rows)]


def questions_for(store, capability: str, split: str | None = None, limit: int = 0,
                  seed: int = 0) -> list[dict]:
    """The questions of a comparison's `capability` setting: "shipped" or an SFT dataset."""
    if capability == SHIPPED:
        return shipped_questions(limit)
    return dataset_questions(store, capability, split, limit, seed)


def answer_questions(model, tokenizer, questions: list[dict], max_new_tokens: int = 24,
                     batch_size: int = 16) -> list[str]:
    """Greedy answers (no sampling: the same model gives the same answers) to every question."""
    from engine.inference.generate import SamplingConfig, generate

    cfg = SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, seed=None,
                         batch_size=batch_size)
    return generate(model, tokenizer, [q["prompt"] for q in questions], cfg)


def score_rows(model: str, source: str, questions: list[dict], answers: list[str]) -> list[dict]:
    """One stored row per question: the answer and whether it matched."""
    return [{"model": model, "source": source, "question_id": q["id"], "lang": q.get("lang"),
             "prompt": q["prompt"], "references": q["references"], "answer": a,
             "correct": is_correct(a, q["references"])}
            for q, a in zip(questions, answers)]


# -- the numbers ------------------------------------------------------------------------------
def capability_summary(rows: list[dict]) -> list[dict]:
    """Per model, in the order met: n questions, correct, accuracy (capability_accuracy),
    its 95 % Wilson interval, and the same per language where the set has languages."""
    from engine.compare import wilson_interval

    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)

    def stats(items: list[dict]) -> dict:
        correct = [bool(r["correct"]) for r in items]
        low, high = wilson_interval(sum(correct), len(correct))
        return {"n": len(correct), "correct": sum(correct),
                "accuracy": capability_accuracy(correct), "low": low, "high": high}

    out = []
    for model, items in by_model.items():
        langs = sorted({r["lang"] for r in items if r.get("lang")})
        out.append({"model": model, **stats(items),
                    "by_lang": {lang: stats([r for r in items if r.get("lang") == lang])
                                for lang in langs}})
    return out


def retention_sentence(summary: list[dict], base: str = "base") -> dict | None:
    """The computed sentence, as {"key", "params"} (i18n key compare.cap_*): which models'
    accuracy lies below (or above) the base's beyond both 95 % intervals, or that none
    does. None without a base model or without another model."""
    by_model = {s["model"]: s for s in summary}
    if base not in by_model or len(by_model) < 2 or not by_model[base]["n"]:
        return None
    b = by_model[base]
    lower, higher = [], []
    for s in summary:
        if s["model"] == base or not s["n"]:
            continue
        verdict = retention_verdict(s["low"], s["high"], b["low"], b["high"])
        if verdict == "lower":
            lower.append(s["model"])
        elif verdict == "higher":
            higher.append(s["model"])
    params = {"base": f"{b['accuracy']:.0%}", "n": b["n"],
              "lower": ", ".join(lower), "higher": ", ".join(higher)}
    if lower and higher:
        return {"key": "compare.cap_lower_and_higher", "params": params}
    if lower:
        return {"key": "compare.cap_lower", "params": params}
    if higher:
        return {"key": "compare.cap_higher", "params": params}
    return {"key": "compare.cap_same", "params": params}
