"""Training: probe beats chance, determinism, finetune resume equals uninterrupted run, bad config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsfsl_utils import metrics, train

TINY = {"mode": "finetune", "input_size": 32, "epochs": 2, "batch_size": 8, "train_aug": "flip"}


@pytest.fixture(scope="module")
def tiny(small):
    tr, va = small
    pick = lambda ds, n: ds.subset(np.concatenate([np.flatnonzero(ds.labels == c)[:n] for c in (0, 1)]))  # noqa
    return pick(tr, 6), pick(va, 4)


def test_probe_beats_chance_on_real_subset(small, cache_dir):
    tr, va = small
    res = train.fit(tr, va, {"mode": "probe", "input_size": 128}, seed=0, progress=False)
    m = metrics.evaluate(va.labels, res.val_logits, va.class_names)
    assert m["balanced_accuracy"] > 0.7 and m["auroc"] > 0.8, m
    assert set(res.view_logits) == {"vflip", "blur"} and res.view_logits["blur"].shape == res.val_logits.shape


def test_probe_is_deterministic_per_seed(small, cache_dir):
    tr, va = small
    cfg = {"mode": "probe", "input_size": 64, "head_epochs": 10}
    a = train.fit(tr, va, cfg, seed=1, views=(), progress=False).val_logits
    b = train.fit(tr, va, cfg, seed=1, views=(), progress=False).val_logits
    c = train.fit(tr, va, cfg, seed=2, views=(), progress=False).val_logits
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_class_weights_inverse_to_frequency():
    w = train.class_weights(np.array([0] * 754 + [1] * 358), 2)
    assert w == pytest.approx([1112 / (2 * 754), 1112 / (2 * 358)])
    assert (w * [754, 358]).sum() == pytest.approx(1112)


def test_class_weighting_raises_minority_recall():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (900, 2)), rng.normal(1, 1, (100, 2))]).astype(np.float32)
    y = np.array([0] * 900 + [1] * 100)
    cfg = train.check_config({"head_epochs": 100})
    recall = {}
    for weighting in ("none", "balanced"):
        head, _ = train.train_head(x, y, 2, {**cfg, "class_weight": weighting}, seed=0)
        with torch.no_grad():
            pred = head(torch.from_numpy(x)).argmax(1).numpy()
        recall[weighting] = (pred[y == 1] == 1).mean()
    # unweighted: the 9:1 prior wins, few minority hits; weighted: the boundary moves to ~0.5
    assert recall["none"] < 0.3 and recall["balanced"] > 0.6, recall


def test_finetune_resume_matches_uninterrupted(tiny, tmp_path):
    tr, va = tiny
    full = train.fit(tr, va, TINY, seed=0, views=(), checkpoint_dir=tmp_path / "a", progress=False)

    def crash(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train.fit(tr, va, TINY, seed=0, views=(), checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=crash)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = train.fit(tr, va, TINY, seed=0, views=(), checkpoint_dir=tmp_path / "b", progress=False)
    assert any("resumed" in n for n in resumed.notes)
    for (k, a), b in zip(full.final_model.state_dict().items(), resumed.final_model.state_dict().values()):
        assert torch.equal(a, b), k
    np.testing.assert_array_equal(full.val_logits, resumed.val_logits)
    assert [h["val_accuracy"] for h in full.history] == [h["val_accuracy"] for h in resumed.history]


def test_resume_with_other_config_refuses(tiny, tmp_path):
    tr, va = tiny
    train.fit(tr, va, {**TINY, "epochs": 1}, views=(), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(train.TrainingError, match="another config.*lr"):
        train.fit(tr, va, {**TINY, "epochs": 1, "lr": 0.01}, views=(), checkpoint_dir=tmp_path, progress=False)


def test_finetune_paper_aug_and_views_run(tiny):
    tr, va = tiny
    res = train.fit(tr, va, {**TINY, "epochs": 1, "train_aug": "paper", "crop_fraction": 224 / 256},
                    views=("vflip",), progress=False)
    assert res.val_logits.shape == (len(va), 2) and res.view_logits["vflip"].shape == (len(va), 2)
    assert res.device == "cpu" and len(res.history) == 1


def test_nan_loss_stops_with_message(tiny, tmp_path, monkeypatch):
    tr, va = tiny
    build = train.models.build_classifier

    def poisoned(*args, **kwargs):
        net = build(*args, **kwargs)
        torch.nn.init.constant_(net.head.bias, float("nan"))
        return net

    monkeypatch.setattr(train.models, "build_classifier", poisoned)
    with pytest.raises(train.TrainingError, match="loss became nan in epoch 1"):
        train.fit(tr, va, TINY, views=(), checkpoint_dir=tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("config, message", [
    ({"lr": 0}, "lr must be a number"), ({"epochs": 0}, "epochs must be a number"),
    ({"batch_size": -4}, "batch_size must be"), ({"mode": "zero-shot"}, "unknown training mode"),
    ({"backbone": "vit"}, "unknown backbone"), ({"optimiser": "sgd"}, "unknown training parameter"),
    ({"class_weight": "heavy"}, "class_weight must be"),
])
def test_bad_config(config, message):
    with pytest.raises(ValueError, match=message):
        train.check_config(config)


def test_graphed_steps_do_what_eager_steps_do(monkeypatch):
    """TrainStep's CUDA-graph bookkeeping (warm-up, one capture, replays, eager last batch, gradients
    kept in place) on the CPU, with a stand-in capture that runs the captured step on each replay
    the way a graph does: gradients overwritten, not accumulated. Same weights and losses as eager."""
    def fake_capture(fn):
        out = torch.zeros(())

        def replay():
            opt_b.zero_grad(set_to_none=False)  # a replay overwrites the gradient buffers
            out.copy_(fn())
        return replay, out

    monkeypatch.setattr(train, "capture_graph", fake_capture)

    def make():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.3),
                                  torch.nn.Linear(4, 2))
        return net, torch.optim.Adam(net.parameters(), lr=1e-2)

    net_a, opt_a = make()
    net_b, opt_b = make()
    step_a = train.TrainStep(net_a, opt_a, None, False, batch_size=4, graphed=False)
    step_b = train.TrainStep(net_b, opt_b, None, False, batch_size=4, graphed=True)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(22, 3, 8, 8, generator=gen), torch.randint(0, 2, (22,), generator=gen)
    losses = {"a": [], "b": []}
    for epoch in range(3):
        for key, step in (("a", step_a), ("b", step_b)):
            torch.manual_seed(epoch)  # the same dropout draws on both sides
            for s in range(0, 22, 4):
                losses[key].append(float(step(x[s:s + 4], y[s:s + 4])))
    assert losses["a"] == losses["b"]
    for (k, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), k
    # 6 batches per epoch, the last of 2 images: 3 warm-up steps, then replays; short batches eager
    assert step_b.counts == {"eager": 3 + 3, "graph": 3 * 5 - 3} and step_a.counts["graph"] == 0
    assert step_b.replay is not None and not step_b.notes


def test_graph_capture_failure_falls_back_to_eager(monkeypatch):
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(train, "capture_graph", broken)
    net = torch.nn.Linear(3, 2)
    step = train.TrainStep(net, torch.optim.Adam(net.parameters()), None, False, batch_size=2, graphed=True)
    for _ in range(6):
        assert torch.isfinite(step(torch.randn(2, 3), torch.tensor([0, 1])))
    assert step.counts == {"eager": 6, "graph": 0} and "capture failed (RuntimeError" in step.notes[0]
