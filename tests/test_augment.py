"""Augmentation: study counts, determinism, train-only, operations, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fsfsl_utils import augment, data


def test_study_policy_counts(study):
    train, _ = study
    assert augment.expand(train, "balanced", progress=False).counts() == {"normal": 1508, "defective": 1432}
    assert augment.expand(train, "flip", progress=False).counts() == {"normal": 1508, "defective": 716}
    assert augment.expand(train, "full_x4", progress=False).counts() == {"normal": 3016, "defective": 1432}
    full = augment.expand(train, "full", seed=0, progress=False)
    assert full.counts() == {"normal": 2210, "defective": 1174}   # the study's step 3
    assert augment.get_policy("full").counts(train.counts()) == full.counts()
    assert augment.get_policy("balanced").counts(train.counts()) == {"normal": 1508, "defective": 1432}
    # a random subset of the copies, recorded in the manifest, different for another seed
    copies = augment.manifest(full).query("op != 'original'")
    assert set(copies["op"]) == {"hflip", "brightness", "clarity"} and len(copies) == 2210 + 1174 - 1112
    other = augment.manifest(augment.expand(train, "full", seed=1, progress=False)).query("op != 'original'")
    assert set(copies["name"]) != set(other["name"])


def test_brightness_and_clarity_copies_move_about_one_bin_and_barely_clip(study):
    """Each copy moves its feature by 0.5-1.5 sensitivity bins (the median ratio of adjacent
    quintile medians of the training part), and brightened copies clip at most 2% of pixels."""
    from fsfsl_utils import sensitivity

    train, _ = study
    rng = np.random.default_rng(0)
    sample = train.images[rng.choice(len(train), 150, replace=False)]
    for op in ("brightness", "clarity"):
        fn = getattr(sensitivity, op)
        values = np.array([fn(im) for im in train.images])
        edges = np.quantile(values, np.linspace(0, 1, 6))
        medians = [np.median(values[(values >= lo) & (values <= hi)]) for lo, hi in zip(edges[:-1], edges[1:])]
        step = np.exp(np.mean(np.log(np.array(medians[1:]) / medians[:-1])))   # one bin, as a factor
        before = np.array([fn(im) for im in sample])
        for lo, hi in augment.OPERATIONS[op].ranges:
            for param in (lo, hi):
                out = np.stack([augment.apply_operation(im, op, param) for im in sample])
                moved = abs(np.log(np.median(np.array([fn(im) for im in out]) / before))) / np.log(step)
                assert 0.5 <= moved <= 1.5, (op, param, moved)
                if op == "brightness":
                    assert (out == 255).mean() - (sample == 255).mean() <= 0.02, (param, (out == 255).mean())


def test_duplicate_control_repeats_each_defective_image_four_times(small):
    train, _ = small
    ex = augment.expand(train, "balanced_duplicate", progress=False)
    defective = ex.meta[ex.labels == 1]
    assert (defective.groupby("source").size() == 4).all()
    for _src, rows in defective.groupby("source"):
        imgs = ex.images[rows.index]
        assert all(np.array_equal(imgs[0], im) for im in imgs)


def test_expansion_is_deterministic_and_seeded(small):
    train, _ = small
    a = augment.expand(train, "full", seed=3, progress=False)
    b = augment.expand(train, "full", seed=3, progress=False)
    c = augment.expand(train, "full", seed=4, progress=False)
    assert np.array_equal(a.images, b.images) and a.meta.equals(b.meta)
    assert not np.array_equal(a.images, c.images)


def test_same_copy_in_every_policy(small):
    train, _ = small
    full = augment.expand(train, "full", seed=0, progress=False)
    bal = augment.expand(train, "balanced", seed=0, progress=False)
    name = bal.meta.query("op == 'brightness'")["name"].iloc[0]
    i, j = full.names.index(name), bal.names.index(name)
    assert np.array_equal(full.images[i], bal.images[j])


def test_manifest_audits_every_copy(small):
    train, _ = small
    ex = augment.expand(train, "balanced", progress=False)
    man = augment.manifest(ex)
    assert len(man) == len(ex)
    copies = man[man["op"] != "original"]
    assert set(copies["source"]) <= set(train.names)
    assert (copies.loc[copies["op"] == "brightness", "param"].astype(float).between(0.6, 1.4)).all()


def test_validation_is_never_expanded(small):
    _, val = small
    with pytest.raises(ValueError, match="TRAIN part only"):
        augment.expand(val, "flip")


def test_operations_do_what_they_say():
    rng = np.random.default_rng(0)
    img = rng.integers(30, 200, (40, 50), dtype=np.uint8)
    assert np.array_equal(augment.apply_operation(img, "hflip", np.nan), img[:, ::-1])
    assert np.array_equal(augment.apply_operation(img, "vflip", np.nan), img[::-1])
    bright = augment.apply_operation(img, "brightness", 1.2)
    assert np.allclose(bright, np.clip(img * 1.2, 0, 255), atol=1)
    blurred = augment.apply_operation(img, "clarity", 0.0)
    sharp = augment.apply_operation(img, "clarity", 3.0)
    lap = lambda x: np.var(np.diff(x.astype(float), 2, axis=1))  # noqa: E731
    assert lap(blurred) < lap(img) < lap(sharp)
    rgb = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    assert augment.apply_operation(rgb, "blur", 1.0).shape == rgb.shape


def test_bad_policy_and_operation_names(small):
    train, _ = small
    with pytest.raises(ValueError, match="unknown augmentation policy 'extra'.*balanced"):
        augment.expand(train, "extra")
    with pytest.raises(ValueError, match="unknown augmentation operation 'rotate'.*hflip"):
        augment.expand(train, augment.Policy("p", {"*": ("rotate",)}))
    with pytest.raises(ValueError, match="names class 'cracked'.*normal, defective"):
        augment.expand(train, augment.Policy("p", {"cracked": ("hflip",)}))


def test_expand_keeps_rgb_and_custom_classes():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    meta = data.make_meta([f"i{k}" for k in range(6)], np.array([0, 0, 1, 1, 2, 2]), split=["train"] * 6)
    ds = data.Dataset(imgs, meta, ["a", "b", "c"])
    ex = augment.expand(ds, augment.Policy("rare", {"c": ("vflip", "brightness")}), progress=False)
    assert ex.counts() == {"a": 2, "b": 2, "c": 6}
    assert ex.images.shape[1:] == (16, 16, 3)
