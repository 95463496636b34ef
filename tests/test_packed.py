"""Packed fine-tuning (fsfsl_utils.train.packed): several trainings as one network, each member's result
that of the training run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsfsl_utils import models, train
from fsfsl_utils.config import TrainConfig
from fsfsl_utils.train import dispatch, packed
from fsfsl_utils.train import step as train_step

# stochastic depth (EfficientNet-Lite's drop_connect) is on in training mode: the members' draws are checked too
TINY = {"mode": "finetune", "input_size": 32, "epochs": 2, "batch_size": 8, "train_aug": "paper"}


@pytest.fixture(scope="module")
def parts(small):
    """Two training parts of the same size (different images) and one validation part."""
    tr, va = small
    pick = lambda ds, offset: ds.subset(np.concatenate(  # noqa: E731
        [np.flatnonzero(ds.labels == c)[offset:offset + 10] for c in (0, 1)]))
    return pick(tr, 0), pick(tr, 10), pick(va, 0)


@pytest.fixture
def one_thread():
    """One CPU thread: the weight gradients are then summed in the same order packed or alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same_fit(a: train.FitResult, b: train.FitResult) -> None:
    np.testing.assert_array_equal(a.val_logits, b.val_logits)
    np.testing.assert_array_equal(a.last_logits, b.last_logits)
    assert a.history == b.history and set(a.view_logits) == set(b.view_logits)
    for v in a.view_logits:
        np.testing.assert_array_equal(a.view_logits[v], b.view_logits[v])
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k


def test_packed_members_equal_trainings_alone_bit_for_bit(parts, tmp_path, one_thread):
    """Three seeds (two on other images of the same size, one class-weighted group beside) trained
    packed by fit_many: every member's logits, history, best and last weights and checkpoints equal
    those of the same training run alone."""
    tr_a, tr_b, va = parts
    jobs = [{"train": tr, "val": va, "config": TINY, "seed": seed, "views": ("vflip",),
             "checkpoint_dir": tmp_path / f"packed-{seed}"} for tr, seed in ((tr_a, 0), (tr_b, 1), (tr_a, 2))]
    jobs.append({"train": tr_a, "val": va, "config": {**TINY, "class_weight": "balanced"}, "seed": 0,
                 "views": ("vflip",)})  # another config: trains alone
    together = train.fit_many(jobs, progress=False, pack=3)
    assert sum("trained packed: 3 trainings" in " ".join(r.notes) for r in together) == 3
    assert not any("trained packed" in n for n in together[3].notes)
    for i, (job, res) in enumerate(zip(jobs, together)):
        alone = train.fit(**{**job, "checkpoint_dir": tmp_path / f"alone-{i}" if i < 3 else None}, progress=False)
        _same_fit(res, alone)
        if i < 3:
            for name in ("last.pt", "best.pt"):
                a = torch.load(tmp_path / f"alone-{i}" / name, weights_only=True)
                b = torch.load(tmp_path / f"packed-{job['seed']}" / name, weights_only=True)
                assert _equal(a, b), (i, name)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_an_interrupted_packed_run_resumes_to_the_same_result(parts, tmp_path, one_thread):
    """Stopped after its second epoch, a packed run resumes packed from the members' checkpoints; with one
    member's checkpoints gone the members resume one after another. Both end where an
    uninterrupted run ends."""
    tr_a, tr_b, va = parts
    cfg = TrainConfig.from_dict({**TINY, "epochs": 3})
    dirs = [tmp_path / "a", tmp_path / "b"]
    runner = packed.finetune_packed([tr_a, tr_b], [va, va], cfg, [0, 1], (), dirs, progress=False)
    steps_per_epoch = -(-len(tr_a) // cfg.batch_size) + 1  # the steps and the epoch's end
    for _ in range(2 * steps_per_epoch):
        next(runner)
    runner.close()  # stopped: the checkpoints of epoch 2 are written (best.pt: epoch 1, validated meanwhile)
    assert torch.load(dirs[0] / "last.pt", weights_only=True)["epoch"] == 2
    resumed = train.run_to_end(packed.finetune_packed([tr_a, tr_b], [va, va], cfg, [0, 1], (), dirs, False))
    assert all(any("resumed from" in n and "at epoch 2" in n for n in r.notes) for r in resumed)
    assert all(any("trained packed" in n for n in r.notes) for r in resumed)
    for res, tr, seed in zip(resumed, (tr_a, tr_b), (0, 1)):
        _same_fit(res, train.fit(tr, va, cfg, seed=seed, views=(), progress=False))
    for name in ("last.pt", "best.pt"):
        (dirs[1] / name).unlink()
    mixed = train.run_to_end(packed.finetune_packed([tr_a, tr_b], [va, va], cfg, [0, 1], (), dirs, False))
    assert not any("trained packed" in n for r in mixed for n in r.notes)  # one finished, one from the start
    assert all(any("not packed: the checkpoints of seeds [0, 1] stand at different epochs ([0, 3])" in n
                   for n in r.notes) for r in mixed)
    for res, ref in zip(mixed, resumed):
        _same_fit(res, ref)


def test_a_packed_network_computes_what_its_members_compute():
    """Eval mode, several threads: member m's logits from its own channels equal the member's own."""
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(models.build_classifier("efficientnet_lite0", 3, weights=None).eval())
    net = packed.PackedClassifier(members).eval()
    assert net.drop_sites == 9  # the MBConv blocks of Lite0 with a skip and a non-zero rate
    xs = [torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in members]
    with torch.no_grad():
        out = net(torch.cat(xs, 1).contiguous(memory_format=torch.channels_last))
        assert out.shape == (4, 2, 3)
        for m, (member, x) in enumerate(zip(members, xs)):
            assert torch.equal(out[:, m], member(x)), m
            for (k, a), b in zip(member.state_dict().items(), net.member_state(m).values()):
                assert torch.equal(a, b), k
    net.train()
    with pytest.raises(ValueError, match="needs 9 stochastic-depth draws"):
        net(torch.cat(xs, 1))


def test_what_cannot_be_packed_is_refused_or_trained_alone(parts):
    tr_a, tr_b, va = parts
    cfg = TrainConfig.from_dict(TINY)
    assert packed.unpackable_reason(cfg) is None
    assert "resnet18" in packed.unpackable_reason(cfg.replace(backbone="resnet18"))
    assert "probe" in packed.unpackable_reason(cfg.replace(mode="probe"))
    assert "compile" in packed.unpackable_reason(cfg.replace(compile=True))
    with pytest.raises(ValueError, match="training images differ in number"):
        train.run_to_end(packed.finetune_packed([tr_a, tr_a.subset(np.arange(5))], [va, va], cfg, [0, 1], ()))
    with pytest.raises(ValueError, match="2 seeds for 1 training"):
        train.run_to_end(packed.finetune_packed([tr_a], [va], cfg, [0, 1], ()))
    with pytest.raises(ValueError, match="pack must be a whole number"):
        train.fit_many([], pack=0)
    # fit_many packs only what can be packed: sizes differ here, so each trains alone
    jobs = [{"train": tr, "val": va, "config": {**TINY, "epochs": 1}, "seed": 0, "views": ()}
            for tr in (tr_a, tr_a.subset(np.arange(12)))]
    groups = dispatch.pack_groups([(i, {**j, "views": ()}, cfg) for i, j in enumerate(jobs)], 4)
    assert [len(g) for g in groups] == [1, 1]
    groups = dispatch.pack_groups([(i, {"train": tr_a, "val": va, "views": ()}, cfg) for i in range(5)], 2)
    assert [len(g) for g in groups] == [2, 2, 1]


def test_packed_steps_through_the_graph_bookkeeping_match_eager_steps(monkeypatch):
    """TrainStep with the packed loss and its extra input (the draws) on the CPU, with a stand-in
    capture as in test_train: the graph path copies x, y and the draws into its static inputs on
    every replay, so its losses and weights equal eager packed steps'."""
    def fake_capture(opt):
        def capture(fn):
            out = torch.zeros(2)

            def replay():
                opt.zero_grad(set_to_none=False)
                out.copy_(fn())
            return replay, out
        return capture

    nets, opts = [], []
    for _ in range(2):
        members = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            members.append(models.build_classifier("efficientnet_lite0", 2, weights=None))
        nets.append(packed.PackedClassifier(members).train())
        opts.append(train.make_optimizer(nets[-1], 1e-3, 0.0, graphed=False))
    monkeypatch.setattr(train_step, "capture_graph", fake_capture(opts[1]))
    loss = packed.packed_loss([None, None])
    eager = train.TrainStep(nets[0], opts[0], None, False, batch_size=4, graphed=False, loss=loss)
    graphed = train.TrainStep(nets[1], opts[1], None, False, batch_size=4, graphed=True, loss=loss)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    for step in range(6):
        x = torch.randn(4, 6, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (4, 2))
        u = packed.draw_uniforms(gens, nets[0].drop_sites, 4, torch.float32, torch.device("cpu"))
        assert torch.equal(eager(x, y, u), graphed(x, y, u)), step
    assert graphed.counts == {"eager": 3, "graph": 3} and list(graphed.graphs) == [4]
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k
