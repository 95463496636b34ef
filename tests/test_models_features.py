"""Models and the feature cache: offline weights, clear errors, cache reuse and repair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from fsfsl_utils import augment, features, models


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
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*efficientnet_lite0, efficientnet_lite2, resnet50, "
                                         "resnet18"):
        models.build_classifier("vgg", 2)


def test_preprocess_gray_is_replicated_and_normalised_per_backbone():
    x = torch.full((2, 30, 40), 255, dtype=torch.uint8)
    out = models.preprocess(x, "resnet18", 16)
    assert out.shape == (2, 3, 16, 16)
    expect = (1 - torch.tensor(models.IMAGENET_MEAN)) / torch.tensor(models.IMAGENET_STD)
    assert torch.allclose(out[0, :, 5, 5], expect, atol=1e-5)
    # the TF-converted EfficientNet-Lite weights take (x - 127) / 128 on 0-255 input
    ramp = torch.tensor([[[0, 127, 255]]], dtype=torch.uint8)
    lite = models.normalise(models.unit_images(ramp), "efficientnet_lite0")
    assert torch.allclose(lite[0, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    boxes, flips = augment.draw_crops(2, 30, 40, gen)
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 40) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 30)).all()
    ramp = torch.arange(40, dtype=torch.uint8).mul(6).expand(2, 30, 40).contiguous()  # left-right ramp
    same = augment.apply_crops(ramp, boxes, torch.tensor([False, False]), 16, "resnet18")
    mirrored = augment.apply_crops(ramp, boxes, torch.tensor([True, False]), 16, "resnet18")
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
    assert models.fold_symmetric_padding(folded) == 12
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
        assert torch.equal(models.preprocess(gray, "efficientnet_lite0", size, crop),
                           models.preprocess(rgb, "efficientnet_lite0", size, crop))
    boxes, flips = augment.draw_crops(6, 300, 300, gen)
    out = augment.apply_crops(gray, boxes, flips, 128, "efficientnet_lite0")
    assert out.shape == (6, 3, 128, 128) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, augment.apply_crops(rgb, boxes, flips, 128, "efficientnet_lite0"))


def _stem_statistics(name: str, images: np.ndarray, mean=None, std=None) -> tuple[float, float]:
    """(summed batch variance / summed running variance of the stem's batch norm input, share of stem
    activations at or above 6 after that batch norm) for ELPV images at 224 px."""
    net = models.build_backbone(name)
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = {}
    bn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    spec = models.get_spec(name)
    if mean is not None:
        spec = models.BackboneSpec(spec.name, spec.feature_dim, spec.build, spec.flops_224, mean=mean, std=std)
    x = models.unit_images(torch.from_numpy(images))
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        net(models.normalise_with(models.as_rgb(x), spec))
    ratio = float(seen["inp"].var(dim=(0, 2, 3)).sum() / bn.running_var.sum())
    return ratio, float((seen["out"] >= 6).float().mean())


def test_each_backbone_sees_inputs_normalised_as_its_weights_expect(elpv):
    """With the weights' own normalisation the stem works in its trained range. Measured on 64 ELPV
    cells (2026-11-28): EfficientNet-Lite0 summed variance ratio 0.46 and 0.9% of stem activations
    at ReLU6's ceiling with (x - 127) / 128, against 2.27 and 7.9% with ImageNet's mean / std. Gray,
    low-contrast cells have less variance than ImageNet photos, so the ratio sits below 1 with the
    right normalisation: the bound is [0.25, 4] (a factor 4 either way), saturation < 2%. Lite2 on the same
    cells (2026-12-05): 0.34 and 0.4%, against 1.70 and 3.2% with ImageNet's (eight times as many at the
    ceiling; the wrong normalisation must saturate at least five times as many, and over 2%)."""
    images = elpv.images[::40][:64]
    checked = 0
    for name in models.BACKBONES:
        if not models.weights_available(name):
            continue
        ratio, saturated = _stem_statistics(name, images)
        assert 0.25 <= ratio <= 4, (name, ratio)
        if name.startswith("efficientnet_lite"):
            assert saturated < 0.02, (name, saturated)
            _, wrong = _stem_statistics(name, images, models.IMAGENET_MEAN, models.IMAGENET_STD)
            assert wrong > max(0.02, 5 * saturated), (name, wrong)  # the check can fail: ImageNet's saturates
        checked += 1
    assert checked >= 1


def test_random_resized_crop_areas_follow_torchvision():
    """The vectorised crop draws like torchvision's RandomResizedCrop.get_params (retries, then the
    central fallback): crop areas of 20,000 draws on a 300 x 300 cell, two-sample KS test."""
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    n = 20_000
    gen = torch.Generator().manual_seed(0)
    boxes, _ = augment.draw_crops(n, 300, 300, gen)
    ours = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 300).all()
    torch.manual_seed(1)
    image = torch.zeros(1, 300, 300)
    theirs = np.array([h * w for _, _, h, w in (RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
                                                 for _ in range(n))], float)
    assert ks_2samp(ours, theirs).pvalue > 0.01
    assert abs(np.mean(ours > 0.75 * 300 * 300) - np.mean(theirs > 0.75 * 300 * 300)) < 0.02


@pytest.mark.parametrize("damage", ["file in place of the folder", "entry is a folder"])
def test_unwritable_feature_cache_warns_once_and_goes_on(small, tmp_path, monkeypatch, damage):
    imgs = small[0].images[:4]
    expected = features.extract(imgs, size=48, use_cache=False, progress=False)
    monkeypatch.setenv("FSFSL_CACHE", str(tmp_path / "cache"))
    folder = features.cache_dir_for("efficientnet_lite0", 48, 1.0, models.resolve_weights("efficientnet_lite0"))
    if damage == "file in place of the folder":
        folder.parent.mkdir(parents=True)
        folder.write_text("not a folder")
    else:
        for key in features.image_keys(imgs):
            (folder / key[:2] / f"{key}.npy").mkdir(parents=True)
    with pytest.warns(UserWarning, match="cannot be written") as caught:
        got = features.extract(imgs, size=48, progress=False)
    assert len([w for w in caught if "cannot be written" in str(w.message)]) == 1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
