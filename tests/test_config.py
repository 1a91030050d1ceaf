"""Configs: coercion of --set strings, declared ranges, search spaces, and the --set routing of `bench run`."""

import pytest
from ray import tune

from bench import config as C
from bench import registry
from bench.errors import BadInput
from bench.execution.run import split_assignments
from methods.bradley_terry import BradleyTerryConfig
from methods.failure_aware import FailureAwareConfig


def test_build_coerces_strings_to_field_types():
    cfg = C.build(FailureAwareConfig, {"lr": "0.003", "stages": "4", "train_base": "true", "head": "mlp"})
    assert (cfg.lr, cfg.stages, cfg.train_base, cfg.head) == (0.003, 4, True, "mlp")


@pytest.mark.parametrize("overrides, fragment", [
    ({"lr": "fast"}, "must be a number"),
    ({"lr": "5"}, "out of range"),
    ({"stages": "2.5"}, "whole number"),
    ({"head": "transformer"}, "choose one of: linear, mlp"),
    ({"train_base": "maybe"}, "true or false"),
    ({"nosuch": "1"}, "has no setting 'nosuch'"),
    ({"lr": "nan"}, "finite"),
])
def test_bad_values_name_the_fix(overrides, fragment):
    with pytest.raises(BadInput, match=fragment):
        C.build(FailureAwareConfig, overrides, owner="failure_aware")


def test_search_space_follows_declarations():
    space = C.search_space(FailureAwareConfig)
    assert isinstance(space["lr"], tune.search.sample.Float)
    assert space["lr"].lower == 1e-3 and space["lr"].upper == 0.1  # the declared search range, inside the valid one
    assert isinstance(space["stages"], tune.search.sample.Integer)
    assert isinstance(space["head"], tune.search.sample.Categorical)
    assert "patience" not in space  # declared tune=False
    for name, domain in space.items():  # every sampled value passes validation
        C.check_value(name, domain.sample(), {f.name: f for f in C.fields(FailureAwareConfig)}[name].metadata)


@pytest.mark.parametrize("item", ["lr", "=3", "lr=", " =1"])
def test_malformed_assignment(item):
    with pytest.raises(BadInput, match="malformed"):
        C.parse_assignments([item])


def test_set_routing():
    task = registry.get_task("synthetic")
    task_over, method_over = split_assignments(
        ["task.label_noise=0.1", "bradley_terry.temperature=1", "lr=0.02"], task, ["bradley_terry", "random"]
    )
    assert task_over == {"label_noise": "0.1"}
    assert method_over == {"bradley_terry": {"temperature": "1", "lr": "0.02"}, "random": {}}
    with pytest.raises(BadInput, match="no selected method has a setting"):
        split_assignments(["nosuch=1"], task, ["bradley_terry"])
    with pytest.raises(BadInput, match="neither 'task' nor a selected method"):
        split_assignments(["max_margin.lr=1"], task, ["bradley_terry"])


def test_defaults_are_valid_for_every_registered_config():
    for name, cls in registry.methods().items():
        C.build(cls.Config, owner=name)
    assert BradleyTerryConfig().temperature == 0.1  # the FA-IRL group's value
