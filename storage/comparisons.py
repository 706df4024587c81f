"""Comparisons, their answers and capability answers, and blind votes."""
from __future__ import annotations

from typing import Iterable

from storage.base import (NotFound, _dumps, _loads, _now, split_prompt)


class ComparisonTables:
    """Comparisons, their answers and capability answers, and blind votes.

    A part of storage.db.Store: it reads and writes through the Store's row helpers
    (_select, _insert, _set, _write) and connection."""

    # -- comparisons and votes -----------------------------------------------------
    def create_comparison(self, name: str, config: dict, run_id: int | None = None) -> int:
        with self._write():
            return self._insert("comparisons", {"name": name, "config": _dumps(config),
                                                "run_id": run_id, "created": _now()})

    def list_comparisons(self) -> list[dict]:
        out = []
        for r in self._select("comparisons", order_by="id DESC"):
            r["config"] = _loads(r["config"], {})
            out.append(r)
        return out

    def get_comparison(self, comparison_id: int) -> dict:
        rows = self._select("comparisons", "id = ?", [int(comparison_id)])
        if not rows:
            raise NotFound(f"comparison {comparison_id} does not exist")
        row = rows[0]
        row["config"] = _loads(row["config"], {})
        return row

    def add_comparison_outputs(self, comparison_id: int, rows: Iterable[dict]) -> None:
        recs = []
        for r in rows:
            r = dict(r)
            recs.append({"comparison_id": int(comparison_id),
                         "prompt_index": int(r.pop("prompt_index")),
                         "prompt": split_prompt(r.pop("prompt"))[0],
                         "model": r.pop("model"), "response": r.pop("response"),
                         "reward": r.pop("reward", None), "kl": r.pop("kl", None),
                         "length": r.pop("length", None), "extra": _dumps(r)})
        with self._write():
            self._insert_all("comparison_outputs", recs)

    def get_comparison_outputs(self, comparison_id: int) -> list[dict]:
        rows = []
        for r in self._select("comparison_outputs", "comparison_id = ?", [int(comparison_id)],
                              order_by="prompt_index, id"):
            r["extra"] = _loads(r["extra"], {})
            rows.append(r)
        return rows

    def add_capability_answers(self, comparison_id: int, rows: Iterable[dict]) -> None:
        """Rows {model, source, question_id, lang, prompt, references, answer, correct}."""
        recs = [{"comparison_id": int(comparison_id), "model": r["model"],
                 "source": str(r.get("source") or ""), "question_id": str(r["question_id"]),
                 "lang": r.get("lang"), "prompt": split_prompt(r["prompt"])[0],
                 "refs": _dumps(list(r["references"])), "answer": r["answer"],
                 "correct": int(bool(r["correct"]))} for r in rows]
        with self._write():
            self._insert_all("capability_answers", recs)

    def get_capability_answers(self, comparison_id: int) -> list[dict]:
        rows = []
        for r in self._select("capability_answers", "comparison_id = ?", [int(comparison_id)],
                              order_by="id"):
            r["references"] = _loads(r.pop("refs"), [])
            r["correct"] = bool(r["correct"])
            rows.append(r)
        return rows

    def add_vote(self, prompt: str, model_a: str, model_b: str, response_a: str,
                 response_b: str, choice: str, reward_a: float | None = None,
                 reward_b: float | None = None, comparison_id: int | None = None) -> int:
        if choice not in ("a", "b", "tie", "both_bad"):
            raise ValueError(f"vote choice {choice!r} is not a, b, tie or both_bad")
        with self._write():
            return self._insert("votes", {
                "comparison_id": comparison_id, "prompt": prompt, "model_a": model_a,
                "model_b": model_b, "response_a": response_a, "response_b": response_b,
                "choice": choice, "reward_a": reward_a, "reward_b": reward_b,
                "created": _now()})

    def list_votes(self, comparison_id: int | None = None) -> list[dict]:
        if comparison_id is None:
            return self._select("votes", order_by="id")
        return self._select("votes", "comparison_id = ?", [int(comparison_id)], order_by="id")
