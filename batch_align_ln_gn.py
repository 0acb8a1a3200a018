"""NormShift-KD for LayerNorm and GroupNorm teachers: batch alignment + rejection sampling, Gaussian noise only.

A per-sample normalizer (GroupNorm, LayerNorm) sees each noise sample alone: whatever the noise has in common survives
every layer, and the teacher tends to give all noise samples the same answer, so a student has nothing to learn.
BatchNorm in current-statistics (CS) mode avoids that by standardizing each channel across the batch (see
cs_rejection_bn.py). The batch-alignment wrapper gives a per-sample teacher the same coupling: in front of every
GroupNorm/LayerNorm it standardizes the layer's input across the batch, with no parameters,
    x <- (1 - a) x + a (x - mean_B x) / sqrt(var_B x + eps),
then runs the original layer unchanged. Conv features (N, C, H, W) get statistics over (N, H, W) per channel, as BN;
token features (N, L, D) over N per (token, width) (--align-axes samples) or over (N, L) per width (tokens). The
wrapper is a set of forward pre-hooks: the teacher's weights are never touched, and removing it restores the teacher
exactly. Rejection sampling of over-predicted classes is the sampler of cs_rejection_bn.py, copied here (kept
identical by tests/test_drift.py) so that this file stands alone with common.py.

    python batch_align_ln_gn.py --data-dir ../shared/data      # shipped GroupNorm ResNet-20 -> ResNet-20, 256k noise
    python batch_align_ln_gn.py --balance none --data-dir ../shared/data     # alignment alone: the result quoted below
    python batch_align_ln_gn.py --teacher vit_tiny --teacher-norm ln --data-dir ../shared/data
    python batch_align_ln_gn.py --align-strength 0 --balance none --data-dir ../shared/data    # the no-alignment arm
    torchrun --nproc_per_node 4 batch_align_ln_gn.py --batch-size 1024   # alignment statistics of the global batch

With the shipped GroupNorm teacher (86.7%) and --balance none, the student reached 15.1% (running statistics) /
13.0% (test-batch statistics) after 256k noise samples, in 12 minutes on 2 cores of an Intel Xeon with bf16
(results/batch_align/gn__align.json); with --align-strength 0 it stayed at chance, 10.3% / 10.0% (gn__plain.json);
with the aligned teacher's stage outputs matched too (--feature-weight 10, ours) it reached 21.5% / 32.4%
(gn__align_feat10.json; seed 1 in results/batch_align_seed1/).
Every shipped teacher, with and without alignment: README section "Batch alignment", generated from
results/batch_align/ (bench/batch_align.py). A BatchNorm teacher is accepted too; the wrapper then finds nothing to
wrap, says so, and the teacher runs in eval mode (for CS, use cs_rejection_bn.py). Independent implementation built
from the paper's public abstract; the wrapper's exact form is ours (README: How batch alignment works).
"""
import argparse
import contextlib
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=common.HelpFormatter)
    # --- what to distil
    p.add_argument("--teacher", default="resnet20", choices=common.MODEL_NAMES, help="teacher architecture")
    p.add_argument("--teacher-norm", default=None, choices=common.NORMS,
                   help="the teacher's normalization: picks the default checkpoint "
                        "teachers/<teacher>_<dataset>_<norm>.pt and builds a plain state_dict (default gn; ln for "
                        "ViTs)")
    p.add_argument("--teacher-ckpt", default=None,
                   help="teacher checkpoint (ours or akamaster's); default teachers/<teacher>_<dataset>_<teacher-norm>.pt")
    p.add_argument("--teacher-mean", type=float, nargs=3, default=None, metavar="M",
                   help="the teacher's input normalization (images in [0, 1]): needed for a plain state_dict, "
                        "replaces the recorded one otherwise")
    p.add_argument("--teacher-std", type=float, nargs=3, default=None, metavar="S", help="see --teacher-mean")
    p.add_argument("--student", default=None, choices=common.MODEL_NAMES,
                   help="student architecture, from scratch (default: resnet18 for a resnet34 teacher, the prior "
                        "work's pair; resnet20 otherwise)")
    p.add_argument("--student-norm", default=None, choices=common.NORMS,
                   help="student normalization (default: bn for CNNs, ln for vit_tiny)")
    p.add_argument("--dataset", default="cifar10", choices=common.DATASETS, help="evaluation data")
    p.add_argument("--data-dir", default="./data", help="folder of the <dataset>_test.npz cache (downloaded if missing)")
    # --- the method
    p.add_argument("--align-strength", type=float, default=1.0,
                   help="a in [0, 1]: blend of each norm layer's input with its batch-standardized version; 0 = off")
    p.add_argument("--align-axes", default="samples", choices=["samples", "tokens"],
                   help="token features (N, L, D): standardize over N per (L, D), removing each position's common "
                        "component, or over (N, L) per D (with it the shipped ViT sends all noise to one class); "
                        "conv features always over (N, H, W) per channel")
    p.add_argument("--align-layers", type=int, default=0,
                   help="align only the first k per-sample norm layers in forward order (0 = all)")
    p.add_argument("--balance", default="reject", choices=["none", "reject", "reweight"],
                   help="fix the teacher's label imbalance on noise by rejection, by loss reweighting, or not at all")
    p.add_argument("--pool-factor", type=float, default=2.0,
                   help="reject: each pool has pool-factor * batch-size samples; the CS teacher sees the whole pool")
    p.add_argument("--max-pools", type=int, default=8, help="reject: at most this many pools per step, then fill up")
    p.add_argument("--marginal-momentum", type=float, default=0.9, help="EMA momentum of the label-marginal estimate")
    p.add_argument("--accept-floor", type=float, default=0.1,
                   help="classes with p(y) < floor / K are negligible: they do not set the acceptance level c")
    p.add_argument("--noise-alpha", type=float, default=0.0,
                   help="noise power spectrum ~ 1/f^alpha per channel, unit variance per pixel; 0 = white (the paper)")
    p.add_argument("--tau", type=float, default=1.0, help="distillation temperature")
    p.add_argument("--feature-weight", type=float, default=0.0,
                   help="ours, a study arm here: add this weight x the squared error between the (aligned) teacher's "
                        "and the student's stage outputs, relative to the teacher's; needs stages of the same shapes "
                        "(resnet20/56 -> resnet20, resnet34 -> resnet18). 0 = the logits alone, the paper's (the "
                        "default of cs_rejection_bn.py is 30, 10 before; here 10 won over 0 on two seeds for the "
                        "GroupNorm teacher, README)")
    p.add_argument("--probe-samples", type=int, default=4096,
                   help="noise samples for the teacher's label histogram with and without alignment, before training")
    # --- optimization
    p.add_argument("--steps", type=int, default=1000, help="student updates; noise samples seen = steps * batch-size")
    p.add_argument("--batch-size", type=int, default=256, help="noise samples per student update")
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="student optimizer")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd: Nesterov momentum")
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine"], help="learning-rate schedule")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps before the cosine decay (default 50; a tenth of a run of 50 steps or "
                        "fewer)")
    # --- bookkeeping
    p.add_argument("--seed", type=int, default=0, help="seed of student init, noise and acceptance coins")
    p.add_argument("--eval-every", type=int, default=125, help="evaluate on the test split every this many steps")
    p.add_argument("--eval-batch-size", type=int, default=256, help="test batch size (sets acc_batchstats)")
    p.add_argument("--eval-subset", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    p.add_argument("--ckpt-every", type=int, default=100, help="save a resumable checkpoint every this many steps")
    p.add_argument("--out-dir", default="runs", help="run folders go here")
    p.add_argument("--resume", default=None,
                   help="run folder to continue with its own settings (its args.json; other flags are refused)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast + channels_last (default: on where the device supports bf16)")
    p.add_argument("--device", default=common.default_device(), help="cpu or cuda")
    args = p.parse_args(argv)
    if args.resume:  # the run's own settings; other flags beside --resume are refused, not silently ignored
        # a run started before --feature-weight existed matched the logits alone
        return common.resume_args(p, args, Path(__file__).stem, before={"feature_weight": 0.0}, argv=argv)
    common.check_device(p, args.device)
    args.teacher_norm = args.teacher_norm or ("ln" if args.teacher in common.VIT_INPUT_SIZE else "gn")
    args.student = args.student or ("resnet18" if args.teacher == "resnet34" else "resnet20")
    common.check_model_norm(p, args.student, args.student_norm)  # e.g. --student vit_tiny --student-norm bn
    if args.bf16 is None:
        args.bf16 = common.bf16_supported(args.device)
    for flag in ("steps", "batch_size", "eval_every", "ckpt_every", "max_pools", "eval_batch_size"):
        if getattr(args, flag) < 1 or (flag == "batch_size" and args.batch_size < 2):
            p.error(f"--{flag.replace('_', '-')} must be at least {2 if flag == 'batch_size' else 1}")
    if args.warmup_steps is None:
        args.warmup_steps = 50 if args.steps > 50 else args.steps // 10  # 50: every run and study arm so far
    if args.warmup_steps < 0 or (args.schedule == "cosine" and args.warmup_steps >= args.steps):  # else the run
        # ends inside the warm-up and never decays (a constant schedule has no warm-up)
        p.error(f"--warmup-steps {args.warmup_steps} must be at least 0 and fewer than --steps {args.steps}")
    if args.pool_factor < 1 or args.tau <= 0 or not 0 <= args.accept_floor <= 1:
        p.error("need --pool-factor >= 1, --tau > 0 and 0 <= --accept-floor <= 1")
    if args.lr < 0 or args.weight_decay < 0 or args.eval_subset < 0 or not 0 <= args.marginal_momentum < 1:
        p.error("need --lr >= 0, --weight-decay >= 0, --eval-subset >= 0 and 0 <= --marginal-momentum < 1")
    if not 0 <= args.noise_alpha <= 8:
        p.error(f"--noise-alpha must be in [0, 8] (0 = white, natural images near 2), got {args.noise_alpha}")
    if args.feature_weight < 0:
        p.error(f"--feature-weight must be >= 0, got {args.feature_weight}")
    if not 0 <= args.align_strength <= 1 or args.align_layers < 0 or args.probe_samples < 2:
        p.error("need 0 <= --align-strength <= 1, --align-layers >= 0 and --probe-samples >= 2")
    return args


# ======================================================================================================================
# YOUR TEACHER: the one place to plug in any nn.Module
# ======================================================================================================================
def load_teacher(args, num_classes):
    """The teacher and its info (mean, std: its input normalization; test_acc; sha256; path; norm; image_size).
    To distil a model of your own, return it here in eval mode, e.g.

        model = MyNet(); model.load_state_dict(torch.load("my.pt", weights_only=True))
        return model.eval(), {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26), "test_acc": None,
                              "sha256": common.sha256_of("my.pt"), "path": "my.pt", "norm": "gn", "image_size": 32}

    Alignment wraps its GroupNorm / LayerNorm layers (torch.nn's or common.ChannelLayerNorm); its parameters are never
    changed."""
    ckpt = common.teacher_ckpt_or_exit(args.teacher, args.dataset, args.teacher_ckpt, args.data_dir, args.teacher_norm)
    return common.load_teacher(args.teacher, ckpt, num_classes, args.dataset, args.teacher_mean, args.teacher_std,
                               norm=args.teacher_norm)  # the norm of a plain state_dict (a checkpoint of ours records it)


# ======================================================================================================================
# ALGO LOGIC: the batch-alignment wrapper (README: How batch alignment works)
# ======================================================================================================================
# Per-sample normalizers: each normalizes one sample with its own statistics (common.ChannelLayerNorm is a LayerNorm).
PER_SAMPLE_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
ALIGN_EPS = 1e-5  # as BatchNorm's


def per_sample_norms(model):
    """(name, module) of every per-sample norm layer, in registration order (= forward order in our models)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PER_SAMPLE_NORMS)]


def align(x, axes="samples", strength=1.0):
    """Standardize x across the batch, per feature, with no parameters, and blend: lerp(x, x_hat, strength).
    (N, C, H, W): over (N, H, W) per C, BatchNorm's axes. (N, L, D): over (N, L) per D ('tokens') or over N per
    (L, D) ('samples'). (N, D): over N. Statistics in fp32 (of all ranks' samples under torchrun); the result keeps
    x's dtype."""
    dims = {4: (0, 2, 3), 3: (0, 1) if axes == "tokens" else (0,), 2: (0,)}.get(x.ndim)
    if dims is None:
        raise ValueError(f"batch alignment handles (N, D), (N, L, D) and (N, C, H, W) inputs, got shape {tuple(x.shape)}")
    xf = x.float()
    var, mean = common.batch_var_mean(xf, dims)  # biased, as BatchNorm; over the global batch under torchrun
    x_hat = (xf - mean) * torch.rsqrt(var + ALIGN_EPS)
    return torch.lerp(xf, x_hat, strength).to(x.dtype)  # lerp with weight 0 returns x itself, bit for bit


@contextlib.contextmanager
def batch_aligned(model, axes="samples", strength=1.0, layers=0):
    """Inside this context, the input of every per-sample norm layer of `model` (the first `layers` of them when
    layers > 0) is batch-aligned before the layer runs. Forward pre-hooks, removed on exit: no weight or buffer is
    touched, so the model outside the context is exactly the original. Yields the names of the wrapped layers."""
    norms = per_sample_norms(model)
    norms = norms[:layers] if layers else norms
    hook = lambda module, inputs: (align(inputs[0], axes, strength), *inputs[1:])
    handles = [m.register_forward_pre_hook(hook) for _, m in norms]
    try:
        yield [n for n, _ in norms]
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def teacher_forward(teacher, z, args):
    """Teacher logits on a noise batch, batch-aligned unless --align-strength is 0."""
    ctx = (batch_aligned(teacher, args.align_axes, args.align_strength, args.align_layers) if args.align_strength > 0
           else contextlib.nullcontext())
    with ctx:
        return teacher(z).float()


@torch.no_grad()
def teacher_features(teacher, z, args):
    """The teacher's stage outputs on a noise batch, aligned as in teacher_forward."""
    with stage_outputs(teacher) as outs:
        teacher_forward(teacher, z, args)
    return list(outs)


@torch.no_grad()
def label_probe(teacher, args, shape, num_classes, fmt):
    """The teacher's argmax label histogram on fresh noise (its own generator), without and with alignment, in
    batches of --batch-size: the instant diagnostic of whether alignment breaks the teacher's collapse on noise."""
    gen, world, out = torch.Generator(args.device), common.dist_info()[1], {}
    # The no-alignment arm (--align-strength 0) still reports what full alignment would do to the labels.
    for tag, strength in (("plain", 0.0), ("aligned", args.align_strength or 1.0)):
        gen.manual_seed(args.seed + 3_000)  # the same noise for both
        counts = torch.zeros(num_classes, dtype=torch.long)
        probe_args = argparse.Namespace(**{**vars(args), "align_strength": strength})
        for i in range(0, args.probe_samples, args.batch_size):
            n = min(args.batch_size, args.probe_samples - i) // world  # this rank's share, as in draw_batch
            z = common.sample_noise(n * world, shape, gen, args.noise_alpha, args.device)[common.my_slice(n)]
            with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
                labels = teacher_forward(teacher, z.contiguous(memory_format=fmt), probe_args).argmax(1).cpu()
            counts += common.all_reduce_sum(common.label_counts(labels, num_classes))
        s = common.label_stats(counts)
        out.update({f"probe/{tag}_entropy": s["entropy"], f"probe/{tag}_max_share": s["max_share"],
                    f"probe/{tag}_missing": s["missing"], f"probe/{tag}_hist": counts.tolist()})
    return out


# ======================================================================================================================
# ALGO LOGIC, shared with cs_rejection_bn.py: the rejection sampler and the loss. A copy, so that this file stands
# alone; tests/test_drift.py keeps it identical to the original.
# ======================================================================================================================
class RejectionSampler:
    """Accept sample i with probability min(1, c / p(y_i)), where p is a running estimate of the teacher's argmax
    label marginal on noise and c the smallest non-negligible p(y): the accepted labels approach a uniform marginal
    over the classes the teacher predicts at all (README: How it works). Classes it never predicts cannot be fixed."""

    def __init__(self, num_classes, momentum, floor, generator):
        self.k, self.momentum, self.floor, self.gen = num_classes, momentum, floor, generator
        self.marginal = None  # estimated p(y) of the teacher's argmax on noise

    def update(self, labels):
        """Fold the labels of one pool (every rank's, under torchrun) into the estimate; returns their histogram."""
        counts = common.all_reduce_sum(common.label_counts(labels, self.k))
        hist = counts.double() / counts.sum()  # on the labels' device: no host sync
        prev = self.marginal
        self.marginal = hist if prev is None else self.momentum * prev.to(hist.device) + (1 - self.momentum) * hist
        return counts

    def level(self):
        """c = min p(y) over non-negligible classes (p(y) >= floor / K)."""
        p = self.marginal
        return p[p >= self.floor / self.k].min()

    def accept_prob(self, labels):
        p = self.marginal[labels]
        return (self.level() / p.clamp_min(1e-12)).clamp(max=1.0)

    def accept(self, labels):
        """Boolean mask of accepted samples, on the labels' device. The coins come from a CPU generator (the same
        stream on every device); under torchrun every rank draws the coins of the whole pool and uses its own slice,
        as one process would."""
        coins = torch.rand(len(labels) * common.dist_info()[1], generator=self.gen, dtype=torch.float64)
        return coins[common.my_slice(len(labels))].to(labels.device) < self.accept_prob(labels)

    def state_dict(self):
        return {"marginal": self.marginal, "generator": self.gen.get_state()}

    def load_state_dict(self, state):
        self.marginal = state["marginal"]
        self.gen.set_state(state["generator"])


def draw_batch(args, teacher_fn, sampler, noise_gen, shape, stats, noise_params=None):
    """One training batch of noise, the teacher's targets and per-sample loss weights, by --balance. teacher_fn maps a
    noise batch to the teacher's logits (here the CS forward; batch_align_ln_gn.py passes its aligned teacher).
    Updates `stats` (label histograms, teacher samples, sampler time; global under torchrun) in place.
    Under torchrun every rank draws the global batch's noise from the same generator and keeps its slice: the N
    processes see exactly the samples one process would (noise costs far less than the teacher's forward).
    Without rejection nothing here waits for the device; rejection must (the accepted count decides the next pool).
    noise_params: the Gaussian fitted by fit_noise (alpha, color, mean); None: --noise-alpha's noise."""
    world = common.dist_info()[1]
    B, dev = args.batch_size // world, args.device  # this rank's share of the global batch
    shaping = noise_params or {"alpha": args.noise_alpha}
    noise = lambda n: common.sample_noise(n * world, shape, noise_gen, device=dev, **shaping)[common.my_slice(n)]
    if args.balance != "reject":
        z = noise(B)
        t = teacher_fn(z)
        labels = t.argmax(1)
        t_sampler = time.perf_counter()
        counts = sampler.update(labels)
        weights = None
        if args.balance == "reweight":  # same teacher compute as 'none'; weight 1/p(y), normalized to mean 1
            w = 1.0 / sampler.marginal[labels].clamp_min(1e-12)
            weights = (w / (common.all_reduce_sum(w.sum()) / (B * world))).float().to(dev)
        stats["sampler_s"] += time.perf_counter() - t_sampler
        stats["accepted"] += B * world
        stats["acc_counts"] += counts
        _record_raw(stats, counts, t)
        return z, t, weights
    # Rejection: draw pools of M = r * B; the CS teacher runs once per pool and the pool's statistics define the
    # targets. Keep drawing until B samples are accepted, at most --max-pools pools, then fill up with rejected ones.
    # Under torchrun each rank fills its own share, and all ranks draw pools until every one is full (the CS teacher
    # needs every rank in each forward).
    M = max(B, int(round(args.pool_factor * B)))
    acc_z, acc_t, rej_z, rej_t, n_acc = [], [], [], [], 0
    for _ in range(args.max_pools):
        z = noise(M)
        t = teacher_fn(z)
        labels = t.argmax(1)
        t_sampler = time.perf_counter()
        counts = sampler.update(labels)
        keep = sampler.accept(labels)
        acc_z.append(z[keep]), acc_t.append(t[keep]), rej_z.append(z[~keep]), rej_t.append(t[~keep])
        n_acc += int(keep.sum())
        stats["accepted"] += int(common.all_reduce_sum(keep.sum()))
        stats["sampler_s"] += time.perf_counter() - t_sampler
        _record_raw(stats, counts, t)
        if int(common.all_reduce_sum(torch.tensor(int(n_acc < B)))) == 0:  # every rank has its share
            break
    t_sampler = time.perf_counter()
    z, t = torch.cat(acc_z)[:B], torch.cat(acc_t)[:B]
    stats["shortfall"] += int(common.all_reduce_sum(torch.tensor(B - len(z))))
    if len(z) < B:  # never loop forever (a class the teacher never predicts can push acceptance very low)
        z = torch.cat([z, torch.cat(rej_z)[:B - len(z)]])
        t = torch.cat([t, torch.cat(rej_t)[:B - len(t)]])
    stats["acc_counts"] += common.all_reduce_sum(common.label_counts(t.argmax(1), sampler.k))
    stats["sampler_s"] += time.perf_counter() - t_sampler
    return z, t, None


def new_stats(num_classes, device="cpu", resumed=None):
    """Counters of a run: teacher labels on raw noise and on the batches used, samples, sampler and step time. The
    histograms live on the device (read only when logged); `resumed`: the counters of a checkpoint, moved there."""
    if resumed is not None:
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in resumed.items()}
    zeros = lambda dtype: torch.zeros(num_classes, dtype=dtype, device=device)
    return {"raw_counts": zeros(torch.long), "acc_counts": zeros(torch.long), "raw_soft": zeros(torch.float64),
            "teacher_samples": 0, "student_samples": 0, "accepted": 0, "shortfall": 0, "sampler_s": 0.0,
            "train_s": 0.0, "last_loss": None}


def _record_raw(stats, counts, t):
    """The teacher's argmax label counts (all ranks') and summed probabilities on every noise sample it saw."""
    stats["teacher_samples"] += len(t) * common.dist_info()[1]  # = counts.sum(), without waiting for the device
    stats["raw_counts"] += counts
    stats["raw_soft"] += common.all_reduce_sum(F.softmax(t, 1).sum(0).double())


def kd_loss(student_logits, teacher_logits, tau, weights=None):
    """KL(softmax(t / tau) || softmax(s / tau)) * tau^2 per sample, averaged (optionally weighted)."""
    kl = F.kl_div(F.log_softmax(student_logits.float() / tau, 1), F.log_softmax(teacher_logits / tau, 1),
                  log_target=True, reduction="none").sum(1) * tau ** 2
    return (kl * weights).mean() if weights is not None else kl.mean()


def stages(model):
    """The residual stages of our CNNs (layer1, layer2, ...: CIFAR and torchvision ResNets), in forward order."""
    return [m for name, m in model.named_children() if re.fullmatch(r"layer\d+", name)]


@contextlib.contextmanager
def stage_outputs(model):
    """Yields a list that each forward of `model` fills with its stages' outputs (clear it between forwards); the
    hooks are removed after."""
    outs = []
    hooks = [m.register_forward_hook(lambda m, inputs, out: outs.append(out)) for m in stages(model)]
    try:
        yield outs
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def stage_shapes(teacher, student, image_shape, device):
    """The shapes (batch left out) of the teacher's and the student's stage outputs, from one forward of a zero batch
    each; the student runs it in eval mode, so that its BatchNorm statistics stay as they are."""
    with stage_outputs(teacher) as t_out, stage_outputs(student) as s_out:
        probe = torch.zeros(2, 3, *image_shape, device=device)
        teacher(probe), student.eval()(probe), student.train()
    return [tuple(o.shape[1:]) for o in t_out], [tuple(o.shape[1:]) for o in s_out]


def feature_loss(student_feats, teacher_feats, weights=None):
    """Per stage, the squared error between the student's and the teacher's outputs, averaged over the sample's
    elements and divided by the teacher's mean square on the (global) batch, so that every stage counts alike,
    whatever its scale; averaged over stages, then over samples (optionally weighted)."""
    world = common.dist_info()[1]  # one all-reduce for every stage's sum of squares under torchrun
    square_sums = common.all_reduce_sum(torch.stack([t.float().pow(2).sum() for t in teacher_feats]))
    per_sample = sum((s.float() - t.float()).pow(2).flatten(1).mean(1) / (ss / (t.numel() * world)).clamp_min(1e-12)
                     for s, t, ss in zip(student_feats, teacher_feats, square_sums, strict=True)) / len(teacher_feats)
    return (per_sample * weights).mean() if weights is not None else per_sample.mean()


def noise_summary(stats):
    """The teacher's labels on raw noise and on the batches the student trained on (README: How it works)."""
    raw, acc = common.label_stats(stats["raw_counts"]), common.label_stats(stats["acc_counts"])
    soft = common.label_stats(stats["raw_soft"])  # the soft marginal: summed teacher probabilities per class
    return {"noise/label_entropy": raw["entropy"], "noise/label_max_share": raw["max_share"],
            "noise/label_missing": raw["missing"], "noise/soft_entropy": soft["entropy"],
            "noise/soft_max_share": soft["max_share"],
            "noise/accepted_label_entropy": acc["entropy"], "noise/accepted_max_share": acc["max_share"],
            "noise/acceptance_rate": stats["accepted"] / max(1, stats["teacher_samples"]),
            "noise/label_hist": stats["raw_counts"].tolist(), "noise/accepted_hist": stats["acc_counts"].tolist()}


# ======================================================================================================================
# Boilerplate: run folder, teacher and student, loop, evaluation, checkpoints (TRY NOT TO MODIFY)
# ======================================================================================================================
def lr_at(args, step):
    if args.schedule == "constant":
        return args.lr
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.lr * 0.5 * (1 + math.cos(math.pi * progress))


def main(argv=None):
    args = parse_args(argv)
    resume_dir = Path(args.resume) if args.resume else None

    # --- torchrun: one process per device (a no-op in a single process); rank 0 alone logs, evaluates and saves
    args.device = common.init_distributed(args.device)
    rank, world = common.dist_info()
    if args.batch_size % world:
        sys.exit(f"--batch-size {args.batch_size} (the global batch) must be a multiple of the {world} processes")

    # --- seeding: one visible block; noise and acceptance coins have generators of their own
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    # Offset seeds: a generator seeded like the global RNG would replay the student's initialization as noise.
    noise_gen = torch.Generator(args.device).manual_seed(args.seed + 1_000)
    coin_gen = torch.Generator().manual_seed(args.seed + 2_000)

    # --- data (test split only: evaluation), teacher, student
    num_classes = common.num_classes(args.dataset, args.data_dir)
    teacher, tinfo = load_teacher(args, num_classes)  # YOUR TEACHER: see load_teacher above
    x_test, y_test = common.load_split(args.dataset, "test", args.data_dir, tinfo["image_size"])
    if args.eval_subset:
        x_test, y_test = x_test[:args.eval_subset], y_test[:args.eval_subset]
    wrapped = [n for n, _ in per_sample_norms(teacher)]
    wrapped = wrapped[:args.align_layers] if args.align_layers else wrapped
    if not wrapped:
        print(f"note: teacher {args.teacher} ({tinfo['norm']}) has no per-sample norm layer: alignment wraps nothing "
              f"and the teacher runs in eval mode. For a BatchNorm teacher use cs_rejection_bn.py (CS inference).")
    torch.manual_seed(args.seed)  # the student's initialization depends on the seed alone, not on the teacher
    student = common.build_model(args.student, num_classes, args.student_norm)
    teacher, student = teacher.to(args.device), student.to(args.device)
    t_fmt, s_fmt = common.memory_format(teacher, args.bf16), common.memory_format(student, args.bf16)
    teacher, student = teacher.to(memory_format=t_fmt), student.to(memory_format=s_fmt)
    if args.feature_weight:  # the stage outputs must have the same shapes to be compared
        t_shapes, s_shapes = stage_shapes(teacher, student, x_test.shape[1:3], args.device)
        if not t_shapes or t_shapes != s_shapes:
            sys.exit(f"--feature-weight needs stages of the same shapes: teacher {args.teacher} has {t_shapes}, "
                     f"student {args.student} {s_shapes}")
    # DDP averages the gradients of the ranks' equal shares: the gradient of the global batch's mean loss.
    net = torch.nn.parallel.DistributedDataParallel(student) if world > 1 else student
    teacher_fn = lambda z: teacher_forward(teacher, z.contiguous(memory_format=t_fmt), args)
    mean, std = tinfo["mean"], tinfo["std"]  # the noise lives in the teacher's normalized input space
    shape = (3, *x_test.shape[1:3])
    evaluate = lambda model, bn: common.evaluate(model, x_test, y_test, mean, std, args.eval_batch_size, bn,
                                                 args.device, args.bf16)
    # The teacher's accuracy in fp32 eval mode, as train_teacher.py records it, and with alignment on each test batch.
    teacher_acc = common.evaluate(teacher, x_test, y_test, mean, std, args.eval_batch_size, "running", args.device)
    with batch_aligned(teacher, args.align_axes, args.align_strength or 1.0, args.align_layers):
        teacher_acc_aligned = common.evaluate(teacher, x_test, y_test, mean, std, args.eval_batch_size, "running",
                                              args.device)

    opt = (torch.optim.Adam(student.parameters(), lr=args.lr, weight_decay=args.weight_decay) if args.optimizer == "adam"
           else torch.optim.SGD(student.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay))
    sampler = RejectionSampler(num_classes, args.marginal_momentum, args.accept_floor, coin_gen)
    stats = new_stats(num_classes, args.device)
    step, curve = 0, []
    # Wall time over every process of a resumed run: each checkpoint carries what the earlier ones spent (None where
    # a checkpoint predates this record: provenance then knows only this process's time).
    wall_before, resumed_at = 0.0, []

    # --- run folder (rank 0 makes it), or the one we resume
    run_dir = resume_dir
    if resume_dir:
        if not (run_dir / "checkpoint.pt").is_file():
            sys.exit(f"{run_dir} has no checkpoint.pt (the run stopped before its first one): start it again")
        ck = common.load_checkpoint(run_dir / "checkpoint.pt")
        common.check_same_teacher(ck, tinfo, run_dir)
        student.load_state_dict(ck["student"])
        opt.load_state_dict(ck["optimizer"])
        noise_gen.set_state(ck["noise_gen"])
        sampler.load_state_dict(ck["sampler"])
        step, stats, curve, probe = ck["step"], new_stats(num_classes, args.device, ck["stats"]), ck["curve"], ck["probe"]
        wall_before, resumed_at = ck.get("wall_s"), [*ck.get("resumed_at", []), step]
        print(f"resumed {run_dir} at step {step}")
    else:
        with common.stop_message(None, lambda: step):  # Ctrl-C here: nothing saved yet, say so
            probe = label_probe(teacher, args, shape, num_classes, t_fmt)  # every rank: aligned teacher is collective
        if rank == 0:
            run_dir = common.make_run_dir(args.out_dir, args.dataset, Path(__file__).stem, args.teacher, args.seed)
            common.write_json(run_dir / "args.json", vars(args), keep_paths=True)
    log = common.MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume_dir else None) if rank == 0 else None
    if rank == 0:
        print(f"run folder {run_dir}\nteacher {args.teacher} ({tinfo['norm']}, {tinfo['path']}): test acc {teacher_acc:.4f} "
              f"(recorded {tinfo['test_acc']}), {teacher_acc_aligned:.4f} aligned; alignment "
              f"{f'strength {args.align_strength} on {len(wrapped)} layers' if args.align_strength > 0 else 'off'}, "
              f"balance: {args.balance}\nnoise label entropy {probe['probe/plain_entropy']:.3f} plain, "
              f"{probe['probe/aligned_entropy']:.3f} aligned")

    def save():
        if rank > 0:
            return
        common.save_checkpoint(run_dir / "checkpoint.pt", student=student.state_dict(), optimizer=opt.state_dict(),
                               noise_gen=noise_gen.get_state(), sampler=sampler.state_dict(), step=step,
                               teacher_sha256=tinfo["sha256"], stats=stats, curve=curve, probe=probe,
                               wall_s=wall_time(), resumed_at=resumed_at, args=vars(args))

    def evaluation():
        row = {"samples_seen": stats["student_samples"], "eval/acc_running": evaluate(student, "running"),
               "eval/acc_batchstats": evaluate(student, "batch"), **noise_summary(stats)}
        row = {k: v for k, v in row.items() if not k.endswith("_hist")}
        curve.append({"step": step, **row})
        log.log(step, **row)
        tqdm.write(f"step {step}: acc running {row['eval/acc_running']:.4f}, test-batch stats "
                   f"{row['eval/acc_batchstats']:.4f}, noise label entropy {row['noise/label_entropy']:.3f}")
        return row

    def log_train(loss, t_logits, logit_loss=None, feat_loss=None):
        """Every 10 steps and before an evaluation or checkpoint: stop on a non-finite loss, log the loss (and, with
        the stage outputs, its two terms: the logit loss alone says whether the student fits the teacher's answers),
        speed and acceptance. The loop's only host syncs (a GPU runs ahead in between); every rank joins, rank 0
        writes."""
        if common.all_reduce_sum(nonfinite).item():  # every rank stops together
            raise FloatingPointError(f"distillation loss became non-finite at or before step {step} (teacher "
                                     f"logits finite: {bool(torch.isfinite(t_logits).all())}); lower --lr or "
                                     f"check the teacher")
        parts = [loss] if feat_loss is None else [loss, logit_loss, feat_loss]  # loss = logit + weight * feature
        stats["last_loss"], *terms = (common.all_reduce_sum(torch.stack(parts).detach()) / world).tolist()
        row = {"train/loss": stats["last_loss"], **dict(zip(("train/logit_loss", "train/feature_loss"), terms)),
               "train/lr": lr_at(args, step - 1),
               "train/samples_per_s": stats["student_samples"] / stats["train_s"],
               "train/acceptance_rate": stats["accepted"] / max(1, stats["teacher_samples"]),
               "train/sampler_time_frac": stats["sampler_s"] / stats["train_s"]}
        if rank == 0:
            log.log(step, **row)
        bar.set_postfix(loss=f"{row['train/loss']:.3f}", acc_rate=f"{row['train/acceptance_rate']:.2f}",
                        sps=f"{row['train/samples_per_s']:.0f}")

    t_start, nonfinite = time.time(), torch.zeros((), device=args.device)
    wall_time = lambda: None if wall_before is None else wall_before + time.time() - t_start
    # Ctrl-C or SIGTERM: the step under way ends and is saved, the bar closes, then stop_message says where the run
    # stopped and how to resume it
    with common.stop_message(run_dir, lambda: step), common.stop_after_step(enabled=world == 1) as stop, \
            tqdm(total=args.steps, initial=step, desc="noise KD", dynamic_ncols=True, disable=rank > 0) as bar:
        while step < args.steps:
            t_step = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(args, step)
            with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
                # ALGO LOGIC: noise -> teacher (aligned) -> accept / reject: a batch of noise and the teacher's logits on it
                z, t_logits, weights = draw_batch(args, teacher_fn, sampler, noise_gen, shape, stats)
                student_stages = stage_outputs(student) if args.feature_weight else contextlib.nullcontext()
                with common.synced_batch_norm(student), student_stages as s_feats:
                    s_logits = net(z.contiguous(memory_format=s_fmt))  # BN student: global-batch statistics
                t_feats = (teacher_features(teacher, z.contiguous(memory_format=t_fmt), args) if args.feature_weight
                           else None)
            logit_loss = kd_loss(s_logits, t_logits, args.tau, weights)  # ALGO LOGIC: KL(teacher || student) * tau^2
            loss, feat_loss = logit_loss, None
            if args.feature_weight:  # ALGO LOGIC (ours): match the aligned teacher's stage outputs, on the same batch
                feat_loss = feature_loss(s_feats, t_feats, weights)
                loss = logit_loss + args.feature_weight * feat_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Bookkeeping. No host sync inside a step (a GPU keeps running ahead): finiteness is read by log_train, at
            # most 10 steps later and before any evaluation or checkpoint, so a NaN stops the run and never reaches one.
            nonfinite += (~torch.isfinite(loss.detach())).float()
            step += 1
            stats["student_samples"] += len(z) * world
            stats["train_s"] += time.perf_counter() - t_step
            stopping = stop.requested  # read once: a signal during the bookkeeping below is served after the next step
            saving = step % args.ckpt_every == 0 or step == args.steps or stopping
            if step % 10 == 0 or step % args.eval_every == 0 or saving:
                log_train(loss, t_logits, logit_loss, feat_loss)
            bar.update(1)
            if rank == 0 and (step % args.eval_every == 0 or step == args.steps):
                evaluation()
            if saving:
                save()
            if stopping:
                raise KeyboardInterrupt  # this step is saved: stop_message says how to resume
    if rank > 0:
        common.finish_distributed()
        return None

    final = curve[-1] if curve and curve[-1]["step"] == step else evaluation()
    results = {"teacher/acc": teacher_acc, "teacher/acc_aligned": teacher_acc_aligned,
               "teacher/acc_recorded": tinfo["test_acc"], "teacher/sha256": tinfo["sha256"],
               "teacher/ckpt": tinfo["path"], "teacher/norm": tinfo["norm"], "align/layers": wrapped, **probe,
               **final, **noise_summary(stats), "train/final_loss": stats["last_loss"],
               "eval/batch_size": args.eval_batch_size,
               "eval/num_images": len(y_test), "samples_seen": stats["student_samples"],
               "teacher_samples": stats["teacher_samples"], "shortfall": stats["shortfall"],
               "samples_per_s": stats["student_samples"] / max(stats["train_s"], 1e-9),
               "teacher_samples_per_s": stats["teacher_samples"] / max(stats["train_s"], 1e-9),
               "sampler_time_frac": stats["sampler_s"] / max(stats["train_s"], 1e-9), "curve": curve,
               "args": vars(args),
               "provenance": common.provenance(args.device, wall_time(), resumed_at, time.time() - t_start)}
    common.write_json(run_dir / "results.json", results)
    common.finish_distributed()
    print(f"done: acc running {results['eval/acc_running']:.4f}, test-batch stats {results['eval/acc_batchstats']:.4f} "
          f"(batch {args.eval_batch_size}), {results['samples_per_s']:.0f} samples/s -> {run_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    common.run_main(main)
