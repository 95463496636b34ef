"""One optimisation step (forward, loss, backward, Adam), eager or captured as a CUDA graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class _Graph:
    """One captured training step: its static inputs, the loss it refreshes, and its replay."""

    inputs: tuple[torch.Tensor, ...]
    loss: torch.Tensor
    replay: Callable[[], None]


class TrainStep:
    """One optimisation step (forward, loss, backward, Adam) on a batch of normalised images.

    With ``graphed`` (CUDA only) the step is captured as a CUDA graph once per batch size (the
    recipe's batch and an epoch's last, shorter batch: at most ``MAX_GRAPHS``) and replayed: at
    the recipe's batch of 16 a small network is bound by kernel launches, not by arithmetic, and a
    replay launches the whole step at once. Following PyTorch's whole-network capture recipe, the
    first ``WARMUP`` steps of each size run eagerly on a side stream, then one is captured. All
    graphs update the same weights, gradients and optimiser state. If capture fails, the sizes
    not yet captured run eagerly and ``notes`` says why. With ``compiled`` the model's forward and
    backward at the recipe's batch go through ``torch.compile`` (static shapes) first. The returned
    loss is a device tensor, valid until the next step.

    ``loss(net, x, y, *extra)`` replaces the recipe's weighted cross-entropy (a packed training,
    :mod:`fsfsl_utils.train.packed`, returns one loss per member; their sum is what is differentiated);
    a step is then called with the same ``extra`` tensors, which a graph copies in like ``x`` and ``y``.
    """

    WARMUP = 3
    MAX_GRAPHS = 2

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, weight: torch.Tensor | None, use_amp: bool,
                 batch_size: int, graphed: bool, compiled: bool = False,
                 loss: Callable[..., torch.Tensor] | None = None, label_smoothing: float = 0.0):
        self.model, self.opt, self.weight, self.use_amp = model, opt, weight, use_amp
        self.label_smoothing = label_smoothing
        self.loss = loss or self._cross_entropy
        self.batch_size, self.graphed = batch_size, graphed
        self.net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model, dynamic=False) if compiled else model
        self.device_type = next(model.parameters()).device.type
        self.graphs: dict[int, _Graph] = {}
        self.warmed: dict[int, int] = {}  # eager warm-up steps per batch size
        self.counts = {"eager": 0, "graph": 0}
        self.notes: list[str] = []

    def summary_notes(self) -> list[str]:
        """What a record says of these steps: why a capture or compilation fell back, how many replays."""
        counts = [f"training steps: {self.counts['graph']} CUDA graph replays, {self.counts['eager']} eager"] \
            if self.counts["graph"] else []
        return [*self.notes, *counts]

    def _cross_entropy(self, net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(x).float(), y, weight=self.weight, label_smoothing=self.label_smoothing)

    def _forward_backward(self, *inputs: torch.Tensor) -> torch.Tensor:
        # no autocast weight cache: a captured step must cast the weights it reads on every replay
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
            loss = self.loss(self._net_for(len(inputs[0])), *inputs)
        (loss if loss.ndim == 0 else loss.sum()).backward()
        self.opt.step()
        return loss.detach()

    def _net_for(self, batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The compiled model for the recipe's batch; the plain one for the short last batch (one
        compilation per training, not two)."""
        return self.net if batch == self.batch_size else self.model

    def _eager(self, *inputs: torch.Tensor) -> torch.Tensor:
        # after a capture the gradients live in the graph's memory: zero them in place, never drop them
        self.opt.zero_grad(set_to_none=not self.graphs)
        self.counts["eager"] += 1
        if self._net_for(len(inputs[0])) is self.model:
            return self._forward_backward(*inputs)
        try:  # compilation happens in the first steps of each batch size, before the optimiser steps
            return self._forward_backward(*inputs)
        except torch._dynamo.exc.TorchDynamoException as err:
            self.net = self.model
            self.notes.append(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                              "training the model uncompiled")
            self.opt.zero_grad(set_to_none=not self.graphs)
            return self._forward_backward(*inputs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        inputs = (x, y, *extra)
        graph = self.graphs.get(len(x))
        if graph is None:
            if not self.graphed or len(self.graphs) >= self.MAX_GRAPHS:
                return self._eager(*inputs)
            warmed = self.warmed.get(len(x), 0)
            if warmed < self.WARMUP:
                self.warmed[len(x)] = warmed + 1
                return _on_side_stream(lambda: self._eager(*inputs), x.is_cuda)
            graph = self._capture(inputs)
            if graph is None:
                return self._eager(*inputs)
        for static, given in zip(graph.inputs, inputs):
            static.copy_(given)
        graph.replay()
        self.counts["graph"] += 1
        return graph.loss

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Graph | None:
        static = tuple(t.clone() for t in inputs)
        first = not self.graphs
        if first:  # backward inside the first capture allocates the gradients all graphs share
            self.opt.zero_grad(set_to_none=True)

        def step() -> torch.Tensor:
            if not first:  # later graphs zero the shared gradients in place, then accumulate into them
                self.opt.zero_grad(set_to_none=False)
            return self._forward_backward(*static)

        try:
            replay, loss = capture_graph(step)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager steps
            self.graphed = False
            self.notes.append(f"CUDA graph capture (batch of {len(inputs[0])}) failed ({type(err).__name__}: "
                              f"{err}); steps not captured yet run eagerly")
            return None
        self.graphs[len(inputs[0])] = _Graph(static, loss, replay)
        return self.graphs[len(inputs[0])]


class AveragedStep:
    """A :class:`TrainStep` followed by an update of an exponential moving average of the weights
    (``ema``: :class:`torch.optim.swa_utils.AveragedModel`, batch-norm statistics averaged too); the
    average is what a training with ``ema_decay`` > 0 validates and keeps."""

    def __init__(self, step: TrainStep, model: nn.Module, ema: torch.optim.swa_utils.AveragedModel):
        self.step, self.model, self.ema = step, model, ema

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        loss = self.step(*inputs)
        self.ema.update_parameters(self.model)
        return loss

    def summary_notes(self) -> list[str]:
        return self.step.summary_notes()


def weight_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers: after each step
    ``avg = decay * avg + (1 - decay) * weights`` (the first step copies the weights)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def capture_graph(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture ``fn`` as a CUDA graph (nothing runs yet); return its replay and the tensor it refreshes."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def _on_side_stream(fn: Callable[[], torch.Tensor], cuda: bool) -> torch.Tensor:
    """Run ``fn`` on a side stream (PyTorch's rule for warm-up before capture); plainly off CUDA."""
    if not cuda:
        return fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out
