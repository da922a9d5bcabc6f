"""Recipes: loading, composition, overrides and validation."""

from hvkit.recipe.load import apply_overrides, load_recipe
from hvkit.recipe.validate import validate

__all__ = ["apply_overrides", "load_recipe", "validate"]
