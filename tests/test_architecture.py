"""The structure's promises: plugin registry, typed options, declared state shapes, the layer rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from de3bert.method import Method
from de3bert.model import build_model
from de3bert.policy import ExitPolicy, Knob
from de3bert.registry import METHODS, RECIPES, Registry, get_method, get_recipe

REPO = Path(__file__).resolve().parent.parent


def test_registry_entries_are_lazy_and_found_through_plugins():
    reg: Registry[str] = Registry("thing")
    reg.add("json-dumps", "json:dumps")
    import json

    assert reg.get("json-dumps") is json.dumps
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("json-dumps", "json:loads")
    # every baseline and the core's methods arrive through the entry points, in file order
    assert METHODS.names()[:3] == ["deebert", "pabee", "fixed-exit"] and "de3" in METHODS
    assert {"self-distill", "alternate-lte", "past-future", "de3", "weighted"} <= set(RECIPES.names())


def test_unknown_names_suggest_the_closest_valid_one():
    with pytest.raises(KeyError, match=r"'pabe'.*did you mean 'pabee'.*valid methods: deebert"):
        get_method("pabe")
    with pytest.raises(KeyError, match="did you mean 'two-stage'"):
        get_recipe("two-stag")


def test_recipe_options_are_typed_and_unknown_keys_fail():
    with pytest.raises(ValueError, match=r"unknown option 'betaa' \(did you mean 'beta'\?\)"):
        build_model("tiny-random", "de3", 2, "mean", betaa=0.5)
    with pytest.raises(ValueError, match="option distance='manhattan' is not one of: euclidean, cosine"):
        build_model("tiny-random", "de3", 2, "mean", distance="manhattan")
    with pytest.raises(ValueError, match="option proto_dim='8' must be int"):
        build_model("tiny-random", "de3", 2, "mean", proto_dim="8")
    with pytest.raises(ValueError, match="recipe single: unknown option 'beta'; valid options: none"):
        build_model("tiny-random", "single", 2, "mean", beta=1.0)
    model = build_model("tiny-random", "de3", 2, "mean", beta=0.5, proto_dim=8)
    assert model.meta["beta"] == 0.5 and model.meta["gamma"] == 0.1  # given, and the default


def test_policy_options_are_typed():
    pcee = get_method("pcee")
    with pytest.raises(ValueError, match=r"unknown option 'patiance' \(did you mean 'patience'\?\)"):
        Method("bad", "weighted", pcee.policy, "typo", {"patiance": 3})
    with pytest.raises(ValueError, match="option patience=2.5 must be int"):
        pcee.policy(2, 4, patience=2.5)
    assert pcee.make_policy(2, 4).opts.patience == 2


class _FlatStatePolicy(ExitPolicy):
    """A policy that (wrongly) keeps an [N] state: must fail in replay and live alike, clearly."""

    name = "flat-state"
    knob = Knob("t", 0.0, 1.0, "larger")
    state_keys = ("count",)

    def init_state(self, n, knobs):
        return {"count": torch.zeros(n)}

    def step(self, layer, signals, state, knobs):
        return torch.zeros(len(knobs), signals["logits"].shape[0], dtype=torch.bool)


def test_policy_state_shape_is_checked_in_one_place():
    record = {"logits": torch.zeros(3, 5, 2), "labels": torch.zeros(5, dtype=torch.long)}
    with pytest.raises(TypeError, match=r"state 'count' has shape \(5,\); every state tensor is \[K, N"):
        _FlatStatePolicy(2, 3).replay(record, [0.5])
    with pytest.raises(TypeError, match="state_keys declares"):
        type("Undeclared", (_FlatStatePolicy,), {"state_keys": ()})(2, 3).new_state(5, torch.ones(1))


def test_knob_direction_is_an_enum():
    assert Knob("x", 0, 1, "smaller").faster == "smaller"
    with pytest.raises(ValueError, match="faster='quicker'; valid: larger, smaller"):
        Knob("x", 0, 1, "quicker")


def test_ablations_are_declared_not_guessed_from_names():
    assert get_method("de3-nodar").ablation_of == "de3" and get_method("de3").ablation_of == ""
    assert all(get_method(n).family == "de3" for n in METHODS.names() if n.startswith("de3"))
    assert get_method("oracle").report_only and not get_method("deebert").ablation_of


@pytest.mark.parametrize("script", ["scripts/import_graph.py", "scripts/check_structure.py"])
def test_structure_checkers_pass(script):
    """No import cycle (lazy imports included) and the code-shape rules hold."""
    run = subprocess.run([sys.executable, str(REPO / script)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
