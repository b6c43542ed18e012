"""Torch side: shared building blocks (ResNet, necks, view transforms, PointPillars, CenterHead) under checkpoint key
names, and one module per architecture (the recipe's `architecture` names it): the model, the wrappers of the graphs
it exports, parity inputs and references, and the forward pass a synthetic checkpoint measures its BatchNorm with."""
from __future__ import annotations

import importlib


def architecture(recipe):
    """`bevport.models.<architecture>` of the recipe."""
    return importlib.import_module(f"bevport.models.{recipe.architecture}")
