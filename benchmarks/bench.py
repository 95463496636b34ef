"""Benchmark: the kit against the naive pipeline, side by side, in one run on one machine.

    python benchmarks/bench.py [--quick] [--images 256] [--out benchmarks/results.json]

Workloads (every claim is a ratio against a baseline measured in the same run):

1. ``features``: the kit's probe path (images in memory as uint8, PIL-exact resize, channels_last,
   inference_mode, measured batch size) vs the naive path a user would write from the study's
   code (torchvision ImageFolder over exported PNGs + DataLoader + PIL transforms + eager model in
   eval mode). The features must agree within fp32 tolerance; the benchmark asserts it.
2. ``study``: the four study trainings (01-04, CPU profile) end to end, with the feature cache cold
   and warm, vs the naive path that writes each expanded set as PNGs and recomputes features for
   every experiment.
3. ``finetune``: fine-tune throughput of the kit's loop (uint8 on the device, batched crops, bf16
   autocast and channels_last on CUDA) vs a pytorch/examples imagenet-style loop (PIL decode and
   transforms per epoch in DataLoader workers, fp32), same model and batch.
4. ``step``: the recipe's training step (batch 16) in each variant of :func:`step_variants`
   (the default, Adam not fused, and on CUDA ``torch.compile``), with its set-up time, and on the
   default variant the epoch's short last batch, eager and captured. Workload ``paper`` then uses
   the variant with the lowest estimated paper time.
5. ``paper``: the paper profile's four trainings (study counts, 50 epochs; the GPU headline), one
   after another and then at once (:func:`fsfsl_utils.train.fit_many`).

Each row: workload, kit seconds, baseline seconds, speed-up, kit img/s, and the fraction of the
machine's peak (model FLOPs per image x img/s / measured fp32 matmul FLOP/s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fsfsl_utils import augment, data, experiment, features, models, train
from fsfsl_utils.config import TrainConfig
from fsfsl_utils.io import atomic_write_json
from fsfsl_utils.progress import set_progress

MIN_FEATURE_COSINE = 0.999  # kit vs PIL-resized features: the resizers differ in 0.1% of pixels, by one gray level


def matmul_flops(seconds: float = 1.0, n: int = 1024, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul FLOP/s on this machine (the 'peak' of the peak fraction)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def model_flops(backbone: str, size: int) -> float:
    """Forward FLOPs per image (2 x multiply-adds), scaled from 224 px."""
    return models.get_spec(backbone).flops_224 * (size / 224) ** 2


def synthetic_dataset(n_per_class: dict[str, int], size: int = 300, seed: int = 0) -> data.Dataset:
    """ELPV-shaped random images (for timing where the data set cannot travel, e.g. a GPU box).

    Noise around a gray level that drops by 40 per class: the time depends only on counts and
    shapes, and the classes are learnable, so a run's validation accuracy shows that training works.
    """
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[c] * n for c, n in enumerate(n_per_class.values())]).astype(np.int64)
    base = (150 - 40 * labels).reshape(-1, 1, 1)
    images = np.clip(base + rng.normal(0, 30, (len(labels), size, size)), 0, 255).astype(np.uint8)
    meta = data.make_meta([f"syn{i:05d}.png" for i in range(len(labels))], labels, split=["train"] * len(labels))
    return data.Dataset(images, meta, list(n_per_class))


def paper_counts() -> dict[str, dict[str, int]]:
    """Training images per class of each study step: the study's split expanded by the step's policy."""
    return {step: augment.get_policy(experiment.STEPS[step]["policy"]).counts(data.STUDY_TRAIN_COUNTS)
            for step in experiment.STUDY_STEPS}


def bench_paper(device: str, epochs: int, quick: bool, peak: float, report: Callable[[dict], None] = print,
                resnet_epochs: int = 2, variant: dict | None = None, work: Path | None = None) -> list[dict]:
    """Workload 'paper': the paper profile's four trainings (study counts, 50 epochs) timed on ``device``.

    Synthetic ELPV-shaped images: the time depends on counts and shapes, not on pixel values.
    As in the main job, each training writes a checkpoint every epoch (under ``work``).
    On CUDA a ResNet50 row follows (random weights: its time does not depend on the values):
    ``resnet_epochs`` epochs of the largest set, scaled to the four trainings, an estimate.
    """
    from fsfsl_utils import profiles

    resolved = profiles.resolve("paper", device=device, epochs=epochs)
    base = resolved["config"].as_dict()
    counts, val_counts = paper_counts(), dict(data.STUDY_VAL_COUNTS)
    if quick:
        counts = {step: {c: max(2, n // 200) for c, n in per_class.items()} for step, per_class in counts.items()}
        val_counts = {c: 4 for c in val_counts}
        base.update(input_size=32)
    cfg = {**base, **(variant or {})}
    val = synthetic_dataset(val_counts, seed=99)
    val.meta["split"] = "val"
    rows, total_s, total_n = [], 0.0, 0
    flops = 3 * model_flops(cfg["backbone"], cfg["input_size"])
    fallbacks: list[str] = []
    sets = {step: synthetic_dataset(per_class, seed=1) for step, per_class in counts.items()}  # made once

    def train_once(tr: data.Dataset, ckpt: Path | None, cfg: dict) -> tuple[float, train.FitResult]:
        return timed(lambda: train.fit(tr, val, cfg, views=(), progress=False, checkpoint_dir=ckpt))

    for step, tr in sets.items():
        ckpt = work / "checkpoints" / step if work else None
        try:
            seconds, fit = train_once(tr, ckpt, cfg)
        except Exception as err:  # noqa: BLE001 - a measured lever that breaks: the kit's defaults instead
            if cfg == base:
                raise
            fallbacks.append(f"{step}: variant {variant} failed ({type(err).__name__}: {err}); "
                             "this and the later trainings use the default config")
            print(fallbacks[-1], file=sys.stderr, flush=True)
            cfg, variant = dict(base), None
            if ckpt:
                shutil.rmtree(ckpt, ignore_errors=True)
            seconds, fit = train_once(tr, ckpt, cfg)
        n = len(tr) * cfg["epochs"]
        total_s, total_n = total_s + seconds, total_n + n
        rows.append(row(f"paper {step} ({fit.device}, {cfg['backbone']}, {cfg['epochs']} ep)",
                        seconds, float("nan"), n, flops, peak,
                        {"train_seconds": round(fit.timings["train"], 2), "variant": variant or {},
                         "checkpoints": "every epoch" if ckpt else "none",
                         "notes": resolved["notes"] + fallbacks[-1:] + fit.notes,
                         "val_accuracy_last_epoch": fit.history[-1]["val_accuracy"]}))
        report(rows[-1])
    rows.append(row(f"paper: the four trainings together ({cfg['backbone']})", total_s, float("nan"), total_n,
                    flops, peak, {"target_s": 180, "notes": fallbacks}))
    report(rows[-1])
    # the same four at once (train.fit_many: turns step by step, one CUDA stream each), against the above
    jobs = [{"train": tr, "val": val, "config": cfg, "views": (),
             "checkpoint_dir": work / "checkpoints-at-once" / step if work else None} for step, tr in sets.items()]
    try:
        seconds, fits = timed(lambda: train.fit_many(jobs, progress=False))
    except Exception as err:  # noqa: BLE001 - the rows above stand
        message = f"the four trainings at once (train.fit_many) failed: {type(err).__name__}: {err}"
        print(message, file=sys.stderr, flush=True)
        rows[-1]["notes"].append(message)  # the row object main() keeps: written with the next row
    else:
        how = "a CUDA stream each" if models.pick_device(device).type == "cuda" else "in turn"
        rows.append(row(f"paper: the four at once, {how} ({cfg['backbone']})", seconds, total_s, total_n, flops,
                        peak, {"target_s": 180, "naive": "the four trainings one after another (the row above)",
                               "val_accuracy_last_epoch": [f.history[-1]["val_accuracy"] for f in fits]}))
        report(rows[-1])
    if models.pick_device(device).type == "cuda" and not quick and resnet_epochs:
        r50 = {**cfg, "backbone": "resnet50", "weights": None, "epochs": resnet_epochs}
        tr = sets["03_full_augment"]
        seconds, fit = timed(lambda: train.fit(tr, val, r50, views=(), progress=False))
        # scaled by training images (each epoch's validation scaled with it: a rough estimate)
        estimate = fit.timings["train"] * total_n / (len(tr) * resnet_epochs)
        rows.append(row(f"paper with ResNet50 (random weights, {resnet_epochs} ep of 03, scaled: estimate)",
                        estimate, float("nan"), total_n, 3 * model_flops("resnet50", cfg["input_size"]), peak,
                        {"measured_seconds": round(seconds, 2), "measured_images": len(tr) * resnet_epochs,
                         "measured_train_seconds": round(fit.timings["train"], 2), "notes": fit.notes,
                         "val_accuracy_last_epoch": fit.history[-1]["val_accuracy"]}))
        report(rows[-1])
    return rows


STEP_KEYS = ("channels_last", "amp", "fused_adam", "compile")  # training parameters the step variants set
LAST_BATCH = 8  # the short last batch of an epoch of 01 at batch 16 (1,112 images = 69 x 16 + 8)


def step_variants(cuda: bool) -> list[dict]:
    """The training-step variants workload 'step' times: the kit's default first, then Adam as a few
    kernels per group of tensors (not fused; the default before fused Adam was measured 11% faster
    per step on an H200) and, on CUDA, the default plus torch.compile (a GPU run has minutes and each
    compilation costs some; on a CPU it is left out). Measured before and dropped: NCHW (35-50% slower
    on an H200), fp32 (27% slower) and cuDNN benchmark mode (no effect)."""
    defaults = TrainConfig()
    base = {key: getattr(defaults, key) for key in STEP_KEYS} | {"amp": cuda and defaults.amp}
    variants = [base, {**base, "fused_adam": not base["fused_adam"]}]
    return variants + [{**base, "compile": True}] if cuda else variants


def variant_name(variant: dict, cuda: bool) -> str:
    parts = ["channels_last" if variant["channels_last"] else "NCHW", "bf16" if variant["amp"] and cuda else "fp32"]
    parts += ["fused Adam" if variant["fused_adam"] else "foreach Adam"] + ["torch.compile"] * bool(variant["compile"])
    return ", ".join(parts)


def bench_step(device: str, backbone: str, size: int, peak: float, batch_size: int = 16, steps: int = 100,
               report: Callable[[dict], None] = print,
               failures: list[str] | None = None) -> tuple[list[dict], dict]:
    """Workload 'step': the recipe's training step in each of :func:`step_variants` (graph replays on
    CUDA), its set-up (warm-up, compilation, capture) and the eval forward that validates every
    epoch. The default variant also times the epoch's short last batch, eager and captured. Returns
    the rows and the variant with the lowest estimated paper-profile time, which workload paper uses.
    A variant that raises is left out and said in ``failures`` (a GPU run has one try).
    """
    dev = models.pick_device(device)
    cuda = dev.type == "cuda"
    rows, best, best_cost = [], {}, float("inf")
    train_images = sum(sum(per_class.values()) for per_class in paper_counts().values())
    val_images = sum(data.STUDY_VAL_COUNTS.values())
    # one untimed run first: the process's start-up (CUDA context, cuDNN's kernel choice for these
    # shapes) would otherwise count as the first variant's set-up (15 s of it on an H200)
    with contextlib.suppress(Exception):  # a variant that breaks is reported by the loop below
        _time_step(dev, backbone, size, batch_size, 1, step_variants(cuda)[0])
    for i, variant in enumerate(step_variants(cuda)):
        name = f"step {variant_name(variant, cuda)} ({dev.type}, {size}px, batch {batch_size})"
        try:
            timing = _time_step(dev, backbone, size, batch_size, steps, variant,
                                last_batch=LAST_BATCH if i == 0 else 0)
        except Exception as err:  # noqa: BLE001 - one failing variant must not cost the others
            message = f"{name}: failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            print(message, file=sys.stderr, flush=True)
            if failures is not None:
                failures.append(message)
            continue
        # the paper profile: 50 epochs of the four training sets, one validation pass per epoch each,
        # and each training's set-up once (a compile variant after the first finds its kernels in
        # torch's on-disk cache, as the later notebooks of a main job do)
        cost = 50 * (train_images / batch_size * timing["step_s"] + 4 * val_images / timing["eval_img_per_s"]) \
            + 4 * timing["setup_s"]
        extra = {"ms_per_step": round(1000 * timing["step_s"], 3), "setup_s": round(timing["setup_s"], 2),
                 "eval_img_per_s": round(timing["eval_img_per_s"], 1), "estimated_paper_s": round(cost, 1),
                 "variant": variant, "notes": timing["notes"]}
        extra.update({k: v for k, v in timing.items() if k.startswith("last_batch")})
        rows.append(row(name, timing["step_s"] * steps, float("nan"), batch_size * steps,
                        3 * model_flops(backbone, size), peak, extra))
        report(rows[-1])
        usable = not any("failed" in note for note in timing["notes"])  # a fallback is not the variant
        if usable and cost < best_cost:
            best, best_cost = variant, cost
    return rows, best


def _time_step(dev: torch.device, backbone: str, size: int, batch_size: int, steps: int, variant: dict,
               last_batch: int = 0) -> dict:
    """Seconds per training step (graph replays on CUDA), set-up seconds and eval images/s of one
    variant; with ``last_batch`` also milliseconds of eager steps (each warm-up) and graph replays
    of that batch size."""
    cuda = dev.type == "cuda"
    fmt = train.memory_format(variant["channels_last"])
    use_amp = variant["amp"] and cuda
    model = models.build_classifier(backbone, 2).to(dev).to(memory_format=fmt)
    opt = train.make_optimizer(model, 1e-3, 0.0, graphed=cuda, fused=variant["fused_adam"])
    step = train.TrainStep(model, opt, None, use_amp, batch_size, graphed=cuda, compiled=variant["compile"])
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch_size, 3, size, size, device=dev, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch_size,), device=dev, generator=gen)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(train.TrainStep.WARMUP + 2):  # warm-up (and compilation), capture, first replay
        step(x, y)
    sync()
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    out = {"step_s": (time.perf_counter() - t0) / steps, "setup_s": setup_s}
    if last_batch:
        xs, ys = x[:last_batch].contiguous(memory_format=fmt), y[:last_batch]
        eager_ms = []
        for _ in range(train.TrainStep.WARMUP):
            t0 = time.perf_counter()
            step(xs, ys)
            sync()
            eager_ms.append(round(1000 * (time.perf_counter() - t0), 2))
        step(xs, ys)  # capture and first replay
        sync()
        t0 = time.perf_counter()
        for _ in range(steps // 4):
            step(xs, ys)
        sync()
        out.update(last_batch_size=last_batch, last_batch_eager_ms=eager_ms,
                   last_batch_graph_ms=round(1000 * (time.perf_counter() - t0) / (steps // 4), 3))
    model.eval()
    xv = torch.randn(256 if cuda else 2 * batch_size, 3, size, size, device=dev, generator=gen)
    xv = xv.contiguous(memory_format=fmt)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        model(xv)
        sync()
        t0 = time.perf_counter()
        for _ in range(5):
            model(xv)
        sync()
    out.update(eval_img_per_s=5 * len(xv) / (time.perf_counter() - t0), notes=step.notes)
    return out


def export_pngs(ds: data.Dataset, root: Path) -> Path:
    """The ImageFolder tree a naive pipeline reads: root/<class>/<i>.png."""
    for i, (im, label) in enumerate(zip(ds.images, ds.labels)):
        folder = root / ds.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"{i:06d}.png")
    return root


def naive_features(root: Path, backbone: str, size: int, batch_size: int = 16, workers: int = 2) -> np.ndarray:
    """ImageFolder + DataLoader + PIL Resize/ToTensor/Normalize + eager model in eval mode."""
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(models.get_spec(backbone).mean, models.get_spec(backbone).std)])
    folder = datasets.ImageFolder(str(root), tf)
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=False, num_workers=workers)
    net = models.build_backbone(backbone).eval()
    outs = []
    with torch.no_grad():
        for x, _ in loader:
            outs.append(net(x).numpy())
    return np.concatenate(outs)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_features(ds: data.Dataset, backbone: str, size: int, work: Path, peak: float,
                   batch_sizes: tuple[int, ...] = (8, 16, 32)) -> dict:
    """Workload 1; asserts that kit and naive features agree."""
    root = export_pngs(ds, work / "features_png")
    order = np.argsort([f"{ds.class_names[lb]}/{i:06d}" for i, lb in enumerate(ds.labels)], kind="stable")
    t_naive, naive = timed(lambda: naive_features(root, backbone, size))
    features.get_backbone(backbone, models.resolve_weights(backbone), torch.device("cpu"))  # load outside timing
    by_batch = {}
    for bs in batch_sizes:
        by_batch[bs], kit = timed(lambda bs=bs: features.extract(ds.images, backbone, size, batch_size=bs,
                                                                 use_cache=False, progress=False))
    best = min(by_batch, key=by_batch.get)
    diff = float(np.abs(kit[order] - naive).max())
    cosine = float(np.min(np.sum(kit[order] * naive, 1)
                          / (np.linalg.norm(kit[order], axis=1) * np.linalg.norm(naive, axis=1) + 1e-12)))
    assert cosine >= MIN_FEATURE_COSINE, \
        f"kit and naive features differ: cosine similarity down to {cosine:.4f} (max abs difference {diff})"
    n = len(ds)
    return row("features (CPU, cold)", by_batch[best], t_naive, n, model_flops(backbone, size), peak,
               {"batch_seconds": by_batch, "best_batch": best, "max_abs_feature_diff": diff,
                "min_feature_cosine": cosine,
                "naive": "ImageFolder + DataLoader(2 workers, batch 16) + PIL transforms + eager eval"})


def bench_study(limit: int, backbone: str, size: int, work: Path, peak: float) -> list[dict]:
    """Workload 2: 01-04 with the CPU profile, cache cold and warm, vs recomputing features per step."""
    steps = list(experiment.STUDY_STEPS)
    kw = {"profile": "cpu", "limit_per_class": limit, "backbone": backbone, "input_size": size,
          "progress": False, "analyse_images": False, "views": ()}
    store = experiment.DataStore()  # decoded once, before the timings
    train_part, val = store.split(limit_per_class=limit)

    def kit_run(folder: str) -> int:
        n = 0
        for step in steps:
            rec = experiment.run_step(step, work / folder, store=store, **kw).record
            n += sum(rec["train_counts"].values()) + sum(rec["val_counts"].values())
        return n

    t_cold, n_images = timed(lambda: kit_run("cold"))
    t_warm, _ = timed(lambda: kit_run("warm"))

    def naive_run() -> None:
        cfg = TrainConfig.from_dict({"mode": "probe", "backbone": backbone, "input_size": size})
        for step in steps:
            expanded = augment.expand(train_part, experiment.STEPS[step]["policy"], progress=False)
            tr = naive_features(export_pngs(expanded, work / f"naive_{step}" / "train"), backbone, size)
            naive_features(export_pngs(val, work / f"naive_{step}" / "val"), backbone, size)
            order = np.argsort([f"{expanded.class_names[lb]}/{i:06d}" for i, lb in enumerate(expanded.labels)],
                               kind="stable")
            train.train_head(tr, expanded.labels[order], len(expanded.class_names), cfg, seed=0)

    t_naive, _ = timed(naive_run)
    extra = {"images_per_class": limit, "steps": steps,
             "naive": "per step: write the expanded set as PNGs, ImageFolder features for train and val, same head"}
    # whole pipelines (expansion, cache, head): no single model rate, so no peak fraction
    return [row("four study trainings, CPU, cache cold", t_cold, t_naive, n_images, None, peak, extra),
            row("four study trainings, CPU, cache warm", t_warm, t_naive, n_images, None, peak, extra)]


def bench_finetune(ds: data.Dataset, backbone: str, size: int, work: Path, peak: float, device: str,
                   batch_size: int = 16, epochs: int = 1, report: Callable[[dict], None] = print) -> list[dict]:
    """Workload 3: images/s of fine-tuning, kit loop vs pytorch/examples-style loop, same model and batch.

    On CUDA both paths are warmed up first (CUDA context, cuDNN kernels, worker start-up) and the
    kit runs twice: eager steps and CUDA-graph steps, so the graph's share of the speed-up shows.
    """
    from torchvision import datasets
    from torchvision import transforms as T

    n = len(ds) * epochs
    dev = models.pick_device(device)
    cuda = dev.type == "cuda"
    workers = min(4, os.cpu_count() or 1)  # pytorch/examples' default is 4 workers
    half = ds.subset(np.linspace(0, len(ds) - 1, batch_size).astype(int))  # one validation batch, both classes
    cfg = {"mode": "finetune", "backbone": backbone, "input_size": size, "epochs": epochs, "batch_size": batch_size,
           "train_aug": "paper", "device": str(dev)}
    root = export_pngs(ds, work / "finetune_png")
    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(models.get_spec(backbone).mean, models.get_spec(backbone).std)])
    folder = datasets.ImageFolder(str(root), tf)

    def examples_loop(subset: int | None = None, n_epochs: int = epochs) -> None:
        part = folder if subset is None else torch.utils.data.Subset(folder, range(subset))
        loader = torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             pin_memory=cuda)
        model = models.build_classifier(backbone, len(ds.class_names)).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        crit = torch.nn.CrossEntropyLoss()
        model.train()
        for _ in range(n_epochs):
            for x, y in loader:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                loss = crit(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        if cuda:
            torch.cuda.synchronize()

    variants = {"kit": cfg}
    if cuda:
        variants = {"kit, eager steps": {**cfg, "cuda_graphs": False}, "kit, CUDA graph": cfg}
        small = ds.subset(np.arange(8 * batch_size))
        for variant in variants.values():  # warm-up, not timed
            train.fit(small, half, {**variant, "epochs": 1}, views=(), progress=False)
        examples_loop(subset=4 * batch_size, n_epochs=1)
    t_naive, _ = timed(examples_loop)
    rows = []
    for name, variant in variants.items():
        t_kit, fit = timed(lambda variant=variant: train.fit(ds, half, variant, views=(), progress=False))
        rows.append(row(f"fine-tune {name} ({dev.type}, {size}px, batch {batch_size}, {epochs} ep)", t_kit, t_naive,
                        n, 3 * model_flops(backbone, size), peak,
                        {"naive": f"pytorch/examples imagenet loop: ImageFolder, PIL RandomResizedCrop + flip, "
                                  f"{workers} workers, fp32",
                         "kit_includes": "model build, per-epoch validation on one batch",
                         "val_accuracy": fit.history[-1]["val_accuracy"], "notes": fit.notes}))
        report(rows[-1])
    return rows


def format_row(r: dict) -> str:
    """One line of the printed table."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    peak_txt = "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.2f}%"
    return (f"{r['workload']:62s} {r['kit_s']:8.2f} {fmt(r['baseline_s'], '8.2f'):>8s} "
            f"{fmt(r['speedup'], '6.2f'):>6s} {r['kit_img_per_s']:8.1f} {peak_txt:>7s}")


def row(name: str, kit: float, base: float, n: int, flops: float | None, peak: float,
        extra: dict | None = None) -> dict:
    """One result row; ``base`` NaN = no baseline, ``flops`` None = no peak fraction."""
    rate = n / kit
    has_base = not np.isnan(base)
    return {"workload": name, "kit_s": round(kit, 3), "baseline_s": round(base, 3) if has_base else None,
            "speedup": round(base / kit, 2) if has_base else None, "kit_img_per_s": round(rate, 1),
            "baseline_img_per_s": round(n / base, 1) if has_base else None, "images": n,
            "peak_fraction": None if flops is None else round(flops * rate / peak, 4), **(extra or {})}


WORKLOADS = ("features", "study", "finetune", "step", "paper")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long version for CI (tiny sizes)")
    parser.add_argument("--workloads", default="features,study,finetune",
                        help=f"comma-separated subset of {', '.join(WORKLOADS)} (paper = the GPU headline; "
                             "step = training-step variants, and paper then uses the fastest)")
    parser.add_argument("--data", default="elpv", choices=("elpv", "synthetic"),
                        help="synthetic: ELPV-shaped random images, for machines without the data set")
    parser.add_argument("--images", type=int, default=256, help="images in workloads features and finetune")
    parser.add_argument("--study-per-class", type=int, default=60, help="images per class in workload study")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224, help="input size of workloads features and study")
    parser.add_argument("--finetune-size", type=int, default=128, help="input size of workload finetune on CPU")
    parser.add_argument("--device", default="auto", help="device of workloads finetune and paper")
    parser.add_argument("--paper-epochs", type=int, default=50, help="epochs of workload paper")
    parser.add_argument("--out", default=str(experiment.project_root() / "benchmarks" / "results.json"))
    args = parser.parse_args(argv)
    chosen = [w for w in args.workloads.split(",") if w]
    bad = [w for w in chosen if w not in WORKLOADS]
    if bad:
        print(f"error: unknown workload(s) {bad}; valid: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    if args.quick:
        args.images, args.study_per_class, args.size, args.finetune_size = 24, 6, 64, 32
        args.paper_epochs = 1
    torch.manual_seed(0)
    set_progress(False)
    dev = models.pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="fsfsl-bench-"))
    old_cache = os.environ.get("FSFSL_CACHE")
    os.environ["FSFSL_CACHE"] = str(work / "cache")
    try:
        peak = matmul_flops(0.3 if args.quick else 2.0)
        peak_dev = matmul_flops(0.3 if args.quick else 2.0, 4096, str(dev), torch.bfloat16) \
            if dev.type == "cuda" else peak
        ds = (data.load_elpv("study", limit_per_class=args.images // 2, seed=7) if args.data == "elpv"
              else synthetic_dataset({"normal": args.images // 2, "defective": args.images // 2}))
        rows: list[dict] = []
        machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(),
                   "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                   "torch": torch.__version__, "matmul_fp32_gflops_cpu": round(peak / 1e9, 1),
                   "matmul_gflops_device": round(peak_dev / 1e9, 1)}
        result = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
                  "backbone": args.backbone, "data": args.data, "rows": rows}

        def report(r: dict) -> None:  # each row as soon as it is measured: a cut-off run keeps what it has
            rows.append(r)
            print(format_row(r), flush=True)
            atomic_write_json(args.out, result)

        print(f"{'workload':62s} {'kit s':>8s} {'base s':>8s} {'x':>6s} {'img/s':>8s} {'peak':>7s}", flush=True)
        if "features" in chosen:
            report(bench_features(ds, args.backbone, args.size, work, peak))
        if "study" in chosen and args.data == "elpv":
            for r in bench_study(args.study_per_class, args.backbone, args.size, work, peak):
                report(r)
        errors: list[str] = []
        result["errors"] = errors

        def attempt(name: str, fn: Callable[[], object]) -> object:
            """Workloads on a device each get their try: one that breaks must not cost the others
            (a GPU run has one try). A failed check (AssertionError) still stops the run."""
            try:
                return fn()
            except AssertionError:
                raise
            except Exception as err:  # noqa: BLE001
                errors.append(f"{name}: {type(err).__name__}: {err}")
                print(f"workload {name} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                atomic_write_json(args.out, result)
                return None

        if "finetune" in chosen:
            ft_size = 224 if dev.type == "cuda" and not args.quick else args.finetune_size
            ft_epochs = 3 if dev.type == "cuda" and not args.quick else 1
            attempt("finetune", lambda: bench_finetune(ds, args.backbone, ft_size, work, peak_dev, str(dev),
                                                       epochs=ft_epochs, report=report))
        variant = None
        if "step" in chosen:
            step_size = 224 if dev.type == "cuda" and not args.quick else args.finetune_size
            failures: list[str] = []
            measured = attempt("step", lambda: bench_step(str(dev), args.backbone, step_size, peak_dev,
                                                          steps=10 if args.quick else 100, report=report,
                                                          failures=failures))
            variant = measured[1] if measured else None
            result["fastest_step_variant"], result["step_failures"] = variant, failures
            atomic_write_json(args.out, result)
        if "paper" in chosen:
            attempt("paper", lambda: bench_paper(str(dev), args.paper_epochs, args.quick, peak_dev, report=report,
                                                 variant=variant, work=work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if old_cache is None:
            os.environ.pop("FSFSL_CACHE", None)
        else:
            os.environ["FSFSL_CACHE"] = old_cache
    atomic_write_json(args.out, result)
    print(f"matmul: {peak / 1e9:.1f} GFLOP/s fp32 (CPU), {peak_dev / 1e9:.1f} GFLOP/s on {dev}; written {args.out}")
    if result.get("errors"):
        print("failed workloads:\n  " + "\n  ".join(result["errors"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
