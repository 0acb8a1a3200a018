"""NormShift-KD for BatchNorm teachers: current-statistics (CS) inference + rejection sampling, Gaussian noise only.

The student never sees an image while it learns. Each step draws Gaussian noise in the teacher's normalized input
space, runs the teacher with every BatchNorm normalizing by the statistics of the current noise batch (CS; in eval
mode a BN teacher puts all noise into two or three classes), rejects samples of over-predicted classes so that the
accepted batch has a near-uniform teacher label marginal, and minimizes KL(softmax(T(z)/tau) || softmax(S(z)/tau))
* tau^2 (or, with --loss mse, the squared error between centred logits); by default (ours), where the student's
residual stages have the teacher's shapes, it also matches the teacher's stage outputs (--feature-weight; 0 = the
paper's logits alone). The noise is z ~ N(0, I) in the paper (--no-fit-noise); by default (ours) it is a Gaussian
whose spectrum, colour covariance and mean are first fitted to the teacher's BatchNorm running statistics
(fit_noise). Both make the student learn much faster (README: "What limits learning from noise"). After training,
by default (ours) a BN student's running statistics, estimated on noise, are re-estimated on inputs synthesized from
the teacher's BN statistics (--calibrate-bn), so that it deploys in plain eval mode. Real test images are used only
to evaluate.
Design: the README's "How it works"; numbers: the README's tables, generated from results/. The default command
below took 12 minutes on 2 cores of an Intel Xeon with bf16 and gave a student of 84.1% in plain eval mode after the
calibration (59.3% as trained; 83.7% with test-batch statistics) from the 89.9% teacher (results/default_run.json;
fp32, on a CPU without bf16, is several times slower).

    python cs_rejection_bn.py        # shipped ResNet-20 teacher -> ResNet-20, CIFAR-10, 256k noise samples (batch 32)
    python cs_rejection_bn.py --no-fit-noise --feature-weight 0 --no-calibrate-bn   # paper: white noise, logits
    python cs_rejection_bn.py --teacher-ckpt ../shared/teachers/akamaster_resnet20-12fca82f.th --data-dir ../shared/data
    python cs_rejection_bn.py --teacher resnet34 --student resnet18 --dataset cifar10 --batch-size 256 --steps 39200
                                     # the paper's pair and budget (10M samples in batches of 256): use a GPU
    torchrun --nproc_per_node 4 cs_rejection_bn.py --teacher resnet34 --student resnet18 --batch-size 1024  # 4 GPUs

This is an independent implementation built from the paper's public abstract; every choice the abstract does not fix
is ours, named in a comment and exposed as a flag.
"""
import argparse
import contextlib
import copy
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
    p.add_argument("--teacher-ckpt", default=None,
                   help="teacher checkpoint (ours or akamaster's); default teachers/<teacher>_<dataset>_bn.pt")
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
    p.add_argument("--teacher-bn", default="cs", choices=["cs", "running"],
                   help="teacher BatchNorm statistics: cs = current noise batch, running = eval mode (the baseline)")
    p.add_argument("--cs-last-layers", type=int, default=0, metavar="K",
                   help="cs: only the teacher's last K BatchNorm layers use the noise batch's statistics, the earlier "
                        "ones their running statistics (0 = all, the paper's; our option, see the README)")
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
    p.add_argument("--fit-noise", action=argparse.BooleanOptionalAction, default=True,
                   help="before distilling, fit the noise's spectrum exponent, colour covariance and mean so that the "
                        "teacher's BatchNorm running statistics hold on it (ours; the noise stays Gaussian); "
                        "--no-fit-noise: the paper's white noise")
    p.add_argument("--fit-noise-steps", type=int, default=100, help="--fit-noise: Adam steps of the fit")
    p.add_argument("--calibrate-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="ours, after training: re-estimate the student's BN statistics on inputs optimized to the "
                        "teacher's BN statistics (synthesized, no image read); reported as eval/acc_calibrated and "
                        "saved as student_calibrated.pt beside the checkpoint (the trained student, as it was, stays "
                        "in checkpoint.pt). Default: on for a BN student; --no-calibrate-bn: the paper's student")
    p.add_argument("--calibrate-samples", type=int, default=512, help="--calibrate-bn: inputs to synthesize")
    p.add_argument("--calibrate-steps", type=int, default=100, help="--calibrate-bn: Adam steps per batch of 256")
    p.add_argument("--tau", type=float, default=1.0, help="distillation temperature")
    p.add_argument("--loss", default="kl", choices=["kl", "mse"],
                   help="kl: KL(teacher || student) at --tau, the paper's; mse (ours, a study arm): mean squared error "
                        "between the logits, each centred on its mean over the classes")
    p.add_argument("--feature-weight", type=float, default=None,
                   help="ours: add this weight x the squared error between the teacher's (CS) and the student's stage "
                        "outputs, relative to the teacher's; needs stages of the same shapes (resnet20/56 -> "
                        "resnet20, resnet34 -> resnet18). Default: 30 where they have them, else 0; 0 = the logits "
                        "alone, the paper's")
    # --- optimization
    p.add_argument("--steps", type=int, default=8000, help="student updates; noise samples seen = steps * batch-size")
    # Ours: small batches, 256k samples. The student is short of updates, not of samples: at the same 128k samples,
    # batches of 32 beat 256 on two seeds (README, "What limits learning from noise"); from 128k to 256k samples the
    # student still gains (README, "Earlier defaults"). A GPU runs larger batches faster per sample.
    p.add_argument("--batch-size", type=int, default=32, help="noise samples per student update (the paper: 256)")
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
    p.add_argument("--eval-every", type=int, default=1000, help="evaluate on the test split every this many steps")
    p.add_argument("--eval-batch-size", type=int, default=256, help="test batch size (sets acc_batchstats)")
    p.add_argument("--eval-subset", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    p.add_argument("--ckpt-every", type=int, default=800, help="save a resumable checkpoint every this many steps")
    p.add_argument("--out-dir", default="runs", help="run folders go here")
    p.add_argument("--resume", default=None,
                   help="run folder to continue with its own settings (its args.json; other flags are refused)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast + channels_last (default: on where the device supports bf16)")
    p.add_argument("--device", default=common.default_device(), help="cpu or cuda")
    args = p.parse_args(argv)
    if args.resume:  # the run's own settings; other flags beside --resume are refused, not silently ignored
        # a run started before --fit-noise, --feature-weight or --calibrate-bn existed drew white noise, matched the
        # logits alone and calibrated nothing
        before = {"fit_noise": False, "feature_weight": 0.0, "calibrate_bn": False}
        return common.resume_args(p, args, Path(__file__).stem, before=before, argv=argv)
    common.check_device(p, args.device)
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
    if args.fit_noise and args.noise_alpha:
        p.error("--noise-alpha sets the spectrum by hand: add --no-fit-noise (the default --fit-noise fits it)")
    if args.loss == "mse" and args.tau != 1:
        p.error("--tau applies to --loss kl only; --loss mse matches the logits themselves")
    if args.feature_weight is not None and args.feature_weight < 0:
        p.error(f"--feature-weight must be >= 0, got {args.feature_weight}")
    if args.cs_last_layers < 0 or (args.cs_last_layers and args.teacher_bn != "cs"):
        p.error("--cs-last-layers K needs K >= 0, and K > 0 only with --teacher-bn cs")
    if args.fit_noise_steps < 1 or args.calibrate_samples < 2 or args.calibrate_steps < 0:
        p.error("need --fit-noise-steps >= 1, --calibrate-samples >= 2 and --calibrate-steps >= 0")
    return args


# ======================================================================================================================
# YOUR TEACHER: the one place to plug in any nn.Module
# ======================================================================================================================
def load_teacher(args, num_classes):
    """The teacher and its info (mean, std: its input normalization; test_acc; sha256; path; norm; image_size).
    To distil a model of your own, return it here in eval mode, e.g.

        model = MyNet(); model.load_state_dict(torch.load("my.pt", weights_only=True))
        return model.eval(), {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26), "test_acc": None,
                              "sha256": common.sha256_of("my.pt"), "path": "my.pt", "norm": "bn", "image_size": 32}

    It needs BatchNorm layers (CS is what this script does to them). Its parameters are never changed."""
    ckpt = common.teacher_ckpt_or_exit(args.teacher, args.dataset, args.teacher_ckpt, args.data_dir)
    return common.load_teacher(args.teacher, ckpt, num_classes, args.dataset, args.teacher_mean, args.teacher_std)


# ======================================================================================================================
# ALGO LOGIC: current-statistics inference, the rejection sampler, the loss
# ======================================================================================================================
@contextlib.contextmanager
def current_statistics(model, last=0):
    """Inside this context every BatchNorm of `model` normalizes with the mean and (biased) variance of the current
    batch, per channel over (N, H, W), as in training mode - but its running buffers are neither read nor written, so
    the teacher comes out bit-identical (the prior work put the teacher in train mode and overwrote them).
    last=k: only the last k BatchNorm layers (in common.batchnorm_layers' order); the earlier ones keep their running
    statistics (0 = all of them)."""
    bns = common.batchnorm_layers(model)
    patched = bns[max(len(bns) - last, 0):] if last else bns
    for m in patched:
        # An instance attribute shadows the class's forward; deleting it restores the original exactly.
        m.forward = lambda x, m=m: F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)
        if common.dist_info()[1] > 1:  # under torchrun the statistics are those of the global batch
            m.forward = lambda x, m=m: global_batch_norm(x, m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


def global_batch_norm(x, m):
    """BatchNorm m with the statistics of the batch summed over all ranks: with the batch split over N processes the
    teacher's outputs are those one process gives on the whole batch (SyncBatchNorm's idea, without its buffers)."""
    dims = (0, *range(2, x.ndim))
    var, mean = common.batch_var_mean(x.float(), dims)
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = (x.float() - mean) * torch.rsqrt(var + m.eps)
    return (y * m.weight.view(shape) + m.bias.view(shape) if m.affine else y).to(x.dtype)


@torch.no_grad()
def teacher_forward(teacher, z, bn_mode, cs_last=0):
    """Teacher logits on a noise batch; with bn_mode='cs' the batch's own statistics define them (in the last
    cs_last BatchNorm layers only, when it is not 0)."""
    ctx = current_statistics(teacher, cs_last) if bn_mode == "cs" else contextlib.nullcontext()
    with ctx:
        return teacher(z).float()


@contextlib.contextmanager
def bn_statistics_loss(teacher):
    """Yields loss(x): how far the teacher's BatchNorm layers, in eval mode, find the batch statistics of x from the
    mean and variance they recorded on the teacher's training data. Per layer the KL divergence between per-channel
    Gaussians N(batch mean, batch var) and N(running mean, running var), averaged over channels; summed over layers
    (DeepInversion's BN-statistics loss). The teacher is only read; its mode is restored and the hooks removed after."""
    bns = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        raise common.InputError("--fit-noise and --calibrate-bn need BatchNorm layers with running statistics in the "
                                "teacher")
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for m in bns]

    def loss(x):
        inputs.clear()
        teacher(x)
        total = 0.0
        for m, h in zip(bns, inputs):
            var, mean = torch.var_mean(h.float(), dim=(0, *range(2, h.ndim)), correction=0)
            # a channel that is constant on this batch (dead behind a ReLU) would make the loss infinite and every
            # gradient NaN: its variance counts as 1e-12 (a floor far below any live channel's: the others are exact)
            var, rv = var.clamp_min(1e-12), m.running_var.clamp_min(1e-12)
            total = total + (((mean - m.running_mean) ** 2 + var) / rv - torch.log(var / rv) - 1).mean() / 2
        if not torch.isfinite(total):  # a host sync, once per Adam step of the fit or the inversion
            raise common.InputError("the BN-statistics loss is not finite: the teacher's activations in eval mode "
                                    "overflow on noise; run with --no-fit-noise and --no-calibrate-bn")
        return total

    was_training = teacher.training
    teacher.eval()
    try:
        yield loss
    finally:
        for h in hooks:
            h.remove()
        teacher.train(was_training)


def fit_noise(teacher, shape, steps, generator, batch_size=128, lr=0.05):
    """Choose the Gaussian the student learns from, without data: a stationary Gaussian with a 1/f^alpha spectrum,
    a C x C colour mixing (lower-triangular L: channel covariance L L^T) and a per-channel mean, fitted so that every
    BatchNorm layer of the teacher, in eval mode, sees on it the mean and variance it recorded on its training data
    (bn_statistics_loss, used here to set 1 + C(C+1)/2 + C numbers of a noise distribution, not the pixels of any
    image). White noise puts most of its power at high frequencies and no correlation between colour channels, unlike
    anything the teacher was trained on; the fitted noise is still fresh Gaussian noise every step. Returns the
    parameters and the loss of white noise and of the fitted noise. The teacher is only read (its parameters need no
    grad)."""
    dev = next(teacher.parameters()).device
    C = shape[0]
    alpha = torch.tensor(2.0, requires_grad=True)  # start from the spectrum of natural images
    chol, mean = torch.eye(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    opt = torch.optim.Adam([alpha, chol, mean], lr=lr)
    with bn_statistics_loss(teacher) as bn_loss:
        with torch.no_grad():
            white = bn_loss(torch.randn((batch_size, *shape), generator=generator).to(dev)).item()
        for _ in tqdm(range(steps), desc="fitting the noise to the teacher's BN statistics", leave=False):
            w = torch.randn((batch_size, *shape), generator=generator).to(dev)
            loss = bn_loss(common.shape_noise(w, alpha, torch.tril(chol), mean))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0, 8)
        with torch.no_grad():
            params = {"alpha": alpha.item(), "color": torch.tril(chol).detach().clone(), "mean": mean.detach().clone()}
            w = torch.randn((batch_size, *shape), generator=generator).to(dev)
            fitted = bn_loss(common.shape_noise(w, params["alpha"], params["color"], params["mean"])).item()
    return params, {"noise/bn_loss_white": white, "noise/bn_loss_fitted": fitted}


def invert_teacher_inputs(teacher, shape, n, steps, generator, noise_params=None, batch_size=256, lr=0.1, tv=1e-3,
                          bf16=False):
    """n inputs made from the teacher alone, for calibrate_bn: each batch starts as noise (the fitted noise when
    noise_params is given) and its pixels are optimized by Adam so that the teacher's BatchNorm layers see the batch
    statistics they recorded on their training data (bn_statistics_loss), plus a small total-variation prior
    (tv x the mean squared difference between neighbouring pixels). DeepInversion's objective without its
    class-conditional term: no image of any dataset is read, but these are synthesized inputs, which the paper's
    method does without; here they are used only to re-estimate the student's BN statistics, never to train it.
    bf16: the teacher's forward (and so its backward) under bf16 autocast; the inputs, their Adam state and the
    statistics compared stay float32 (README, Speed: 1.9x faster through a ResNet-34 on a CPU with native bf16)."""
    dev = next(teacher.parameters()).device
    batches = []
    with bn_statistics_loss(teacher) as bn_loss:
        for i in range(0, n, batch_size):
            x = common.sample_noise(min(batch_size, n - i), shape, generator, **(noise_params or {})).to(dev)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            for _ in tqdm(range(steps), desc=f"inverting the teacher's BN statistics, batch {i // batch_size + 1}",
                          leave=False):
                smooth = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., 1:] - x[..., :-1]).pow(2).mean()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    fit = bn_loss(x)
                loss = fit + tv * smooth
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            batches.append(x.detach())
    return batches


@torch.no_grad()
def calibrate_bn(student, batches):
    """A copy of student whose BatchNorm running statistics are re-estimated on `batches` (a cumulative average,
    BatchNorm's momentum=None); its weights are unchanged."""
    net = copy.deepcopy(student).train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    for x in batches:
        net(x)
    return net.eval()


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


def logit_mse_loss(student_logits, teacher_logits, weights=None):
    """Mean squared error between the logits, each centred on its mean over the classes (a softmax does not see a
    shift of all logits, so neither does this loss), averaged over classes, per sample (optionally weighted)."""
    d = student_logits.float() - teacher_logits
    se = (d - d.mean(1, keepdim=True)).pow(2).mean(1)
    return (se * weights).mean() if weights is not None else se.mean()


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


@torch.no_grad()
def teacher_features(teacher, z, bn_mode, cs_last=0):
    """The teacher's stage outputs on a noise batch, its BatchNorm layers as in teacher_forward."""
    with stage_outputs(teacher) as outs:
        teacher_forward(teacher, z, bn_mode, cs_last)
    return list(outs)


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
    t_main = time.time()  # the setup before the loop (teacher loaded and measured, noise fitted) is timed apart
    args = parse_args(argv)
    resume_dir = Path(args.resume) if args.resume else None
    if args.teacher_bn == "running" and args.balance == "reject":
        print("note: rejection on an eval-mode teacher only balances the few classes it predicts")

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
    teacher.requires_grad_(False)  # only read: the noise fit differentiates through it, nothing updates it
    x_test, y_test = common.load_split(args.dataset, "test", args.data_dir, tinfo["image_size"])
    if args.eval_subset:
        x_test, y_test = x_test[:args.eval_subset], y_test[:args.eval_subset]
    n_bn = len(common.batchnorm_layers(teacher))
    if not n_bn:
        sys.exit(f"teacher {args.teacher} ({tinfo['norm']}) has no BatchNorm: CS does nothing; use batch_align_ln_gn.py")
    if args.cs_last_layers > n_bn:
        sys.exit(f"--cs-last-layers {args.cs_last_layers}: teacher {args.teacher} has only {n_bn} BatchNorm layers")
    torch.manual_seed(args.seed)  # the student's initialization depends on the seed alone, not on the teacher
    student = common.build_model(args.student, num_classes, args.student_norm)
    if args.calibrate_bn is None:  # our default: a BN student is calibrated after training
        args.calibrate_bn = common.has_batchnorm(student)
    elif args.calibrate_bn and not common.has_batchnorm(student):
        sys.exit(f"--calibrate-bn re-estimates BatchNorm statistics: student {args.student} has none")
    teacher, student = teacher.to(args.device), student.to(args.device)
    t_fmt, s_fmt = common.memory_format(teacher, args.bf16), common.memory_format(student, args.bf16)
    teacher, student = teacher.to(memory_format=t_fmt), student.to(memory_format=s_fmt)
    t_shapes, s_shapes = stage_shapes(teacher, student, x_test.shape[1:3], args.device)
    stages_match = bool(t_shapes) and t_shapes == s_shapes
    if args.feature_weight is None:  # our default: match the stage outputs wherever the shapes allow it
        args.feature_weight = 30.0 if stages_match else 0.0  # 30: won over 10 on three teachers, two seeds (README)
    elif args.feature_weight and not stages_match:
        sys.exit(f"--feature-weight needs stages of the same shapes: teacher {args.teacher} has {t_shapes}, "
                 f"student {args.student} {s_shapes}")
    # DDP averages the gradients of the ranks' equal shares: the gradient of the global batch's mean loss.
    net = torch.nn.parallel.DistributedDataParallel(student) if world > 1 else student
    teacher_fn = lambda z: teacher_forward(teacher, z.contiguous(memory_format=t_fmt), args.teacher_bn,
                                            args.cs_last_layers)
    mean, std = tinfo["mean"], tinfo["std"]  # the noise lives in the teacher's normalized input space
    shape = (3, *x_test.shape[1:3])
    evaluate = lambda model, bn: common.evaluate(model, x_test, y_test, mean, std, args.eval_batch_size, bn,
                                                 args.device, args.bf16)
    # The teacher's accuracy in fp32 eval mode, as train_teacher.py records it: the number this run starts from.
    teacher_acc = common.evaluate(teacher, x_test, y_test, mean, std, args.eval_batch_size, "running", args.device)

    opt = (torch.optim.Adam(student.parameters(), lr=args.lr, weight_decay=args.weight_decay) if args.optimizer == "adam"
           else torch.optim.SGD(student.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay))
    sampler = RejectionSampler(num_classes, args.marginal_momentum, args.accept_floor, coin_gen)
    stats = new_stats(num_classes, args.device)
    step, curve, noise_params, fit_stats = 0, [], None, {}
    # Wall time over every process of a resumed run: each checkpoint carries what the earlier ones spent (None where
    # a checkpoint predates this record: provenance then knows only this process's time).
    wall_before, resumed_at, setup_s, stretches = 0.0, [], None, []

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
        step, stats, curve = ck["step"], new_stats(num_classes, args.device, ck["stats"]), ck["curve"]
        wall_before, resumed_at, setup_s = ck.get("wall_s"), [*ck.get("resumed_at", []), step], ck.get("setup_s")
        noise_params, fit_stats = ck.get("noise_params"), ck.get("fit_stats", {})
        stretches = ck.get("stretches", [])  # none in a checkpoint that predates this record
        print(f"resumed {run_dir} at step {step}")
    elif rank == 0:
        run_dir = common.make_run_dir(args.out_dir, args.dataset, Path(__file__).stem, args.teacher, args.seed)
        common.write_json(run_dir / "args.json", vars(args), keep_paths=True)
    # where and how each process trained: a resumed run may continue on another machine, in another precision
    stretches.append({"from_step": step, "device": common.device_name(args.device), "bf16": args.bf16})
    if args.fit_noise and noise_params is None:  # ALGO LOGIC (our option): the noise fitted to the teacher's BN
        with common.stop_message(run_dir, lambda: step):  # Ctrl-C here: no checkpoint yet, say so
            noise_params, fit_stats = fit_noise(teacher, shape, args.fit_noise_steps,
                                                torch.Generator().manual_seed(args.seed + 3_000))
        print(f"fitted noise: 1/f^{noise_params['alpha']:.2f}, channel covariance "
              f"{(noise_params['color'] @ noise_params['color'].T).diag().tolist()} (diag), BN-statistics loss "
              f"{fit_stats['noise/bn_loss_white']:.2f} on white noise -> {fit_stats['noise/bn_loss_fitted']:.2f}")
    log = common.MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume_dir else None) if rank == 0 else None
    if rank == 0:
        print(f"run folder {run_dir}\nteacher {args.teacher} ({tinfo['path']}): test acc {teacher_acc:.4f} "
              f"(recorded {tinfo['test_acc']}), teacher BN: {args.teacher_bn}"
              f"{f' (last {args.cs_last_layers} layers)' if args.cs_last_layers else ''}, balance: {args.balance}, "
              f"stage outputs matched: {f'weight {args.feature_weight:g}' if args.feature_weight else 'no'}"
              f"{'' if stages_match else ' (their shapes differ)'}")

    def save():
        if rank > 0:
            return
        common.save_checkpoint(run_dir / "checkpoint.pt", student=student.state_dict(), optimizer=opt.state_dict(),
                               noise_gen=noise_gen.get_state(), sampler=sampler.state_dict(), step=step,
                               noise_params=noise_params, fit_stats=fit_stats, teacher_sha256=tinfo["sha256"],
                               stats=stats, curve=curve, wall_s=wall_time(), resumed_at=resumed_at, setup_s=setup_s,
                               stretches=stretches, args=vars(args))

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
    setup_s = setup_s if resume_dir else t_start - t_main  # the first process's: a resumed one's is not counted
    # Ctrl-C or SIGTERM: the step under way ends and is saved, the bar closes, then stop_message says where the run
    # stopped and how to resume it
    with common.stop_message(run_dir, lambda: step), common.stop_after_step(enabled=world == 1) as stop, \
            tqdm(total=args.steps, initial=step, desc="noise KD", dynamic_ncols=True, disable=rank > 0) as bar:
        while step < args.steps:
            t_step = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(args, step)
            with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
                # ALGO LOGIC: noise -> teacher (CS) -> accept / reject: a batch of noise and the teacher's logits on it
                z, t_logits, weights = draw_batch(args, teacher_fn, sampler, noise_gen, shape, stats, noise_params)
                student_stages = stage_outputs(student) if args.feature_weight else contextlib.nullcontext()
                with common.synced_batch_norm(student), student_stages as s_feats:
                    s_logits = net(z.contiguous(memory_format=s_fmt))  # BN student: global-batch statistics
                t_feats = teacher_features(teacher, z.contiguous(memory_format=t_fmt), args.teacher_bn,
                                           args.cs_last_layers) if args.feature_weight else None
            # ALGO LOGIC: KL(teacher || student) * tau^2 (the paper's), or MSE between centred logits (--loss mse)
            logit_loss = (kd_loss(s_logits, t_logits, args.tau, weights) if args.loss == "kl"
                          else logit_mse_loss(s_logits, t_logits, weights))
            loss, feat_loss = logit_loss, None
            if args.feature_weight:  # ALGO LOGIC (ours): match the teacher's stage outputs too, on the same batch
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
    batches = None
    if args.calibrate_bn:  # ALGO LOGIC (our option): a deployable BN student
        with common.stop_message(run_dir, lambda: step):  # Ctrl-C here: --resume calibrates the saved student
            try:
                batches = invert_teacher_inputs(teacher, shape, args.calibrate_samples, args.calibrate_steps,
                                                torch.Generator().manual_seed(args.seed + 5_000), noise_params,
                                                bf16=args.bf16)
            except common.InputError as e:  # the trained student is kept: its results are written without it
                print(f"--calibrate-bn failed, so the results have no calibrated student: {e}", file=sys.stderr)
    if batches:
        calibrated = calibrate_bn(student, batches)
        final = {**final, "eval/acc_calibrated": evaluate(calibrated, "running")}
        common.save_checkpoint(run_dir / "student_calibrated.pt", student=calibrated.state_dict(), args=vars(args))
        print(f"calibrated on {args.calibrate_samples} inputs inverted from the teacher: eval mode "
              f"{final['eval/acc_running']:.4f} -> {final['eval/acc_calibrated']:.4f} (test-batch statistics "
              f"{final['eval/acc_batchstats']:.4f})")
    results = {"teacher/acc": teacher_acc, "teacher/acc_recorded": tinfo["test_acc"], "teacher/sha256": tinfo["sha256"],
               "teacher/ckpt": tinfo["path"], **final, **noise_summary(stats), **fit_stats,
               "noise/fitted": None if noise_params is None else {k: v.tolist() if torch.is_tensor(v) else v
                                                                  for k, v in noise_params.items()},
               "train/final_loss": stats["last_loss"], "eval/batch_size": args.eval_batch_size,
               "eval/num_images": len(y_test), "samples_seen": stats["student_samples"],
               "teacher_samples": stats["teacher_samples"], "shortfall": stats["shortfall"],
               "samples_per_s": stats["student_samples"] / max(stats["train_s"], 1e-9),
               "teacher_samples_per_s": stats["teacher_samples"] / max(stats["train_s"], 1e-9),
               "sampler_time_frac": stats["sampler_s"] / max(stats["train_s"], 1e-9), "curve": curve,
               "args": vars(args),  # provenance: the wall time counts from the loop's start, setup_s is before it
               "provenance": {**common.provenance(args.device, wall_time(), resumed_at, time.time() - t_start),
                              "setup_s": setup_s, "stretches": stretches}}
    common.write_json(run_dir / "results.json", results)
    common.finish_distributed()
    calibrated = (f", calibrated {results['eval/acc_calibrated']:.4f} (student_calibrated.pt)"
                  if "eval/acc_calibrated" in results else "")
    print(f"done: acc running {results['eval/acc_running']:.4f}, test-batch stats {results['eval/acc_batchstats']:.4f} "
          f"(batch {args.eval_batch_size}){calibrated}, {results['samples_per_s']:.0f} samples/s -> "
          f"{run_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    common.run_main(main)
