"""Packed fine-tuning: several trainings of one recipe (the seeds of one arm) as one network.

At the recipe's batch of 16 a fine-tuning step of EfficientNet-Lite0 leaves a GPU mostly idle: it
is bound by kernel launches, not by arithmetic. Packing ``M`` trainings into one network keeps the
number of kernels and makes each one ``M`` times larger (the idea of Packed-Ensembles, Laurent et
al., ICLR 2023). Every convolution gets ``M`` times the channels and ``M`` times the groups, so
member ``m``'s channels only ever meet member ``m``'s channels; batch norm works per channel, hence
per member; Adam works per element, hence per member. Member ``m``'s images are channels
``3m .. 3m+2`` of the input and its weights the ``m``-th slice (dimension 0) of every tensor,
under the parameter names of :class:`~fsfsl_utils.models.Classifier`. The loss is the sum of the
members' losses, so each member's gradient is its own.

Each member keeps its own random numbers: its shuffles and augmentation come from its own
generator as in :func:`fsfsl_utils.train.finetune`, and EfficientNet's stochastic depth is drawn
in the same calls a training alone makes, from a generator seeded as that training seeds its
global one. The draws are made before each step and enter it as a tensor, so a CUDA graph of the
packed step replays with each step's own draws. The forward pass is the members' own, bit for bit;
gradients are too where the grouped kernels sum in the single kernels' order: on a CPU with one
thread at small batches and inputs, so there every member's result equals that training run alone
(``tests/test_packed.py``). Elsewhere (several threads, larger batches, where oneDNN reduces a
grouped 1x1 convolution's weight gradient in another order; any GPU) they differ by rounding
(about 1e-6 of a gradient), which training then amplifies as it amplifies any rounding: the
results agree within a tolerance that ``benchmarks/pack_check.py`` measures.

Checkpoints are written per member in :func:`~fsfsl_utils.train.finetune`'s format, so a member
resumes, or is recorded, as if it had trained alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from ..config import TrainConfig
from ..data import Dataset
from . import checkpoint, common, evaluate, loop, optim, step

PACKABLE_BACKBONES = ("efficientnet_lite0",)


def unpackable_reason(cfg: TrainConfig) -> str | None:
    """Why trainings of ``cfg`` cannot be packed, or None when they can."""
    if cfg.mode != "finetune":
        return f"only fine-tunings are packed, not mode {cfg.mode!r}"
    if cfg.backbone not in PACKABLE_BACKBONES:
        return f"packing supports {', '.join(PACKABLE_BACKBONES)}, not {cfg.backbone!r}"
    if cfg.compile:
        return "a packed network is not compiled (compile=True)"
    if cfg.ema_decay:
        return "a packed network keeps no average of its members' weights (ema_decay > 0)"
    return None


def _has_skip(block: nn.Module) -> bool:
    """Whether an MBConv block adds its input back (and so draws stochastic depth in training)."""
    args = block._block_args
    return bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)


class PackedClassifier(nn.Module):
    """``M`` EfficientNet-Lite :class:`~fsfsl_utils.models.Classifier` s as one network.

    ``forward(x, uniforms)`` takes ``B x 3M x H x W`` (member ``m`` on channels ``3m .. 3m+2``) and,
    in training, the stochastic-depth draws of :func:`draw_uniforms`; it returns ``B x M x K`` logits.
    """

    def __init__(self, members: Sequence[models.Classifier]):
        super().__init__()
        if len(members) < 1:
            raise ValueError("a packed network needs at least one member")
        if not all(isinstance(m.backbone, models.LiteFeatures) for m in members):
            raise ValueError(f"packing supports {', '.join(PACKABLE_BACKBONES)} classifiers only")
        n = self.members = len(members)
        self.features, self.classes = members[0].head.in_features, members[0].head.out_features
        states = [m.state_dict() for m in members]
        if any(s.keys() != states[0].keys() or any(s[k].shape != v.shape for k, v in states[0].items())
               for s in states):
            raise ValueError("packed members must have the same architecture and number of classes")
        net = copy.deepcopy(members[0])  # the structure and the parameter names
        for prefix, module in net.named_modules():
            if isinstance(module, nn.Conv2d):
                module.in_channels, module.out_channels, module.groups = \
                    module.in_channels * n, module.out_channels * n, module.groups * n
            elif isinstance(module, nn.BatchNorm2d):
                module.num_features *= n
            elif isinstance(module, nn.Linear):
                module.out_features *= n
            for store in (module._parameters, module._buffers):
                for key, tensor in store.items():
                    if tensor is None:
                        continue
                    stacked = pack_tensors([s[f"{prefix}.{key}" if prefix else key] for s in states])
                    store[key] = nn.Parameter(stacked, tensor.requires_grad) \
                        if isinstance(tensor, nn.Parameter) else stacked
        self.backbone, self.head = net.backbone, net.head
        net = self.backbone.net
        if any(b.has_se for b in net._blocks):
            raise ValueError("packing does not support squeeze-and-excitation blocks (EfficientNet-Lite has none)")
        self.rates = []  # each block's stochastic-depth rate, computed as EfficientNet's extract_features does
        for idx in range(len(net._blocks)):
            rate = net._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / len(net._blocks)
            self.rates.append(rate)
        self.drop_sites = sum(1 for b, r in zip(net._blocks, self.rates) if r and _has_skip(b))

    def forward(self, x: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.Tensor:
        net = self.backbone.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        site = 0
        for block, rate in zip(net._blocks, self.rates):
            inputs = x
            if block._block_args.expand_ratio != 1:
                x = block._swish(block._bn0(block._expand_conv(x)))
            x = block._swish(block._bn1(block._depthwise_conv(x)))
            x = block._bn2(block._project_conv(x))
            if _has_skip(block):
                if rate and self.training:
                    if uniforms is None or site >= len(uniforms):
                        raise ValueError(f"training a packed network needs {self.drop_sites} stochastic-depth "
                                         "draws per step (draw_uniforms)")
                    x = self._drop_connect(x, rate, uniforms[site])
                    site += 1
                x = x + inputs
        x = net._swish(net._bn1(net._conv_head(x)))
        feats = x.mean(dim=(2, 3))
        f, k = self.features, self.classes
        return torch.stack([F.linear(feats[:, m * f:(m + 1) * f], self.head.weight[m * k:(m + 1) * k],
                                     self.head.bias[m * k:(m + 1) * k]) for m in range(self.members)], dim=1)

    def _drop_connect(self, x: torch.Tensor, rate: float, uniform: torch.Tensor) -> torch.Tensor:
        """EfficientNet's drop_connect per member: ``uniform`` (``B x M``) holds each member's draws,
        made in the activations' dtype (as drop_connect draws them) by :func:`finetune_packed`."""
        keep = 1 - rate
        mask = torch.floor(uniform.to(x.dtype) + keep).view(len(x), self.members, 1, 1, 1)
        return (x.unflatten(1, (self.members, -1)) / keep * mask).flatten(1, 2)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s weights as a :class:`~fsfsl_utils.models.Classifier` state dict (views)."""
        return unpack_tensors(self.state_dict(), m, self.members)


def pack_tensors(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' tensors stacked on dimension 0; a scalar (batch norm's step count, Adam's step)
    is shared and must be equal in all."""
    if tensors[0].ndim == 0:
        if any(not torch.equal(t, tensors[0]) for t in tensors):
            raise ValueError("packed members must have taken the same number of steps")
        return tensors[0].clone()
    return torch.cat(list(tensors))


def unpack_tensors(state: dict, m: int, members: int) -> dict:
    """Member ``m``'s slice of every tensor of a packed state dict (scalars as they are)."""
    return {k: v if v.ndim == 0 else v.chunk(members)[m] for k, v in state.items()}


def member_optimizer_state(state: dict, m: int, members: int) -> dict:
    """Member ``m``'s part of a packed Adam's ``state_dict()`` (what its own Adam would hold)."""
    return {"state": {i: unpack_tensors(s, m, members) for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def pack_optimizer_states(states: Sequence[dict]) -> dict:
    """The packed Adam state of the members' Adam ``state_dict()`` s (resuming packed)."""
    return {"state": {i: {k: pack_tensors([s["state"][i][k] for s in states]) for k in st}
                      for i, st in states[0]["state"].items()},
            "param_groups": states[0]["param_groups"]}


def draw_uniforms(generators: Sequence[torch.Generator], sites: int, batch: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """One step's stochastic-depth draws, ``sites x batch x M``: member ``m`` draws from its own
    generator, one ``batch x 1 x 1 x 1`` call per site in block order, as EfficientNet's
    drop_connect does on the global generator of a training alone."""
    if sites == 0:
        return torch.empty(0, batch, len(generators), dtype=dtype, device=device)
    columns = [torch.cat([torch.rand((batch, 1, 1, 1), generator=g, dtype=dtype, device=device).view(batch)
                          for _ in range(sites)]) for g in generators]
    return torch.stack(columns, 1).view(sites, batch, len(generators))


def packed_loss(weights: Sequence[torch.Tensor | None], label_smoothing: float = 0.0) -> Callable[..., torch.Tensor]:
    """The members' weighted cross-entropies (``M``), for :class:`~fsfsl_utils.train.TrainStep`."""
    def loss(net: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             uniforms: torch.Tensor) -> torch.Tensor:
        logits = net(x, uniforms)
        return torch.stack([F.cross_entropy(logits[:, m].float(), y[:, m], weight=w, label_smoothing=label_smoothing)
                            for m, w in enumerate(weights)])
    return loss


class PackedValidation(evaluate.Validation):
    """:class:`~fsfsl_utils.train.Validation` of a packed network: each member on its own
    validation images; ``finish()`` gives one accuracy per member and ``logits`` is ``M x N x K``."""

    def __init__(self, model: PackedClassifier, x_vals: Sequence[torch.Tensor], y_vals: Sequence[np.ndarray],
                 cfg: TrainConfig, use_amp: bool, inputs: torch.Tensor | None):
        super().__init__(model, x_vals[0], y_vals[0], cfg, use_amp, inputs)
        self.x_vals, self.y_vals = list(x_vals), [np.asarray(y) for y in y_vals]

    def _logits(self) -> torch.Tensor:
        return evaluate.device_logits(self.model, self.x_vals, self.cfg, self.use_amp, inputs=self.inputs)

    def host_logits(self, pending: torch.Tensor) -> np.ndarray:
        return pending.cpu().numpy().astype(np.float64).transpose(1, 0, 2)  # members first

    def accuracy(self) -> list[float]:  # type: ignore[override]
        return [float((lg.argmax(1) == y).mean()) for lg, y in zip(self.logits, self.y_vals)]


def check_packable(trains: Sequence[Dataset], vals: Sequence[Dataset], cfg: TrainConfig) -> None:
    """ValueError unless these trainings can be packed: one packable config, the same numbers of
    training and validation images and the same classes in every member."""
    reason = unpackable_reason(cfg)
    if reason:
        raise ValueError(f"cannot pack: {reason}")
    for what, parts in (("training", trains), ("validation", vals)):
        if len({len(p) for p in parts}) != 1:
            raise ValueError(f"cannot pack: the members' {what} images differ in number "
                             f"({sorted({len(p) for p in parts})})")
    if len({tuple(p.class_names) for p in (*trains, *vals)}) != 1:
        raise ValueError("cannot pack: the members' class names differ")


@dataclass
class _Member:
    """One training of a packed network: its own model (built and resumed as a training alone would
    be, later given its result's weights), its optimiser until packed, and its bookkeeping."""

    model: models.Classifier
    opt: torch.optim.Optimizer | None
    start: int
    best_acc: float
    best_state: dict | None
    history: list[dict]
    notes: list[str]
    run_config: dict
    ckpt: Path | None


def _resumed_member(seed: int, tr: Dataset, va: Dataset, ckpt: Path | None, cfg: TrainConfig, dev: torch.device,
                    graphed: bool) -> _Member:
    """A member's model and optimiser as :func:`fsfsl_utils.train.finetune` makes them, resumed from
    its checkpoint when there is one."""
    torch.manual_seed(seed)  # the head's initial weights, as a training alone draws them
    model = models.build_classifier(cfg.backbone, len(tr.class_names), cfg.weights)
    model = model.to(dev).to(memory_format=common.memory_format(cfg.channels_last))
    opt = optim.make_optimizer(model, cfg.lr, cfg.weight_decay, graphed, cfg.fused_adam)
    notes: list[str] = []
    run_config = {**cfg.as_dict(), "seed": seed, "n_train": len(tr), "n_val": len(va)}
    start, best_acc, best_state, history = checkpoint.resume(ckpt, model, opt, dev, notes, run_config)
    return _Member(model, opt, start, best_acc, best_state, history, notes, run_config, ckpt)


def finetune_packed(trains: Sequence[Dataset], vals: Sequence[Dataset], cfg: TrainConfig, seeds: Sequence[int],
                    views: Sequence[str], checkpoint_dirs: Sequence[str | Path | None] | None = None,
                    progress: bool | None = None) -> Generator[None, None, list[common.FitResult]]:
    """:func:`fsfsl_utils.train.finetune` of ``len(seeds)`` trainings as one packed network; a
    generator (it pauses after every step) whose value is each member's ``FitResult``, as the
    member would have it alone. Members whose checkpoints stand at different epochs are trained
    one after another instead (each resumes alone)."""
    n = len(seeds)
    if not n == len(trains) == len(vals):
        raise ValueError(f"{len(seeds)} seeds for {len(trains)} training and {len(vals)} validation parts")
    check_packable(trains, vals, cfg)
    ckpts = [Path(c) if c else None for c in (checkpoint_dirs or [None] * n)]
    dev = models.pick_device(cfg.device)
    use_amp = cfg.amp and dev.type == "cuda"
    graphed = cfg.cuda_graphs and dev.type == "cuda"
    members = [_resumed_member(seed, tr, va, ckpt, cfg, dev, graphed)
               for seed, tr, va, ckpt in zip(seeds, trains, vals, ckpts)]
    starts = {m.start for m in members}
    pending = {bool(m.history) and "val_accuracy" not in m.history[-1] for m in members}
    if len(starts) > 1 or len(pending) > 1:  # resume each where it stopped, one after another
        del members
        alone = []
        for tr, va, seed, ckpt in zip(trains, vals, seeds, ckpts):
            result = yield from loop.finetune_turns(tr, va, cfg, seed, views, ckpt, progress)
            result.notes.append(f"not packed: the checkpoints of seeds {list(seeds)} stand at different epochs "
                                f"({sorted(starts)}); each resumed alone")
            alone.append(result)
        return alone
    packed = Packed(members, trains, vals, cfg, seeds, dev, use_amp, graphed)
    seconds = yield from loop.train_epochs(packed, cfg, progress)
    return packed.results(views, seconds)


class Packed:
    """Several fine-tunings of one config as one network, as :func:`fsfsl_utils.train.loop.train_epochs`
    trains it: the packed model, its optimiser and the one step with the members' summed loss; each
    member's own data, random draws (augmentation and stochastic depth), validation accuracy, best
    epoch and checkpoints, so that each member's result is the one it would have alone."""

    def __init__(self, members: list[_Member], trains: Sequence[Dataset], vals: Sequence[Dataset], cfg: TrainConfig,
                 seeds: Sequence[int], dev: torch.device, use_amp: bool, graphed: bool):
        self.members, self.vals, self.cfg, self.seeds = members, list(vals), cfg, list(seeds)
        self.dev, self.use_amp, self.n = dev, use_amp, len(members)
        self.start = members[0].start
        self.pending = bool(members[0].history) and "val_accuracy" not in members[0].history[-1]
        self.desc = f"epochs ({self.n} packed)"
        model = PackedClassifier([m.model for m in members])
        self.model = model.to(dev).to(memory_format=common.memory_format(cfg.channels_last))
        self.opt = optim.make_optimizer(self.model, cfg.lr, cfg.weight_decay, graphed, cfg.fused_adam)
        if self.start > 0:
            checkpoint.load_optimizer_state(self.opt, pack_optimizer_states([m.opt.state_dict() for m in members]))
        for member in members:
            member.opt = None  # packed from here on
        weights = [common.loss_weights(tr.labels, len(tr.class_names), cfg.class_weight, dev) for tr in trains]
        self.x_trains = [torch.from_numpy(tr.images).to(dev) for tr in trains]
        self.labels = [torch.from_numpy(np.array(tr.labels)) for tr in trains]
        self.y_trains = [common.training_targets(tr, dev) for tr in trains]
        on_device: dict[int, torch.Tensor] = {}  # one copy of validation images the members share
        for va in vals:
            if id(va) not in on_device:
                on_device[id(va)] = torch.from_numpy(va.images).to(dev)
        self.x_vals = [on_device[id(va)] for va in vals]
        self.member_inputs = None
        if dev.type == "cuda":  # on a GPU validation images are transformed once, each set once
            transformed: dict[int, torch.Tensor] = {}
            for x in self.x_vals:
                if id(x) not in transformed:
                    transformed[id(x)] = evaluate.preprocess_all(x, cfg)
            self.member_inputs = [transformed[id(x)] for x in self.x_vals]
        layout = common.memory_format(cfg.channels_last)
        val_inputs = torch.cat(self.member_inputs, 1).contiguous(memory_format=layout) \
            if self.member_inputs is not None else None
        self.step = step.TrainStep(self.model, self.opt, None, use_amp, cfg.batch_size, graphed,
                                   loss=packed_loss(weights, cfg.label_smoothing))
        self.draw_dtype = torch.bfloat16 if use_amp else torch.float32
        self.evaluated = self.model
        self.validation = PackedValidation(self.model, self.x_vals, [va.labels for va in vals], cfg, use_amp,
                                           val_inputs)
        self.best_logits: list[np.ndarray | None] = [None] * self.n

    def zero_losses(self) -> torch.Tensor:
        return torch.zeros(self.n, device=self.dev)

    def epoch_batches(self, epoch: int) -> Iterator[tuple[tuple[torch.Tensor, ...], int]]:
        """Each member's batch of its own views side by side on the channel axis, its labels, and its
        stochastic-depth draws, from its own generators (seeded by its seed and the epoch)."""
        cfg, dev = self.cfg, self.dev
        gens = [torch.Generator().manual_seed(common.epoch_seed(seed, epoch)) for seed in self.seeds]
        drops = [torch.Generator(device=dev).manual_seed(common.epoch_seed(seed, epoch)) for seed in self.seeds]
        perms = [common.epoch_order(labels, cfg.sampler, g).to(dev) for labels, g in zip(self.labels, gens)]
        y_epochs = [y[p] for y, p in zip(self.y_trains, perms)]
        chunk = 512 if dev.type == "cuda" else cfg.batch_size
        batches = zip(*(loop.epoch_views(x, p, cfg, g, chunk) for x, p, g in zip(self.x_trains, perms, gens)))
        for parts in batches:
            s, size = parts[0][0], len(parts[0][1])
            x = torch.cat([v for _, v in parts], 1)
            x = x.contiguous(memory_format=common.memory_format(cfg.channels_last))
            y = torch.stack([ye[s:s + size] for ye in y_epochs], 1)
            u = draw_uniforms(drops, self.model.drop_sites, size, self.draw_dtype, dev)
            yield (x, y, u), size

    def settle(self, writer: checkpoint.CheckpointWriter) -> None:
        """Finish the pending validation: each member's accuracy, best epoch and best checkpoint."""
        accs = self.validation.finish()
        if accs is None:
            return
        state = None
        for m, (member, acc) in enumerate(zip(self.members, accs)):
            member.history[-1]["val_accuracy"] = acc
            if acc > member.best_acc:
                state = state if state is not None else self.validation.model.state_dict()
                member.best_acc, self.best_logits[m] = acc, self.validation.logits[m]
                member.best_state = checkpoint.cpu_copy(unpack_tensors(state, m, self.n))
                if member.ckpt:
                    writer.save(member.best_state, member.ckpt / "best.pt")

    def end_epoch(self, epoch: int, totals: list[float], writer: checkpoint.CheckpointWriter) -> None:
        packed_state, opt_state = self.model.state_dict(), self.opt.state_dict()
        for m, member in enumerate(self.members):
            member.history.append({"epoch": epoch + 1, "train_loss": totals[m] / len(self.x_trains[m]),
                                   "lr": optim.lr_at(self.cfg, epoch)})
            if member.ckpt:
                writer.save({"epoch": epoch + 1, "model": unpack_tensors(packed_state, m, self.n),
                             "optimizer": member_optimizer_state(opt_state, m, self.n), "best_acc": member.best_acc,
                             "history": member.history, "config": member.run_config}, member.ckpt / "last.pt")

    def results(self, views: Sequence[str], train_seconds: float) -> list[common.FitResult]:
        """Each member's result, as it would have it alone (its own network, given its weights)."""
        step_notes = self.step.summary_notes()
        out = []
        for m, member in enumerate(self.members):
            net = member.model
            net.load_state_dict(unpack_tensors(self.model.state_dict(), m, self.n))  # the last epoch's weights
            val_logits, view_logits, last_logits = evaluate.final_logits(
                net, self.x_vals[m], self.vals[m], views, self.cfg, self.use_amp,
                self.member_inputs[m] if self.member_inputs is not None else None,
                self.validation.logits[m] if self.validation.logits is not None else None, member.best_state,
                self.best_logits[m])
            notes = member.notes + step_notes + [
                f"trained packed: {self.n} trainings of this config as one network (fsfsl_utils.packed), seeds "
                f"{self.seeds}", common.best_epoch_note(member.best_acc)]
            out.append(common.FitResult("finetune", val_logits, view_logits, net, str(self.dev), member.history,
                                        {"train": train_seconds}, notes, last_logits))
        return out
