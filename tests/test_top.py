"""Training mode ``top`` (profile ``cpu-finetune``): the top blocks fine-tuned over cached activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsfsl_utils import data, features, models, profiles, train
from fsfsl_utils.config import TrainConfig
from fsfsl_utils.train import top

SIZE = 64  # small inputs keep these tests to seconds; the cut points are the same at 224 px


@pytest.fixture(scope="module")
def tiny():
    ds = data.load_elpv("study", limit_per_class=10, seed=0)
    return data.split(ds, seed=0)


def top_config(**kw) -> dict:
    return TrainConfig.from_dict({"mode": "top", "backbone": "efficientnet_lite0", "input_size": SIZE,
                               "trained_blocks": 1, "epochs": 2, "batch_size": 8, "train_aug": "flip",
                               "lr_schedule": "cosine", "device": "cpu", **kw})


@pytest.mark.parametrize("name, trained_blocks", [("efficientnet_lite0", 0), ("efficientnet_lite0", 1),
                                                  ("efficientnet_lite0", 4), ("resnet18", 2)])
def test_split_backbone_is_the_whole_network(name, trained_blocks):
    """upper(lower(x)) is the backbone's forward pass, operation for operation."""
    net = models.build_backbone(name, None).eval()
    x = models.preprocess(torch.from_numpy(data.load_elpv("study", limit_per_class=3).images), name, SIZE)
    lower, upper = models.split_backbone(net, name, trained_blocks)
    with torch.no_grad():
        np.testing.assert_array_equal(upper(lower(x)).numpy(), net(x).numpy())


def test_cached_path_logits_equal_the_full_network(tiny, cache_dir):
    """Validation through the cached float16 activations gives the full network's logits for the same
    weights. Tolerance: float16 keeps 11 significant bits, so activations carry a relative error up
    to 2^-11 (about 5e-4); through one block and the head the logits move by at most 0.1% of their
    spread (measured: 0.01% at 64 and 224 px), and the predicted classes are the same."""
    _, val = tiny
    cfg = top_config()
    torch.manual_seed(0)
    model = top.build(cfg, 2, torch.device("cpu")).eval()
    cached = top.predict_images(model, val.images, cfg)
    weights = models.resolve_weights("efficientnet_lite0", "imagenet")
    full_net = features.get_backbone("efficientnet_lite0", weights, torch.device("cpu"))
    with torch.no_grad():
        full = model.fc(full_net(models.preprocess(torch.from_numpy(val.images), "efficientnet_lite0", SIZE)))
    full = full.double().numpy()
    assert np.abs(cached - full).max() <= 1e-3 * (full.max() - full.min())
    assert (cached.argmax(1) == full.argmax(1)).all()
    # the second call reads the cache and gives the same numbers
    np.testing.assert_array_equal(top.predict_images(model, val.images, cfg), cached)


def test_top_fit_is_deterministic_and_seeded(tiny, cache_dir):
    train_part, val = tiny
    cfg = top_config()
    a = train.fit(train_part, val, cfg, seed=0, views=("vflip",), progress=False)
    b = train.fit(train_part, val, cfg, seed=0, views=("vflip",), progress=False)
    c = train.fit(train_part, val, cfg, seed=1, views=("vflip",), progress=False)
    assert a.mode == "top" and len(a.history) == 2 and set(a.view_logits) == {"vflip"}
    np.testing.assert_array_equal(a.val_logits, b.val_logits)     # bit for bit on a CPU
    np.testing.assert_array_equal(a.view_logits["vflip"], b.view_logits["vflip"])
    assert not np.array_equal(a.val_logits, c.val_logits)
    assert a.history[0]["lr"] == pytest.approx(cfg.lr) and a.history[1]["lr"] < cfg.lr  # cosine
    # the trained top moved away from the ImageNet weights; the shared frozen backbone did not
    weights = models.resolve_weights("efficientnet_lite0", "imagenet")
    backbone = features.get_backbone("efficientnet_lite0", weights, torch.device("cpu"))
    fresh_upper = models.split_backbone(backbone, "efficientnet_lite0", 1)[1]
    moved = [not torch.equal(p, q) for p, q in zip(a.model.upper.parameters(), fresh_upper.parameters())]
    assert any(moved) and not any(p.requires_grad for p in backbone.parameters())


def test_damaged_activation_entries_are_recomputed(tiny, cache_dir):
    """An entry of the wrong dtype or shape is repaired, not used."""
    _, val = tiny
    images = val.images[:4]
    first = features.activations(images, size=SIZE, trained_blocks=1, device="cpu", progress=False)
    assert first.dtype == np.float16 and first.ndim == 4
    entries = sorted(p for p in cache_dir.rglob("*.npy") if "below-block15" in str(p))
    assert len(entries) == 4
    keys = features.image_keys(images)
    by_key = {p.stem: p for p in entries}
    np.save(by_key[keys[0]], first[0].astype(np.float32))         # wrong dtype
    np.save(by_key[keys[1]], first[1][:, :1])                      # wrong shape
    again = features.activations(images, size=SIZE, trained_blocks=1, device="cpu", progress=False)
    np.testing.assert_array_equal(again, first)
    assert np.load(by_key[keys[0]]).dtype == np.float16 and np.load(by_key[keys[1]]).shape == first[1].shape


@pytest.mark.parametrize("backbone, blocks, message", [
    ("efficientnet_lite0", 16, r"trained_blocks must be a whole number in \[0, 15\] for efficientnet_lite0"),
    ("efficientnet_lite0", -1, r"\[0, 15\]"),
    ("efficientnet_lite0", 1.5, r"got 1.5"),
    ("resnet18", 8, r"\[0, 7\] for resnet18 \(it has 8 blocks\)"),
])
def test_an_impossible_cut_point_is_refused(backbone, blocks, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({"mode": "top", "backbone": backbone, "trained_blocks": blocks, "train_aug": "flip"})


def test_top_mode_refuses_crops_and_unknown_schedules():
    with pytest.raises(ValueError, match="train_aug 'paper'.*cached activations"):
        TrainConfig.from_dict({"mode": "top", "train_aug": "paper"})
    with pytest.raises(ValueError, match="lr_schedule must be 'step' or 'cosine'"):
        TrainConfig.from_dict({"mode": "top", "train_aug": "flip", "lr_schedule": "linear"})


def test_cpu_finetune_profile_trains_the_top_block():
    resolved = profiles.resolve("cpu-finetune")
    cfg = TrainConfig.from_dict(resolved["config"])
    assert cfg.mode == "top" and cfg.trained_blocks >= 1 and cfg.train_aug == "flip"
    assert resolved["seeds"] == 5 and "cpu-finetune" in profiles.PROFILE_NAMES
