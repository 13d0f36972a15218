"""The preference section: each bad value one UserError naming its field; β defaults per loss; the metrics."""

from __future__ import annotations

import pytest

from glmtune.core import config as config_mod
from glmtune.core.errors import UserError


def _cfg(**preference):
    return config_mod.from_dict({"task": "preference", "preference": preference}, "cfg.yaml")


@pytest.mark.parametrize(
    "values, field",
    [
        ({"loss": "orpo", "reference": "precomputed"}, "preference.reference"),
        ({"loss": "simpo", "reference": "adapter_off"}, "preference.reference"),
        ({"loss": "dpo", "reference": "model"}, "preference.reference"),
        ({"loss": "cpo"}, "preference.loss"),
        ({"label_smoothing": 0.5}, "preference.label_smoothing"),
        ({"loss": "kto", "label_smoothing": 0.1}, "preference.label_smoothing"),
        ({"beta": 0}, "preference.beta"),
        ({"desirable_weight": -1}, "preference.desirable_weight"),
    ],
)
def test_bad_preference_settings_name_their_field(values, field):
    with pytest.raises(UserError) as caught:
        _cfg(**values)
    assert f"field '{field}'" in str(caught.value) and "\n" not in str(caught.value)


def test_defaults_metric_and_beta_per_loss():
    cfg = _cfg()
    assert cfg.train.metric == "loss" and cfg.data.dataset == "chatterbot-zh-pairs"
    assert _cfg(loss="simpo").preference.strength == 2.0 and _cfg(loss="dpo").preference.strength == 0.1
    assert _cfg(loss="ipo", beta=0.5).preference.strength == 0.5
    with pytest.raises(UserError, match="train.metric"):
        config_mod.from_dict({"task": "preference", "train": {"metric": "perplexity"}}, "cfg.yaml")


def test_adapter_off_needs_a_peft_method():
    from glmtune.train.tasks.preference import Preference

    cfg = config_mod.from_dict(
        {"task": "preference", "method": {"name": "full"}, "preference": {"reference": "adapter_off"}},
        "cfg.yaml",
    )
    with pytest.raises(UserError) as caught:
        Preference(cfg)
    assert caught.value.field == "preference.reference"
