"""Profiles: plain data, auto resolution, the paper profile's offline fallback, overrides."""

from __future__ import annotations

import pytest
import torch

from fsfsl_utils import models, profiles


def test_auto_is_cpu_probe_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = profiles.resolve("auto")
    assert r["profile"] == "cpu" and r["config"].mode == "probe" and r["seeds"] == 5
    assert "no CUDA" in r["notes"][0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.resolve("auto")["profile"] == "paper"


def test_paper_falls_back_to_lite0_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    r = profiles.resolve("paper")
    assert r["config"].backbone == "efficientnet_lite0"
    assert any("ResNet50 ImageNet weights are not on this machine" in n for n in r["notes"])
    assert (r["config"].epochs, r["config"].batch_size, r["config"].lr, r["config"].lr_step) == \
        (50, 16, 1e-3, 30)
    # with the weights file in the hub folder, ResNet50 is used
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert models.weights_available("resnet50")
    assert profiles.resolve("paper")["config"].backbone == "resnet50"


def test_overrides_and_errors():
    r = profiles.resolve("cpu", backbone="resnet18", input_size=None, seeds=2)
    assert r["config"].backbone == "resnet18" and r["config"].input_size == 224 and r["seeds"] == 2
    assert "resnet18" in profiles.describe(r)
    with pytest.raises(ValueError, match="unknown profile 'gpu'; valid: auto, cpu, cpu-finetune, paper, cpu-strong, "
                                         "gpu-strong, smoke"):
        profiles.resolve("gpu")
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        profiles.resolve("cpu", backbone="vgg")
