"""Recipes: a backbone, a head, a freezing schedule, augmentation and callbacks, trained and evaluated.

Example:
>>> from tlkeras import recipes
>>> result = recipes.train(recipes.load_recipe("recipes/fashion_mnist_lite0.yaml"))
>>> result.metrics["accuracy"], result.run_dir
"""

from tlkeras.recipes.config import Recipe, load_recipe, parse_recipe
from tlkeras.recipes.evaluate import evaluate_run
from tlkeras.recipes.trainer import RunResult, Trainer, train

__all__ = ["Recipe", "RunResult", "Trainer", "evaluate_run", "load_recipe", "parse_recipe", "train"]
