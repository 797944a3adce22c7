"""The typed config: its defaults and the values it refuses when loaded."""

from __future__ import annotations

import pytest

from brainseg.config import load_config
from brainseg.errors import BrainsegError


def test_max_nonfinite_steps_is_checked():
    with pytest.raises(BrainsegError, match="train.max_nonfinite_steps: must be at least 1"):
        load_config(None, ["train.max_nonfinite_steps=0"])
    assert load_config().train.max_nonfinite_steps == 10


def test_config_has_the_new_augmentations():
    cfg = load_config(None, ["augment.p_lowres=0.5", "augment.background_noise_std=[0.1, 0.2]"])
    assert cfg.augment.p_lowres == 0.5 and cfg.augment.background_noise_std == [0.1, 0.2]


def test_innermost_volume_must_not_be_negative():
    with pytest.raises(BrainsegError, match="innermost_min_mm3"):
        load_config(overrides=["postprocess.innermost_min_mm3=-5"])
