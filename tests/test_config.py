"""TrainConfig: every training parameter declared once, checked where it is given."""

from __future__ import annotations

import dataclasses

import pytest

from fsfsl_utils import profiles
from fsfsl_utils.config import FIELDS, TrainConfig


def test_defaults_are_valid_and_the_dict_round_trips():
    cfg = TrainConfig()
    assert TrainConfig.from_dict(cfg.as_dict()) == cfg and tuple(cfg.as_dict()) == FIELDS
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1  # type: ignore[misc]
    assert cfg.replace(head_cs=[0.1]).head_cs == (0.1,)  # lists from JSON become tuples


@pytest.mark.parametrize("changes, message", [
    ({"weight_decay": -1}, "weight_decay must be a number in \\[0, 1\\]"),
    ({"crop_fraction": 0}, "crop_fraction must be a number in \\(0, 1\\]"),
    ({"lr_schedule": "linear"}, "lr_schedule must be 'step' or 'cosine'"),
    ({"train_aug": "mixup"}, "train_aug must be one of 'paper', 'flip', 'dihedral', 'none'"),
    ({"amp": 1}, "amp must be True or False"), ({"head_cs": []}, "head_cs must be a non-empty list"),
    ({"input_size": 16, "backbone": "resnet18"}, "too small for resnet18"),
    ({"epochs": True}, "epochs must be a number"),
])
def test_a_bad_value_fails_where_it_is_given_naming_the_parameter(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(changes)
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**changes)


def test_every_profile_resolves_to_a_checked_config():
    for name in profiles.PROFILES:
        resolved = profiles.resolve(name)
        assert isinstance(resolved["config"], TrainConfig)
        given = {k: v for k, v in profiles.PROFILES[name].items() if k not in profiles.RUN_KEYS}
        assert {k: getattr(resolved["config"], k) for k in given} == given or name == "paper"
    with pytest.raises(ValueError, match="unknown training parameter"):
        profiles.resolve("cpu", optimiser="sgd")
