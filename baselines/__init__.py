"""The baselines: one file per method, and here one registry line per method (and per new recipe).

Adding a method = a new file in this folder that defines `METHOD = Method(...)` (and, if it
trains differently, its heads and recipe) + one `METHODS.add` line below. The suite finds this
package through the `de3bert.plugins` entry point (pyproject.toml); nothing in the core names it.
"""

from de3bert.registry import METHODS, RECIPES

METHODS.add("deebert", "baselines.deebert:METHOD")
METHODS.add("pabee", "baselines.pabee:METHOD")
METHODS.add("fixed-exit", "baselines.fixed_exit:METHOD")
METHODS.add("oracle", "baselines.oracle:METHOD")
METHODS.add("maxprob", "baselines.maxprob:METHOD")
METHODS.add("pcee", "baselines.pcee:METHOD")
METHODS.add("fastbert", "baselines.fastbert:METHOD")
METHODS.add("berxit", "baselines.berxit:METHOD")
METHODS.add("past-future", "baselines.past_future:METHOD")
for _k in (2, 3, 4):  # static BERT-kL, one model per k (baselines/static_kl.py: KS)
    METHODS.add(f"static-kl{_k}", f"baselines.static_kl:METHODS[static-kl{_k}]")

RECIPES.add("self-distill", "baselines.fastbert:SelfDistill")
RECIPES.add("alternate-lte", "baselines.berxit:AlternateLte")
RECIPES.add("past-future", "baselines.past_future:PastFuture")
for _k in (2, 3, 4):
    RECIPES.add(f"static-kl{_k}", f"baselines.static_kl:RECIPES[static-kl{_k}]")
