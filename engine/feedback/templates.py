"""The prompts the judge is given: editable templates with named placeholders.

    critique   {prompt} {response} {principle}             -> a critique of the answer
    revision   {prompt} {response} {principle} {critique}  -> a rewritten answer
    compare    {prompt} {response_a} {response_b} {principle} -> "A" or "B"

`check_template(kind, text)` refuses a template that lacks one of its kind's placeholders,
or names one its kind does not fill (ConfigError naming `<kind>_template` and the
placeholder), before a job starts. Literal braces are written {{ and }}.
"""
from __future__ import annotations

import hashlib
import json
import string

from engine.schema import ConfigError

DEFAULTS = {
    "critique": (
        "Here is a question and an answer.\n\n"
        "Question: {prompt}\n\n"
        "Answer: {response}\n\n"
        "Principle: {principle}\n\n"
        "Critique the answer against the principle: say in one or two sentences what is "
        "wrong with it or missing from it."),
    "revision": (
        "Here is a question, an answer and a critique of that answer.\n\n"
        "Question: {prompt}\n\n"
        "Answer: {response}\n\n"
        "Principle: {principle}\n\n"
        "Critique: {critique}\n\n"
        "Rewrite the answer so that it follows the principle and fixes what the critique "
        "says. Write only the new answer."),
    "compare": (
        "Which of the two answers to the question below is better according to the "
        "principle?\n\n"
        "Principle: {principle}\n\n"
        "Question: {prompt}\n\n"
        "Answer A: {response_a}\n\n"
        "Answer B: {response_b}\n\n"
        "Reply with one letter only: A or B."),
}

PLACEHOLDERS = {
    "critique": ("prompt", "response", "principle"),
    "revision": ("prompt", "response", "principle", "critique"),
    "compare": ("prompt", "response_a", "response_b", "principle"),
}


def placeholders_of(text: str) -> list[str]:
    """The named placeholders of a template, in order of first use (a ValueError for a
    malformed one: an unmatched brace, or a positional {} )."""
    names: list[str] = []
    for _, name, _, _ in string.Formatter().parse(text):
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError("a placeholder needs a name, e.g. {prompt}")
        base = name.split(".")[0].split("[")[0]
        if base not in names:
            names.append(base)
    return names


def check_template(kind: str, text: str) -> None:
    """Refuse a template that cannot be filled: ConfigError(f"{kind}_template", ...) naming
    the missing or unknown placeholder."""
    field = f"{kind}_template"
    if kind not in PLACEHOLDERS:
        raise ConfigError(field, f"unknown template kind {kind!r}")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(field, "the template is empty")
    try:
        used = placeholders_of(text)
    except ValueError as exc:
        raise ConfigError(field, f"malformed template: {exc}") from None
    for name in PLACEHOLDERS[kind]:
        if name not in used:
            raise ConfigError(field, f"missing placeholder {{{name}}}")
    for name in used:
        if name not in PLACEHOLDERS[kind]:
            raise ConfigError(field, f"unknown placeholder {{{name}}}; this template takes "
                              + ", ".join("{" + n + "}" for n in PLACEHOLDERS[kind]))


def fill(kind: str, text: str, **values: str) -> str:
    """The template with its placeholders filled (checked first)."""
    check_template(kind, text)
    return text.format(**{k: values[k] for k in PLACEHOLDERS[kind]})


def templates_hash(templates: dict[str, str]) -> str:
    """A short stable hash of the templates a job used (recorded in every pair's meta)."""
    blob = json.dumps(templates, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
