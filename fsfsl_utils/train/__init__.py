"""Training: ``probe`` (frozen backbone, cached features, linear head), ``top`` (top blocks fine-tuned
over cached activations, :mod:`fsfsl_utils.train.top`) and ``finetune`` behind one call.

``fit(train, val, config, seed)`` returns the validation logits (plus logits of test-time views, for
TTA) and what was done. The config is one flat, typed object (:class:`fsfsl_utils.config.TrainConfig`),
as in nanoGPT; :mod:`fsfsl_utils.profiles` fills it. ``fit_many(jobs)`` runs several fine-tunings at
once (one CUDA stream each), each with the result it would have alone.

:func:`finetune` (``loop.py``) is one loop a reader can follow, shaped like pytorch/examples
imagenet/main.py (forward, loss, ``loss.backward()``, ``opt.step()``; lr / 10 every 30 epochs, the best
validation top-1 checkpoint kept, a checkpoint every epoch so that a rerun resumes) with the study's
own choices (Adam, lr 1e-3, batch 16, 50 epochs: that script's are SGD, lr 0.1, momentum 0.9, batch
256). Unlike that script, images stay on the device as uint8 and are cropped, flipped and normalised
there, a chunk of an epoch at a time, and the loss is read once per epoch, not per step; each epoch's
validation runs while the next epoch trains, and checkpoints are written by a background thread. On
CUDA: bf16 autocast, channels_last, the step captured as a CUDA graph (:class:`TrainStep`), and Adam
as one fused kernel. What each costs and gains is measured in ``benchmarks/RESULTS.md``.

Modules, each importing only those above it in this list: ``common`` (result, errors, class
weights), ``optim`` (optimiser and schedule), ``checkpoint``, ``step`` (one optimisation step),
``evaluate`` (predictions, validation), ``probe``, ``loop`` (the fine-tuning recipe), ``top`` and
``packed`` (built on the loop's pieces), ``dispatch`` (``fit``, ``fit_many``).
"""

from .checkpoint import CHECKSUM_KEY, LAST_KEYS, CheckpointWriter, content_digest, cpu_copy, load_checkpoint
from .common import FitResult, TrainingError, class_weights, epoch_seed, memory_format, run_to_end
from .dispatch import fit, fit_many
from .evaluate import Validation, device_logits, final_logits, predict
from .loop import finetune
from .optim import lr_at, make_optimizer, set_lr
from .probe import ProbeHead, train_head
from .step import TrainStep, capture_graph

__all__ = (
    "CHECKSUM_KEY", "LAST_KEYS", "CheckpointWriter", "FitResult", "ProbeHead", "TrainStep", "TrainingError",
    "Validation", "capture_graph", "class_weights", "content_digest", "cpu_copy", "device_logits", "epoch_seed",
    "final_logits", "finetune", "fit", "fit_many", "load_checkpoint", "lr_at", "make_optimizer", "memory_format",
    "predict", "run_to_end", "set_lr", "train_head",
)
