"""Models and the feature cache: offline weights, clear errors, cache reuse and repair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from fsfsl_utils import features, models


def test_lite0_weights_really_load():
    path = models.resolve_weights("efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = models.build_backbone("efficientnet_lite0")
    assert torch.equal(net.net._conv_stem.weight, state["_conv_stem.weight"])
    random = models.build_backbone("efficientnet_lite0", weights=None)
    assert not torch.equal(random.net._conv_stem.weight, state["_conv_stem.weight"])


def test_pretrained_features_separate_classes_better_than_random(small, cache_dir):
    train, val = small
    imgs = np.concatenate([train.images, val.images])
    y = np.concatenate([train.labels, val.labels])

    def score(weights):
        x = features.extract(imgs, size=96, weights=weights, progress=False)
        clf = LogisticRegression(max_iter=3000, C=0.1)
        return cross_val_score(clf, x, y, cv=5, scoring="roc_auc").mean()

    pretrained, random = score("imagenet"), score(None)
    assert pretrained > 0.8 and pretrained > random + 0.05, (pretrained, random)


def test_resnet_without_local_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(models.WeightsNotFoundError, match="resnet50-0676ba61.pth.*hub/checkpoints.*never downloads"):
        models.build_classifier("resnet50", 2)
    assert not models.weights_available("resnet18")
    net = models.build_classifier("resnet18", 3, weights=None)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    # a file in the hub folder is found
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(models.build_backbone("resnet18", None).state_dict() | {"fc.weight": torch.zeros(1000, 512),
                                                                      "fc.bias": torch.zeros(1000)},
               tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert models.weights_available("resnet18")


def test_unknown_backbone_lists_valid():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*efficientnet_lite0, resnet50, resnet18"):
        models.build_classifier("vgg", 2)


def test_preprocess_gray_is_replicated_and_normalised():
    x = torch.full((2, 30, 40), 255, dtype=torch.uint8)
    out = models.preprocess(x, 16)
    assert out.shape == (2, 3, 16, 16)
    expect = (1 - torch.tensor(models.IMAGENET_MEAN)) / torch.tensor(models.IMAGENET_STD)
    assert torch.allclose(out[0, :, 5, 5], expect, atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    boxes, flips = models.draw_crops(2, 30, 40, gen)
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 40) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 30)).all()
    ramp = torch.arange(40, dtype=torch.uint8).mul(6).expand(2, 30, 40).contiguous()  # left-right ramp
    same = models.apply_crops(ramp, boxes, torch.tensor([False, False]), 16)
    mirrored = models.apply_crops(ramp, boxes, torch.tensor([True, False]), 16)
    assert same.shape == (2, 3, 16, 16) and torch.equal(mirrored[1], same[1])
    assert torch.equal(mirrored[0], same[0].flip(-1)) and not torch.equal(mirrored[0], same[0])


def test_feature_cache_reuses_and_repairs(small, cache_dir):
    imgs = small[0].images[:6]
    first = features.extract(imgs, size=64, progress=False)
    files = sorted(cache_dir.rglob("*.npy"))
    assert len(files) == 6
    files[0].write_bytes(b"garbage")                       # corrupt entry
    np.save(files[1], np.zeros(3, np.float32))             # stale shape
    again = features.extract(imgs, size=64, progress=False)
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-5)
    assert np.load(files[0]).shape == (1280,)
    other = features.extract(imgs, size=96, progress=False)  # another size is another cache
    assert not np.allclose(other, first)
    assert len(list(cache_dir.rglob("*.npy"))) == 12


def test_lite0_padding_fold_keeps_outputs():
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    plain = EfficientNet.from_name("efficientnet-lite0", num_classes=10).eval()
    folded = EfficientNet.from_name("efficientnet-lite0", num_classes=10).eval()
    folded.load_state_dict(plain.state_dict())
    assert models._fold_symmetric_padding(folded) == 12
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), folded(x))


def test_gray_images_are_resized_once_and_match_their_rgb_copies():
    """A gray image is cropped and resized on one channel, then shown to the network as three:
    the same numbers as resizing the three identical channels of its RGB copy."""
    gen = torch.Generator().manual_seed(3)
    gray = torch.randint(0, 256, (6, 300, 300), dtype=torch.uint8, generator=gen)
    rgb = gray.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    for size, crop in ((224, 1.0), (224, 224 / 256), (64, 0.9)):
        assert torch.equal(models.preprocess(gray, size, crop), models.preprocess(rgb, size, crop))
    boxes, flips = models.draw_crops(6, 300, 300, gen)
    out = models.apply_crops(gray, boxes, flips, 128)
    assert out.shape == (6, 3, 128, 128) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, models.apply_crops(rgb, boxes, flips, 128))
