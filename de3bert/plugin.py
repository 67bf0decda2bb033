"""The core's registry lines: the reference recipes and DE³-BERT with its ablations.

Found through the `de3bert.plugins` entry point like any plugin package; each line is lazy
(`"module:attr"`), so listing methods imports no model code.
"""

from .registry import METHODS, RECIPES

RECIPES.add("single", "de3bert.recipes:Single")
RECIPES.add("weighted", "de3bert.recipes:Weighted")
RECIPES.add("two-stage", "de3bert.recipes:TwoStage")
RECIPES.add("de3", "de3bert.de3:De3")
RECIPES.add("de3-nodar", "de3bert.de3:De3NoDar")
RECIPES.add("de3-noproto", "de3bert.de3:De3NoProtonet")
RECIPES.add("de3-v1defaults", "de3bert.de3:De3V1Defaults")
RECIPES.add("de3-v2defaults", "de3bert.de3:De3V2Defaults")

METHODS.add("de3", "de3bert.de3:METHOD")
for _name in ("de3-entropy", "de3-dr", "de3-nodar", "de3-noproto", "de3-v1defaults", "de3-v2defaults",
              "de3-lambda0.25", "de3-lambda0.5", "de3-lambda2", "de3-lambda4"):
    METHODS.add(_name, f"de3bert.de3:ABLATIONS[{_name}]")
