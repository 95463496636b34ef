"""The stronger recipe's ingredients (issue 34), each off by default: each does what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsfsl_utils import augment, models, profiles, recipe, report, train
from fsfsl_utils.config import TrainConfig
from fsfsl_utils.train import common, optim


@pytest.fixture(scope="module")
def tiny(small):
    tr, va = small
    pick = lambda ds, n: ds.subset(np.concatenate([np.flatnonzero(ds.labels == c)[:n] for c in (0, 1)]))  # noqa
    return pick(tr, 6), pick(va, 4)


def _square(seed: int = 0, size: int = 24) -> np.ndarray:
    """An asymmetric square image: no two of its eight symmetries are alike."""
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


def test_the_eight_dihedral_views_are_the_symmetries_of_a_square_and_exact():
    image = _square()
    views = [image] + [augment.apply_operation(image, augment.TEST_VIEWS[v], float("nan"))
                       for v in augment.DIHEDRAL_VIEWS]
    assert len({v.tobytes() for v in views}) == 8                       # eight different images ...
    assert all(sorted(v.ravel()) == sorted(image.ravel()) for v in views)  # ... of the same pixels, moved
    turned = augment.apply_operation(image, "rot90", 0.0)
    for _ in range(3):
        turned = augment.apply_operation(turned, "rot90", 0.0)
    assert np.array_equal(turned, image)                                # four quarter turns: the image again
    # the training-time draws reach the same eight, on preprocessed tensors
    x = torch.from_numpy(image).float()[None, None]
    out = augment.dihedral(x.repeat(8, 1, 1, 1), torch.tensor([0, 1, 2, 3] * 2), torch.tensor([False] * 4 + [True] * 4))
    assert {o[0].numpy().astype(np.uint8).tobytes() for o in out} == {v.tobytes() for v in views}


def test_dihedral_training_views_are_drawn_per_image_and_seeded():
    aug = augment.get_train_augmentation("dihedral")
    draws = aug.draw(400, 32, 32, torch.Generator().manual_seed(0))
    again = aug.draw(400, 32, 32, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(draws, again))
    turns, flips = draws
    assert set(turns.tolist()) == {0, 1, 2, 3} and 0.4 < flips.float().mean() < 0.6
    images = torch.from_numpy(np.stack([_square(s, 40) for s in range(4)]))
    views = aug.apply(images, tuple(d[:4] for d in draws), 32, "efficientnet_lite0", 1.0)
    plain = models.preprocess(images, "efficientnet_lite0", 32, 1.0)
    assert views.shape == plain.shape
    for v, p, k, f in zip(views, plain, turns[:4], flips[:4]):
        expect = torch.rot90(p, int(k), (-2, -1))
        assert torch.equal(v, expect.flip(-1) if f else expect)


def test_label_smoothing_reaches_the_loss():
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 2)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    losses = {}
    for smoothing in (0.0, 0.1):
        model = torch.nn.Linear(6, 2)
        model.load_state_dict(net.state_dict())
        opt = optim.make_optimizer(model, 1e-3, 0.0, graphed=False)
        step = train.TrainStep(model, opt, None, False, 8, graphed=False, label_smoothing=smoothing)
        expected = F.cross_entropy(net(x), y, label_smoothing=smoothing)
        losses[smoothing] = step(x, y)
        assert torch.allclose(losses[smoothing], expected)
    assert losses[0.1] != losses[0.0]
    with pytest.raises(ValueError, match="label_smoothing must be a number in"):
        TrainConfig(label_smoothing=0.7)


def test_warm_up_then_cosine():
    cfg = TrainConfig(mode="finetune", lr=1.0, epochs=6, warmup_epochs=2, lr_schedule="cosine")
    lrs = [optim.lr_at(cfg, e) for e in range(6)]
    assert lrs[:2] == [0.5, 1.0]                                        # linear warm-up to lr
    cosine = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]   # over the 4 epochs after it
    assert lrs[2:] == pytest.approx(cosine)
    off = TrainConfig(mode="finetune", lr=1.0, epochs=6)
    assert [optim.lr_at(off, e) for e in range(6)] == [1.0] * 6         # no warm-up: the step schedule as before
    with pytest.raises(ValueError, match="warmup_epochs .* must be fewer than epochs"):
        TrainConfig(mode="finetune", epochs=3, warmup_epochs=3)


def test_the_balanced_sampler_shows_each_class_as_often():
    labels = torch.tensor([0] * 900 + [1] * 100)
    gen = torch.Generator().manual_seed(0)
    order = common.epoch_order(labels, "balanced", gen)
    share = float((labels[order] == 1).float().mean())
    assert len(order) == 1000 and 0.45 < share < 0.55                   # 10% of the images, half the draws
    shuffled = common.epoch_order(labels, "shuffle", torch.Generator().manual_seed(3))
    assert torch.equal(shuffled, torch.randperm(1000, generator=torch.Generator().manual_seed(3)))  # the recipe's
    assert torch.equal(common.epoch_order(labels, "balanced", torch.Generator().manual_seed(0)), order)


def test_the_ingredients_reach_a_training_and_its_record(tiny):
    tr, va = tiny
    cfg = {"mode": "finetune", "input_size": 32, "epochs": 3, "batch_size": 8, "train_aug": "dihedral",
           "label_smoothing": 0.1, "warmup_epochs": 1, "lr_schedule": "cosine", "sampler": "balanced"}
    res = train.fit(tr, va, cfg, seed=0, views=augment.DIHEDRAL_VIEWS, progress=False)
    assert set(res.view_logits) == set(augment.DIHEDRAL_VIEWS)
    assert [round(h["lr"], 6) for h in res.history] == [1e-3, 1e-3, 5e-4]
    assert np.isfinite(res.val_logits).all()
    plain = train.fit(tr, va, {**cfg, "train_aug": "flip", "label_smoothing": 0.0, "sampler": "shuffle"}, seed=0,
                      views=(), progress=False)
    assert not np.array_equal(plain.val_logits, res.val_logits)


def test_efficientnet_lite2_builds_from_its_offline_weights_and_splits():
    spec = models.get_spec("efficientnet_lite2")
    assert models.weights_available("efficientnet_lite2") and spec.blocks == 21
    net = models.build_backbone("efficientnet_lite2").eval()
    x = models.preprocess(torch.from_numpy(np.stack([_square(s, 64) for s in range(2)])), "efficientnet_lite2", 64)
    with torch.no_grad():
        whole = net(x)
        lower, upper = models.split_backbone(net, "efficientnet_lite2", trained_blocks=3)
        assert whole.shape == (2, 1280) and torch.allclose(upper.eval()(lower(x)), whole, atol=1e-5)


def _record(seed: int, logits: np.ndarray, labels: list[int], views: dict | None = None) -> dict:
    return {"step": "06_recipe", "seed": seed, "split_seed": 0, "class_names": ["defective", "normal"],
            "predictions": {"labels": labels, "logits": logits.tolist()},
            "view_logits": {k: v.tolist() for k, v in (views or {}).items()}}


def test_a_seed_ensemble_averages_probabilities():
    labels = [0, 1, 1]
    a = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
    b = np.log(np.array([[0.5, 0.5], [0.2, 0.8], [0.4, 0.6]]))
    ens = report.ensemble_record([_record(0, a, labels), _record(1, b, labels)], "06_recipe")
    probs = np.exp(np.asarray(ens["predictions"]["logits"]))
    assert np.allclose(probs, [[0.7, 0.3], [0.4, 0.6], [0.3, 0.7]])     # the mean probability, not the mean logit
    assert ens["seeds"] == [0, 1] and ens["metrics"]["accuracy"] == 1.0 and "ensemble of 2" in ens["step"]
    with pytest.raises(ValueError, match="no logits of test-time view"):
        report.ensemble_record([_record(0, a, labels)], "06_recipe", views=("rot90",))
    with_views = report.ensemble_record([_record(0, a, labels, {"rot90": b})], "06_recipe", views=("rot90",))
    assert np.allclose(np.exp(np.asarray(with_views["predictions"]["logits"])), probs)


def test_seed_ensembles_average_over_the_views_the_recipe_trained_on_then_all_eight():
    labels = [0, 1, 1]
    a = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
    flipped = np.log(np.array([[0.5, 0.5], [0.2, 0.8], [0.4, 0.6]]))
    views = {v: a for v in augment.DIHEDRAL_VIEWS} | {"hflip": flipped}
    records = [{**_record(0, a, labels, views), "config": {"train_aug": "flip"}}]
    plain, trained, eight = report.seed_ensembles(records, "06_recipe")
    assert (plain["views"], trained["views"], eight["views"]) == ([], ["hflip"], list(augment.DIHEDRAL_VIEWS))
    assert np.allclose(np.exp(np.asarray(trained["predictions"]["logits"])), [[0.7, 0.3], [0.4, 0.6], [0.3, 0.7]])
    dihedral = [{**records[0], "config": {"train_aug": "dihedral"}}]   # its training views are the eight: once
    assert [e["views"] for e in report.seed_ensembles(dihedral, "06_recipe")] == [[], list(augment.DIHEDRAL_VIEWS)]
    no_views = [{**_record(0, a, labels), "config": {"train_aug": "flip"}}]   # views not kept: the ensemble alone
    assert len(report.seed_ensembles(no_views, "06_recipe")) == 1
    assert augment.training_views("paper") == ("hflip",) and augment.training_views("none") == ()


def test_each_arm_keeps_the_logits_of_the_views_it_trains_on():
    base = profiles.resolve("cpu-strong")["config"]
    rungs = recipe.ladder(base, ["blocks", "dihedral"])
    assert recipe.views(base, rungs[0]) == (*augment.DEFAULT_VIEWS, "hflip")
    assert set(recipe.views(base, rungs[-1])) == set(augment.DEFAULT_VIEWS) | set(augment.DIHEDRAL_VIEWS)


@pytest.fixture(scope="module")
def soft_elpv():
    from fsfsl_utils import data

    return data.load_elpv("soft")


def test_soft_labels_add_the_unsure_cells_to_training_only(soft_elpv, elpv):
    """Label policy ``soft``: the study's cells split exactly as under ``study`` (the same validation
    images), and the 401 cells of p = 1/3 or 2/3 added to the training part with their probability."""
    from fsfsl_utils import data

    train, val = data.split(soft_elpv, seed=0)
    study_train, study_val = data.split(elpv, seed=0)
    assert val.names == study_val.names and np.array_equal(val.images, study_val.images)
    assert train.names[:len(study_train)] == study_train.names
    extra = train.meta.iloc[len(study_train):]
    assert len(extra) == 401 and set(np.round(extra["soft"] * 3).astype(int)) == {1, 2}
    assert not set(train.meta["source"]) & set(val.meta["source"])      # disjoint
    assert val.soft_targets() is None and study_train.soft_targets() is None
    targets = train.soft_targets()
    assert targets.shape == (len(train), 2) and np.allclose(targets.sum(1), 1)
    p = extra["soft"].to_numpy()
    assert np.allclose(targets[len(study_train):, 1], p)                # the defect probability, not a hard label
    assert np.array_equal(targets[:len(study_train)].argmax(1), study_train.labels)
    grouped_train, grouped_val = data.split(soft_elpv, seed=0, kind="grouped")
    modules = lambda ds: set(data.elpv_module_groups(ds.meta["source"].tolist()))  # noqa: E731
    assert not modules(grouped_train) & modules(grouped_val)            # no module on both sides, soft cells too
    with pytest.raises(data.DataError, match="label policy 'soft' is ELPV's"):
        data.class_names_of(".", "soft")
    with pytest.raises(data.DataError, match="a pack cannot hold soft labels"):
        data.write_pack(train.subset(np.arange(len(train) - 3, len(train))), "x.fsfslpack")


def test_soft_labels_reach_the_loss(soft_elpv):
    """A training on soft labels gives the loss class probabilities (cross-entropy against 1/3, 2/3),
    and learns something else than the same cells with their rounded, hard labels."""
    unsure = np.flatnonzero(soft_elpv.meta["soft"].notna())[:8]
    sure = np.concatenate([np.flatnonzero(soft_elpv.meta["soft"].isna().to_numpy() & (soft_elpv.labels == c))[:6]
                           for c in (0, 1)])
    soft = soft_elpv.subset(np.concatenate([sure, unsure]))
    targets = common.training_targets(soft, torch.device("cpu"))
    assert targets.dtype == torch.float32
    assert torch.allclose(targets[-8:, 1], torch.tensor(soft.meta["soft"].to_numpy()[-8:], dtype=torch.float32))
    hard = soft.subset(np.arange(len(soft)))
    hard.meta = hard.meta.drop(columns="soft")
    assert common.training_targets(hard, torch.device("cpu")).dtype == torch.int64
    val = soft_elpv.subset(np.flatnonzero(soft_elpv.meta["soft"].isna())[-10:])
    cfg = {"mode": "finetune", "input_size": 32, "epochs": 1, "batch_size": 8, "train_aug": "none"}
    on_soft = train.fit(soft, val, cfg, seed=0, views=(), progress=False)
    on_hard = train.fit(hard, val, cfg, seed=0, views=(), progress=False)
    assert on_soft.history[0]["train_loss"] != pytest.approx(on_hard.history[0]["train_loss"])


def test_the_weight_average_is_the_exponential_average_and_what_is_kept():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = optim.make_optimizer(model, 0.1, 0.0, graphed=False)
    ema = train.step.weight_average(model, 0.5)
    step = train.step.AveragedStep(train.TrainStep(model, opt, None, False, 4, graphed=False), model, ema)
    expected = None
    for _ in range(3):
        step(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        w = model.weight.detach().clone()
        expected = w if expected is None else 0.5 * expected + 0.5 * w  # the first step copies
    assert torch.allclose(ema.module.weight, expected)


def test_a_training_with_a_weight_average_resumes_as_if_uninterrupted(tiny, tmp_path):
    tr, va = tiny
    cfg = {"mode": "finetune", "input_size": 32, "epochs": 2, "batch_size": 8, "train_aug": "flip", "ema_decay": 0.9}
    full = train.fit(tr, va, cfg, seed=0, views=(), checkpoint_dir=tmp_path / "a", progress=False)

    def crash(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train.fit(tr, va, cfg, seed=0, views=(), checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=crash)
    assert "ema" in torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    resumed = train.fit(tr, va, cfg, seed=0, views=(), checkpoint_dir=tmp_path / "b", progress=False)
    np.testing.assert_array_equal(full.val_logits, resumed.val_logits)
    plain = train.fit(tr, va, {**cfg, "ema_decay": 0.0}, seed=0, views=(), progress=False)
    assert not np.array_equal(plain.val_logits, full.val_logits)          # the average, not the last weights
    top = train.fit(tr, va, {"mode": "top", "input_size": 64, "epochs": 2, "batch_size": 8, "train_aug": "flip",
                             "ema_decay": 0.9}, seed=0, views=(), progress=False)
    assert np.isfinite(top.val_logits).all()


def test_top_blocks_train_on_the_eight_symmetries_from_cached_activations(tiny):
    """Mode ``top`` with ``train_aug='dihedral'``: each image shown as one of its eight symmetries, from the
    cached activations of that very view (exact: no interpolation between them)."""
    from fsfsl_utils.train import top

    tr, va = tiny
    cfg = TrainConfig(mode="top", input_size=64, epochs=2, batch_size=8, train_aug="dihedral")
    turned = top.dataset_activations(tr, cfg, "rot90")
    by_hand = top.activations(np.stack([np.rot90(im) for im in tr.images]), cfg)
    np.testing.assert_array_equal(turned, by_hand)                      # the view's own activations
    res = train.fit(tr, va, cfg.as_dict(), seed=0, views=(), progress=False)
    flip = train.fit(tr, va, {**cfg.as_dict(), "train_aug": "flip"}, seed=0, views=(), progress=False)
    again = train.fit(tr, va, cfg.as_dict(), seed=0, views=(), progress=False)
    np.testing.assert_array_equal(res.val_logits, again.val_logits)     # seeded
    assert not np.array_equal(res.val_logits, flip.val_logits)
    with pytest.raises(ValueError, match="use 'flip' or 'dihedral'"):
        TrainConfig(mode="top", train_aug="paper")


def test_the_ladder_adds_one_ingredient_at_a_time_and_the_final_recipe_keeps_what_bought_something():
    from fsfsl_utils import profiles, recipe

    base = profiles.resolve("cpu-strong")["config"]
    rungs = recipe.ladder(base)
    assert [r.step for r in rungs][:3] == ["06_0_base", "06_1_blocks", "06_2_resolution"]
    for before, after in zip(rungs, rungs[1:]):                        # each arm: the one before + one ingredient
        assert set(before.config.items()) <= set(after.config.items()) and \
            (after.config != before.config or after.labels != before.labels)
    assert rungs[-1].config["backbone"] == "efficientnet_lite2" and rungs[-1].labels == "soft"
    probe = recipe.ladder(profiles.resolve("cpu")["config"])           # a frozen probe: nothing to add
    assert [r.step for r in probe] == ["06_0_base"]
    assert "soft" not in {r.labels for r in recipe.ladder(base, elpv=False)}
    rows = [{"A": "06_1_blocks", "B": "06_0_base", "accuracy verdict": "difference shown", "accuracy effect (pts)": 1.5,
             "defective recall verdict": "no difference shown (...)", "defective recall effect (pts)": 0.4},
            {"A": "06_2_resolution", "B": "06_1_blocks", "accuracy verdict": "difference shown",
             "accuracy effect (pts)": 0.8, "defective recall verdict": "difference shown",
             "defective recall effect (pts)": -2.0},                    # a gain bought with a loss: left out
            {"A": "06_3_dihedral", "B": "06_2_resolution", "accuracy verdict": "no difference shown (...)",
             "accuracy effect (pts)": 0.1, "defective recall verdict": "difference shown",
             "defective recall effect (pts)": 3.0}]
    keep = recipe.kept(rows, rungs, "defective")
    assert keep == ["blocks", "dihedral"]
    final = recipe.final_rung(base, keep)
    assert dict(final.config) == {"trained_blocks": 5, "train_aug": "dihedral"} and final.labels is None
    assert "bought" not in recipe.kept_sentence(rungs, keep) and "Left out" in recipe.kept_sentence(rungs, keep)
    assert recipe.pairs(rungs[:3]) == [("06_1_blocks", "06_0_base"), ("06_2_resolution", "06_1_blocks")]
    assert recipe.base_pairs(rungs[:3]) == [("06_2_resolution", "06_0_base")] and recipe.base_pairs(rungs[:2]) == []
    assert recipe.curve_steps("final", final, [0.25, 1.0]) == ["06_curve_final_25", "06_final"]
    with pytest.raises(ValueError, match="unknown ingredient"):
        recipe.parse_names("dihedral,mixup")
    with pytest.raises(ValueError, match="LEARNING_CURVE shares must lie in"):
        recipe.parse_shares("0,0.5")


def test_learning_curve_subsets_are_nested_stratified_and_leave_validation_alone(elpv):
    from fsfsl_utils import data

    train, _ = data.split(elpv, seed=0)
    parts = {f: data.label_subset(train, f, seed=0) for f in (0.125, 0.25, 0.5, 1.0)}
    assert parts[1.0] is train
    for small, big in ((0.125, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert set(parts[small].names) < set(parts[big].names)           # nested
    counts = parts[0.25].counts()
    assert counts == {c: math.ceil(0.25 * n) for c, n in train.counts().items()}  # stratified


def test_a_probe_refuses_soft_labels_rather_than_round_them(soft_elpv):
    part = soft_elpv.subset(np.concatenate([np.flatnonzero(soft_elpv.meta["soft"].notna())[:4],
                                            np.flatnonzero(soft_elpv.meta["soft"].isna())[:8]]))
    with pytest.raises(ValueError, match="soft labels .* need a mode that trains with a loss"):
        train.fit(part, part, {"mode": "probe", "input_size": 32}, views=(), progress=False)


@pytest.mark.slow  # a benchmark script's dry run (four trainings), like the other scripts' in make test-slow
def test_the_final_recipe_is_judged_again_on_another_split(tmp_path, benchmark_script):
    """benchmarks/recipe_holdout.py: the base and final recipes of a 06 run, retrained on split 1 with their
    own settings and labels, their records beside the run; paired there by the kit's rule."""
    from fsfsl_utils import results, session

    run = tmp_path / "run"
    settings = session.Settings.from_parameters(profile="smoke", seeds=1, results_dir=str(run), progress=False)
    settings.run("06_0_base", policy="none", keep_model=False, analyse_images=False)
    settings.run("06_final", policy="none", keep_model=False, analyse_images=False, train_aug="dihedral",
                 label_smoothing=0.1)
    holdout = benchmark_script("recipe_holdout")
    records = holdout.holdout(run, split_seed=1, seeds=1)
    assert {(r["step"], r["split_seed"]) for r in records} == {("06_0_base", 1), ("06_final", 1)}
    final = next(r for r in records if r["step"] == "06_final")
    assert final["config"]["train_aug"] == "dihedral" and final["config"]["label_smoothing"] == 0.1
    assert len(results.load_records(run / "holdout-split1")) == 2
    first = next(r for r in results.load_records(run) if r["step"] == "06_0_base")
    assert final["predictions"]["names"] != first["predictions"]["names"]        # other validation images
    assert len(report.paired_tests(records, [("06_final", "06_0_base")])) == 1
    grouped = holdout.holdout(run, split_seed=0, seeds=1, split_kind="grouped")   # new modules only
    assert {r["split_kind"] for r in grouped} == {"grouped"} and (run / "holdout-grouped0").is_dir()
    with pytest.raises(ValueError, match="no records of"):
        holdout.holdout(run, step="06_3_schedule")


@pytest.mark.slow  # a benchmark script's dry run (six small trainings), in make test-slow
def test_the_blocks_table_trains_each_count_and_chooses_the_fewest_no_larger_count_beats(tmp_path, benchmark_script):
    """benchmarks/blocks_table.py: one arm per number of trained top blocks, each with its training time,
    and the choice read off the paired tests (here, at a size nothing can be shown, the fewest blocks)."""
    blocks = benchmark_script("blocks_table")
    records = blocks.train_counts(tmp_path, [0, 1, 2], seeds=2, input_size=64, epochs=1, limit_per_class=12)
    assert sorted({(r["step"], r["config"]["trained_blocks"]) for r in records}) == \
        [("blocks_0", 0), ("blocks_1", 1), ("blocks_2", 2)]
    rows, tests, chosen = blocks.table(records, [0, 1, 2])
    assert list(rows["trained blocks"]) == [0, 1, 2] and (rows["training s per seed"] > 0).all()
    assert list(zip(tests["A"], tests["B"])) == [("blocks_1", "blocks_0"), ("blocks_2", "blocks_1")]
    assert chosen == 0
    with pytest.raises(SystemExit):
        blocks.main(["--out", str(tmp_path), "--blocks", "1,two"])
