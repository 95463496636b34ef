"""Training: probe beats chance, determinism, finetune resume equals uninterrupted run, bad config."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from fsfsl_utils import metrics, models, train
from fsfsl_utils.config import TrainConfig
from fsfsl_utils.train import loop as train_loop
from fsfsl_utils.train import step as train_step

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


def test_probe_head_is_converged_and_blind_to_validation_labels(small, cache_dir):
    """The head is fitted to convergence: twice the iteration budget and a 100x tighter tolerance move
    accuracy by less than 0.1 point; the seed changes nothing (a convex fit, no random start); the
    validation labels never reach the fit (shuffled, the head is the same)."""
    tr, va = small
    cfg = {"mode": "probe", "input_size": 64}
    base = train.fit(tr, va, cfg, seed=1, views=(), progress=False)
    longer = train.fit(tr, va, {**cfg, "head_max_iter": 4000, "head_tol": 1e-8}, seed=1, views=(), progress=False)
    acc = lambda r: (r.val_logits.argmax(1) == va.labels).mean()  # noqa: E731
    assert abs(acc(base) - acc(longer)) < 0.001 and base.history[0]["converged"]
    assert base.history[0]["C"] in TrainConfig().head_cs and base.history[0]["cv_log_loss"]
    np.testing.assert_array_equal(base.val_logits, train.fit(tr, va, cfg, seed=2, views=(), progress=False).val_logits)
    shuffled = va.subset(np.arange(len(va)))
    shuffled.meta["label"] = np.random.default_rng(0).permutation(va.labels)
    again = train.fit(tr, shuffled, cfg, seed=1, views=(), progress=False)
    assert torch.equal(again.model.linear.weight, base.model.linear.weight)


def test_class_weights_inverse_to_frequency():
    w = train.class_weights(np.array([0] * 754 + [1] * 358), 2)
    assert w == pytest.approx([1112 / (2 * 754), 1112 / (2 * 358)])
    assert (w * [754, 358]).sum() == pytest.approx(1112)


def test_class_weighting_raises_minority_recall():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (900, 2)), rng.normal(1, 1, (100, 2))]).astype(np.float32)
    y = np.array([0] * 900 + [1] * 100)
    cfg = TrainConfig.from_dict({})
    recall = {}
    for weighting in ("none", "balanced"):
        head, _ = train.train_head(x, y, 2, cfg.replace(class_weight=weighting), seed=0)
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
    stopped = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert stopped["epoch"] == 1 and "val_accuracy" not in stopped["history"][-1]  # validated on resume
    seen = []
    resumed = train.fit(tr, va, TINY, seed=0, views=(), checkpoint_dir=tmp_path / "b", progress=False,
                        on_epoch_end=lambda epoch, row: seen.append((epoch, row["val_accuracy"])))
    assert seen == [(h["epoch"], h["val_accuracy"]) for h in full.history]
    assert any("resumed" in n for n in resumed.notes)
    last = {run: torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in "ab"}
    for k, a in last["a"].items():  # the weights after the last epoch
        assert torch.equal(a, last["b"][k]), k
    np.testing.assert_array_equal(full.val_logits, resumed.val_logits)
    # the best epoch's validation logits are kept, not recomputed: they are those of the returned model
    np.testing.assert_array_equal(full.val_logits, train.predict(full.model, torch.from_numpy(va.images),
                                                                 TrainConfig.from_dict(TINY)))
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
    build = models.build_classifier

    def poisoned(*args, **kwargs):
        net = build(*args, **kwargs)
        torch.nn.init.constant_(net.head.bias, float("nan"))
        return net

    monkeypatch.setattr(models, "build_classifier", poisoned)
    with pytest.raises(train.TrainingError, match="loss became nan in epoch 1"):
        train.fit(tr, va, TINY, views=(), checkpoint_dir=tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("config, message", [
    ({"lr": 0}, "lr must be a number"), ({"epochs": 0}, "epochs must be a number"),
    ({"batch_size": -4}, "batch_size must be"), ({"mode": "zero-shot"}, "unknown training mode"),
    ({"backbone": "vit"}, "unknown backbone"), ({"optimiser": "sgd"}, "unknown training parameter"),
    ({"class_weight": "heavy"}, "class_weight must be"), ({"compile": "yes"}, "compile must be True or False"),
])
def test_bad_config(config, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(config)


def _fake_capture(opt):
    """A CPU stand-in for ``train.capture_graph``: each replay runs the captured step the way a graph
    does (gradients overwritten, not accumulated)."""
    def capture(fn):
        out = torch.zeros(())

        def replay():
            opt.zero_grad(set_to_none=False)
            out.copy_(fn())
        return replay, out
    return capture


def _tiny_net():
    # no convolution bias before batch norm: its gradient is rounding noise, which Adam would amplify
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(4, 2))
    return net, torch.optim.Adam(net.parameters(), lr=1e-2)


def _run_epochs(steps: dict, epochs: int, n: int = 22, batch: int = 4) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 2, (n,), generator=gen)
    losses = {key: [] for key in steps}
    for epoch in range(epochs):
        for key, step in steps.items():
            torch.manual_seed(epoch)  # the same dropout draws on every side
            for s in range(0, n, batch):
                losses[key].append(float(step(x[s:s + batch], y[s:s + batch])))
    return losses


def test_graphed_steps_do_what_eager_steps_do(monkeypatch):
    """TrainStep's CUDA-graph bookkeeping on the CPU, with a stand-in capture: warm-up per batch size,
    one graph for the recipe's batch and one for the epoch's last, shorter batch, both updating the
    same gradients in place. Same weights and losses as eager steps."""
    net_a, opt_a = _tiny_net()
    net_b, opt_b = _tiny_net()
    monkeypatch.setattr(train_step, "capture_graph", _fake_capture(opt_b))
    step_a = train.TrainStep(net_a, opt_a, None, False, batch_size=4, graphed=False)
    step_b = train.TrainStep(net_b, opt_b, None, False, batch_size=4, graphed=True)
    losses = _run_epochs({"a": step_a, "b": step_b}, epochs=5)
    assert losses["a"] == losses["b"]
    for (k, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), k
    # 6 batches per epoch, the last of 2 images: 3 warm-up steps per size, then replays
    assert step_b.counts == {"eager": 3 + 3, "graph": (5 * 5 - 3) + (5 - 3)} and step_a.counts["graph"] == 0
    assert sorted(step_b.graphs) == [2, 4] and not step_b.notes
    # a third batch size finds the graphs taken (MAX_GRAPHS) and runs eagerly
    for _ in range(5):
        step_b(torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 0]))
    assert sorted(step_b.graphs) == [2, 4] and step_b.counts["eager"] == 6 + 5


def test_graph_capture_failure_falls_back_to_eager(monkeypatch):
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(train_step, "capture_graph", broken)
    net = torch.nn.Linear(3, 2)
    step = train.TrainStep(net, torch.optim.Adam(net.parameters()), None, False, batch_size=2, graphed=True)
    for _ in range(6):
        assert torch.isfinite(step(torch.randn(2, 3), torch.tensor([0, 1])))
    assert step.counts == {"eager": 6, "graph": 0} and not step.graphs
    assert "CUDA graph capture (batch of 2) failed (RuntimeError" in step.notes[0]


def test_a_failed_second_capture_keeps_the_first_graph(monkeypatch):
    net_a, opt_a = _tiny_net()
    net_b, opt_b = _tiny_net()
    works = _fake_capture(opt_b)
    calls = []

    def second_fails(fn):
        calls.append(fn)
        if len(calls) > 1:
            raise RuntimeError("capture of the short batch failed")
        return works(fn)

    monkeypatch.setattr(train_step, "capture_graph", second_fails)
    step_a = train.TrainStep(net_a, opt_a, None, False, batch_size=4, graphed=False)
    step_b = train.TrainStep(net_b, opt_b, None, False, batch_size=4, graphed=True)
    losses = _run_epochs({"a": step_a, "b": step_b}, epochs=5)
    assert losses["a"] == losses["b"] and list(step_b.graphs) == [4]
    assert step_b.counts == {"eager": 3 + 5, "graph": 5 * 5 - 3} and "batch of 2) failed" in step_b.notes[0]


def test_fused_adam_and_compiled_steps_match_the_plain_step():
    """The measured options (fused Adam, torch.compile of the model) train the same weights as the
    plain step, up to float rounding, for both batch sizes of an epoch."""
    runs = {}
    for key, fused, compiled in (("plain", False, False), ("fused", True, False), ("compiled", False, True)):
        net, _ = _tiny_net()
        net[5].p = 0.0  # no dropout: compiled code draws its random numbers differently
        opt = train.make_optimizer(net, 1e-2, 0.0, graphed=False, fused=fused)
        step = train.TrainStep(net, opt, None, False, batch_size=4, graphed=False, compiled=compiled)
        runs[key] = (net, step, _run_epochs({key: step}, epochs=2)[key])
    plain_net, _, plain_losses = runs["plain"]
    for key in ("fused", "compiled"):
        net, step, losses = runs[key]
        assert not step.notes, step.notes
        np.testing.assert_allclose(losses, plain_losses, rtol=1e-4, atol=1e-5)
        for (k, a), b in zip(plain_net.state_dict().items(), net.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    compiled_step, plain_step = runs["compiled"][1], runs["plain"][1]
    assert compiled_step.net is not compiled_step.model and plain_step.net is plain_step.model
    # compiled for the recipe's batch only: the short last batch uses the plain model (one compilation)
    assert compiled_step._net_for(4) is compiled_step.net and compiled_step._net_for(2) is compiled_step.model


def test_a_failing_compile_falls_back_to_the_uncompiled_model(monkeypatch):
    def failing_compile(model, **kwargs):
        def call(x):
            raise torch._dynamo.exc.BackendCompilerFailed("inductor", RuntimeError("no C++ compiler"), None)
        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    net, opt = _tiny_net()
    step = train.TrainStep(net, opt, None, False, batch_size=4, graphed=False, compiled=True)
    losses = _run_epochs({"s": step}, epochs=1)["s"]
    assert np.isfinite(losses).all() and step.net is net and "torch.compile failed" in step.notes[0]


def test_fit_passes_the_measured_options_on(tiny, monkeypatch):
    """``fused_adam`` and ``compile`` reach fit's optimiser and training step (their numerics are
    checked on a small network above: on EfficientNet, Adam magnifies rounding differences)."""
    tr, va = tiny
    seen = {}
    real_opt, real_step = train.make_optimizer, train.TrainStep

    def spy_opt(*args, **kwargs):
        seen["opt"] = real_opt(*args, **kwargs)
        return seen["opt"]

    class SpyStep(real_step):
        def __init__(self, *args, compiled=False, **kwargs):
            seen["compiled"] = compiled
            super().__init__(*args, compiled=False, **kwargs)  # compiling EfficientNet on a CPU takes minutes

    monkeypatch.setattr(train_loop, "make_optimizer", spy_opt)
    monkeypatch.setattr(train_loop, "TrainStep", SpyStep)
    res = train.fit(tr, va, {**TINY, "fused_adam": True, "compile": True}, seed=0, views=(), progress=False)
    assert seen["opt"].param_groups[0]["fused"] is True and seen["compiled"] is True
    assert np.isfinite(res.val_logits).all()


def test_checkpoint_writer_saves_the_state_at_save_time_and_reports_failures(tmp_path):
    weights = {"w": torch.zeros(3), "history": [{"epoch": 1}]}
    writer = train.CheckpointWriter()
    writer.save(weights, tmp_path / "a.pt")
    weights["w"] += 1  # training goes on while the file is written
    weights["history"].append({"epoch": 2})
    writer.save(weights, tmp_path / "b.pt")
    writer.close()
    a, b = (torch.load(tmp_path / f"{k}.pt", weights_only=True) for k in "ab")
    assert torch.equal(a["w"], torch.zeros(3)) and a["history"] == [{"epoch": 1}]
    assert torch.equal(b["w"], torch.ones(3)) and len(b["history"]) == 2
    assert not list(tmp_path.glob("*.tmp"))

    (tmp_path / "file").write_text("not a folder")
    writer = train.CheckpointWriter()
    writer.save(weights, tmp_path / "file" / "last.pt")  # its folder cannot be made
    with pytest.raises(OSError):
        writer.close()


def test_validation_scores_the_weights_it_was_started_with(tiny):
    """Validation runs while the next epoch trains: changing the model after ``start`` must not
    change the result, and the copy it returns holds the validated weights."""
    tr, va = tiny
    cfg = TrainConfig.from_dict(TINY)
    torch.manual_seed(0)
    model = models.build_classifier(cfg.backbone, 2, None).eval()
    x_val = torch.from_numpy(va.images)
    expected = train.predict(model, x_val, cfg)
    validation = train.Validation(model, x_val, va.labels, cfg, False, None)
    assert validation.finish() is None
    validation.start(model)
    with pytest.raises(RuntimeError, match="before the previous validation finished"):
        validation.start(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # the next epoch trains
    assert validation.finish() == float((expected.argmax(1) == va.labels).mean())
    np.testing.assert_array_equal(train.predict(validation.model, x_val, cfg), expected)
    assert not np.array_equal(train.predict(model, x_val, cfg), expected)


def test_fit_many_gives_each_training_what_fit_gives_alone(tiny, tmp_path):
    """Trainings that take turns step by step (fit_many) keep their own random numbers: every
    result equals the same job run alone, also when the jobs differ in size, augmentation and
    seed, a probe job is mixed in, and one job writes checkpoints."""
    tr, va = tiny
    small = tr.subset(np.arange(0, len(tr), 2))
    jobs = [
        {"train": tr, "val": va, "config": {**TINY, "train_aug": "paper"}, "seed": 3, "views": ("vflip",)},
        {"train": small, "val": va, "config": {**TINY, "epochs": 3}, "seed": 0, "views": (),
         "checkpoint_dir": tmp_path / "together"},
        {"train": tr, "val": va, "config": {"mode": "probe", "input_size": 32}, "views": ()},
    ]
    together = train.fit_many(jobs, progress=False)
    alone_dirs = [None, tmp_path / "alone", None]
    for job, res, ckpt in zip(jobs, together, alone_dirs):
        alone = train.fit(**{**job, "checkpoint_dir": ckpt}, progress=False)
        np.testing.assert_array_equal(res.val_logits, alone.val_logits)
        assert res.history == alone.history and set(res.view_logits) == set(alone.view_logits)
        for v in res.view_logits:
            np.testing.assert_array_equal(res.view_logits[v], alone.view_logits[v])
        for (k, a), b in zip(alone.model.state_dict().items(), res.model.state_dict().values()):
            assert torch.equal(a, b), k  # the kept (best-epoch) weights
    last = {run: torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("together", "alone")}
    assert last["together"]["epoch"] == 3
    for k, a in last["alone"]["model"].items():  # the weights after the last epoch
        assert torch.equal(a, last["together"]["model"][k]), k
    with pytest.raises(ValueError, match="job 0: unknown fit argument"):
        train.fit_many([{"train": tr, "val": va, "epochs": 3}])


class _Payload:
    """Pickles to a call of os.system: what a crafted checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_and_runs_nothing(tiny, tmp_path):
    tr, va = tiny
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "config": _Payload(marker)}, ckpt / "last.pt")
    torch.save({}, ckpt / "best.pt")
    with pytest.raises(train.TrainingError, match=r"last.pt asks to build Python objects.*refused"):
        train.fit(tr, va, TINY, seed=0, views=(), checkpoint_dir=ckpt, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "best missing"])
def test_damaged_checkpoint_is_named_and_training_starts_again(tiny, tmp_path, damage):
    tr, va = tiny
    clean = train.fit(tr, va, TINY, seed=0, views=(), progress=False)
    ckpt = tmp_path / "ck"
    train.fit(tr, va, TINY, seed=0, views=(), checkpoint_dir=ckpt, progress=False)
    raw = (ckpt / "last.pt").read_bytes()
    if damage == "best missing":
        (ckpt / "best.pt").unlink()
    else:
        (ckpt / "last.pt").write_bytes({"empty": b"", "truncated": raw[: len(raw) // 2], "garbage": b"x" * 100}[damage])
    with pytest.warns(UserWarning, match="last.pt is damaged") if damage != "best missing" else \
            contextlib.nullcontext():
        again = train.fit(tr, va, TINY, seed=0, views=(), checkpoint_dir=ckpt, progress=False)
    assert any(str(ckpt) in n and ("damaged" in n or "missing" in n) for n in again.notes), again.notes
    assert not any("resumed from" in n for n in again.notes)
    np.testing.assert_array_equal(again.val_logits, clean.val_logits)   # retrained: the same run
