"""Training recipes: small objects that own what differs between recipes (transforms, sampler, model
build, ``losses(batch)``, ``after_step()``, which network is evaluated and exported). The engine
(:mod:`vreid.train.engine`) knows none of them by name; a third recipe is a new class in
:data:`RECIPES`.
"""

from __future__ import annotations

from vreid.train.recipes.base import Recipe
from vreid.train.recipes.ssbver import SSBVERBaselineRecipe, SSBVERRecipe
from vreid.train.recipes.vehiclenet import VehicleNetRecipe

RECIPES: dict[str, type[Recipe]] = {
    "vehiclenet": VehicleNetRecipe,
    "ssbver": SSBVERRecipe,
    "ssbver_baseline": SSBVERBaselineRecipe,
}


def recipe_class(name: str) -> type[Recipe]:
    from vreid.errors import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"recipe: unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


__all__ = ["RECIPES", "Recipe", "SSBVERBaselineRecipe", "SSBVERRecipe", "VehicleNetRecipe", "recipe_class"]
