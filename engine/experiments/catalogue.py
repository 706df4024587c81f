"""The registered recipes, looked up by name.

Kept apart from engine.experiments.plan (which defines `Recipe` and `register`) so that
plan never imports the recipes module that imports it: recipes.py registers the course's
recipes at import, this module imports it and reads the registry.
"""
from __future__ import annotations

import engine.experiments.recipes  # noqa: F401  (registers the course's recipes)
from engine.experiments.plan import RECIPES, Recipe


def recipes() -> dict[str, Recipe]:
    """Every registered recipe: the course's and any a caller registered since."""
    return RECIPES


def get_recipe(name: str) -> Recipe:
    known = recipes()
    if name not in known:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    return known[name]
