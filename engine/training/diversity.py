"""The diversity of a step's answers (the course's over-specialisation): distinct-1 and
distinct-2 (engine.compare.distinct_n, corpus level) and their self-similarity, the mean
pairwise Jaccard similarity of the answers' word-bigram sets (objectives.self_similarity).

The bigrams of an answer are taken over its words framed by a start and an end mark,
("<s>", w_1), (w_1, w_2), …, (w_m, "</s>"), so one-word answers have bigrams too:
"Yes" and "No" share none (similarity 0), two identical answers have similarity 1.
"""
from __future__ import annotations

from engine.compare import distinct_n, ngrams, words
from engine.objectives import self_similarity


def framed_bigrams(text: str) -> set[tuple[str, str]]:
    """S = {(w_t, w_{t+1})} over <s> w_1 … w_m </s> (lower-cased words, engine.compare.words)."""
    return set(ngrams(["<s>", *words(text), "</s>"], 2))


def answers_self_similarity(texts: list[str]) -> float:
    """sim = mean_{i<j} |S_i ∩ S_j| / |S_i ∪ S_j| over the answers' framed bigram sets."""
    return self_similarity([framed_bigrams(t) for t in texts])


def diversity(texts: list[str]) -> dict[str, float]:
    """distinct-1, distinct-2 and self-similarity of a set of answers."""
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "self_similarity": answers_self_similarity(texts)}
