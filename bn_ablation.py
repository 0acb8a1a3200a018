"""BatchNorm ablation: which BatchNorm layers of a teacher need current statistics for noise distillation to work,
and which part of them (the batch mean, the batch variance, the affine parameters).

For every configuration ("point") of the teacher's BN layers this script measures, with no retraining:
  - the teacher's accuracy on real test images in that configuration (CS layers use each test batch's statistics),
  - the teacher's label histogram on Gaussian noise: normalized entropy H / log K, largest class share,
and, for the points named in --distill-k / --distill-points, a short noise distillation into a fresh student with the
student's accuracy and its agreement with the teacher on test images. That student learns as cs_rejection_bn.py's
does with --no-fit-noise --feature-weight 0 --balance none --no-calibrate-bn (white noise, the logits alone, no
rejection, no calibration), with Adam, a short warm-up and cosine decay, in batches of --batch-size.

Sweeps (README: BatchNorm ablation): first-k (BN layers 1..k in forward order on running statistics, the rest CS; k = 0 is
full CS, k = L eval mode), last-k, stage (one stage at a time on running statistics), components (all layers with CS
mean only, CS variance only, or both; with and without the affine parameters), and retrain: teachers with GroupNorm
in place of BatchNorm in the first k stages (train_teacher.py --norm gn-bn-bn etc., the shipped recipe; with
--retrain a missing one is trained first, 20-40 min each on a CPU), their remaining BN layers on CS, every point with
a student.

    python bn_ablation.py --data-dir ../shared/data --teacher-ckpt ../shared/teachers/akamaster_resnet20-12fca82f.th
    python bn_ablation.py --data-dir ../shared/data --sweep retrain --retrain

Results: README section "BatchNorm ablation", generated from results/bn_ablation/. Independent implementation built
from the paper's public abstract; the sweep design is ours.
"""
import argparse
import contextlib
import json
import math
import random
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=common.HelpFormatter)
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
    p.add_argument("--dataset", default="cifar10", choices=common.DATASETS, help="evaluation data")
    p.add_argument("--data-dir", default="./data", help="folder of the <dataset>_test.npz cache (downloaded if missing)")
    p.add_argument("--sweep", nargs="+", default=["first-k", "last-k", "stage", "components"],
                   choices=["first-k", "last-k", "stage", "components", "retrain"],
                   help="which sweeps to run (retrain: teachers with GroupNorm in the first k stages; see --retrain)")
    p.add_argument("--retrain-k", type=int, nargs="*", default=[0, 1, 2, 3], choices=[0, 1, 2, 3],
                   help="retrain sweep: stages with GroupNorm (k = 0 and 3 are the shipped BN and GN ResNet-20s)")
    p.add_argument("--retrain", action="store_true",
                   help="retrain sweep: train missing teachers with train_teacher.py (about 20-40 min each on a CPU)")
    p.add_argument("--retrain-epochs", type=int, default=20,
                   help="epochs of each retrained teacher (shipped recipe); an existing teacher file trained for other "
                        "epochs is refused")
    p.add_argument("--k-list", type=int, nargs="*", default=None, help="k values of first-k / last-k (default 0..L)")
    p.add_argument("--distill-k", type=int, nargs="*", default=[0, 1, 3, 7],
                   help="first-k / last-k points that also get a student (every stage / components point does not)")
    p.add_argument("--distill-points", nargs="*", default=["cs-mean", "cs-var"],
                   help="stage / components points (by name) that also get a student")
    p.add_argument("--probe-samples", type=int, default=2048, help="noise samples for the teacher's label histogram")
    p.add_argument("--steps", type=int, default=500, help="student steps per distilled point")
    p.add_argument("--batch-size", type=int, default=256, help="noise batch (the teacher's CS batch)")
    p.add_argument("--lr", type=float, default=2e-3,
                   help="peak Adam learning rate (linear warm-up for min(50, steps // 10) steps, then cosine decay)")
    p.add_argument("--eval-batch-size", type=int, default=256, help="test batch size (CS layers use its statistics)")
    p.add_argument("--eval-subset", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of student init and noise (the same for every point)")
    p.add_argument("--out-dir", default="runs", help="run folders go here")
    p.add_argument("--resume", default=None, help="run folder to continue: finished points are kept")
    p.add_argument("--copy-results-to", default=None,
                   help="also write results.json to this file (e.g. results/bn_ablation/resnet20.json)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast + channels_last (default: on where the device supports bf16)")
    p.add_argument("--device", default=common.default_device(), help="cpu or cuda")
    args = p.parse_args(argv)
    if args.resume:  # the sweep's own settings; other flags beside --resume are refused, not silently ignored
        return common.resume_args(p, args, Path(__file__).stem, extra_keys=("command",), argv=argv)
    common.check_device(p, args.device)
    args.student = args.student or ("resnet18" if args.teacher == "resnet34" else "resnet20")
    if args.bf16 is None:
        args.bf16 = common.bf16_supported(args.device)
    if args.batch_size < 2 or args.probe_samples < 1 or args.steps < 1:
        p.error("need --batch-size >= 2 (CS needs a batch), --probe-samples >= 1 and --steps >= 1")
    if args.probe_samples % args.batch_size:  # the histogram is of whole CS batches: exactly the samples it says
        p.error(f"--probe-samples {args.probe_samples} must be a multiple of --batch-size {args.batch_size}")
    if args.lr < 0 or args.eval_batch_size < 1 or args.eval_subset < 0:
        p.error("need --lr >= 0, --eval-batch-size >= 1 and --eval-subset >= 0")
    if "retrain" in args.sweep and args.teacher not in common.CIFAR_RESNET_DEPTHS:  # checked before any sweep runs
        p.error(f"--sweep retrain needs a CIFAR ResNet teacher (3 stages), not {args.teacher}")
    return args


# ======================================================================================================================
# YOUR TEACHER: the one place to plug in any nn.Module
# ======================================================================================================================
def load_teacher(args, num_classes):
    """The teacher and its info (mean, std: its input normalization; test_acc; sha256; path; norm; image_size).
    To study a model of your own, return it here in eval mode, e.g.

        model = MyNet(); model.load_state_dict(torch.load("my.pt", weights_only=True))
        return model.eval(), {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26), "test_acc": None,
                              "sha256": common.sha256_of("my.pt"), "path": "my.pt", "norm": "bn", "image_size": 32}

    The ablation switches its BatchNorm layers one by one (the retrain sweep trains its own teachers instead); its
    parameters are never changed."""
    ckpt = common.teacher_ckpt_or_exit(args.teacher, args.dataset, args.teacher_ckpt, args.data_dir)
    return common.load_teacher(args.teacher, ckpt, num_classes, args.dataset, args.teacher_mean, args.teacher_std)


# ======================================================================================================================
# ALGO LOGIC: a per-layer BatchNorm switch, the sweeps, the diagnostics
# ======================================================================================================================
CS = {"mean": "cs", "var": "cs", "affine": True}
RUNNING = {"mean": "running", "var": "running", "affine": True}


def configured_bn(m, x, mean, var, affine):
    """BatchNorm with the mean and the variance each taken from the current batch ("cs") or the running buffers,
    with or without the affine parameters. Never writes the buffers (the teacher must come out unchanged)."""
    xf = x.float()  # statistics in fp32 even under bf16 autocast
    if "cs" in (mean, var):  # BN's biased variance; over the global batch under torchrun
        batch_var, batch_mean = (v.flatten() for v in common.batch_var_mean(xf, (0, 2, 3)))
    mu = batch_mean if mean == "cs" else m.running_mean
    sigma2 = batch_var if var == "cs" else m.running_var
    y = (xf - mu.view(1, -1, 1, 1)) * torch.rsqrt(sigma2 + m.eps).view(1, -1, 1, 1)
    if affine:
        y = y * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)
    return y.to(x.dtype)


def bn_layers(model):
    """(name, module) of every BatchNorm, in forward order for the models of common.py (registration order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def bn_config(model, configs):
    """Inside this context BN layer i follows configs[i] (a dict of configured_bn's keyword arguments)."""
    layers = [m for _, m in bn_layers(model)]
    if len(configs) != len(layers):
        raise ValueError(f"{len(configs)} configurations for {len(layers)} BatchNorm layers")
    for m, c in zip(layers, configs):
        m.forward = partial(configured_bn, m, **c)  # an instance attribute shadows the class's forward
    try:
        yield model
    finally:
        for m in layers:
            del m.forward


def sweep_points(sweep, names, k_list=None):
    """The points of one sweep: a list of (point name, k or None, per-layer configs). names: BN layer names."""
    L = len(names)
    ks = range(L + 1) if k_list is None else [k for k in k_list if 0 <= k <= L]
    if sweep == "first-k":
        return [(f"first-{k}", k, [RUNNING if i < k else CS for i in range(L)]) for k in ks]
    if sweep == "last-k":
        return [(f"last-{k}", k, [RUNNING if i >= L - k else CS for i in range(L)]) for k in ks]
    if sweep == "stage":  # a stage = the first component of the layer's name: bn1 (the stem), layer1, layer2, ...
        stages = list(dict.fromkeys("stem" if "." not in n else n.split(".")[0] for n in names))
        stage_of = ["stem" if "." not in n else n.split(".")[0] for n in names]
        return [(f"stage-{s}", None, [RUNNING if stage_of[i] == s else CS for i in range(L)]) for s in stages]
    if sweep == "components":
        points = []
        for affine in (True, False):
            for label, mean, var in (("cs-mean", "cs", "running"), ("cs-var", "running", "cs"), ("cs-both", "cs", "cs")):
                cfg = {"mean": mean, "var": var, "affine": affine}
                points.append((label + ("" if affine else "-no-affine"), None, [cfg] * L))
        return points
    raise ValueError(f"unknown sweep {sweep!r}")


def check_points(args, names):
    """One-line errors for sweep values that name no point of this teacher (its BN layers `names`), which would
    otherwise just never run."""
    outside = [k for k in args.k_list or () if not 0 <= k <= len(names)]
    if outside:
        raise common.InputError(f"--k-list {outside}: k must be 0 to {len(names)}, the teacher's BN layers")
    named = {p for sweep in ("stage", "components") for p, _, _ in sweep_points(sweep, names)}
    unknown = sorted(set(args.distill_points) - named)
    if unknown:
        raise common.InputError(f"--distill-points {unknown}: not a stage or components point of this teacher; "
                                f"choose from {', '.join(sorted(named))}")


def train_teacher(argv):
    """Train one teacher of the retraining arm with train_teacher.py (kept beside this file), in its own process."""
    script = Path(__file__).with_name("train_teacher.py")
    if not script.is_file():
        raise common.InputError(f"--retrain trains teachers with train_teacher.py, which is not beside {script.parent}")
    try:
        subprocess.run([sys.executable, str(script), *argv], check=True)
    except subprocess.CalledProcessError as e:  # its own message is above; what it stopped, --resume continues
        raise common.InputError(f"train_teacher.py {' '.join(argv)} failed (exit status {e.returncode})") from None


def retrain_points(args):
    """The retraining arm (README: BatchNorm ablation): GroupNorm in place of BatchNorm in the first k stages (the stem goes
    with the first), trained by train_teacher.py with the recipe of the shipped teachers, so that k = 0 and k = 3 are
    the shipped BN and GN ResNet-20s. Returns (point name, k, checkpoint path, train_teacher.py arguments)."""
    points = []
    for k in args.retrain_k:
        norms = ["gn"] * k + ["bn"] * (3 - k)
        norm = norms[0] if len(set(norms)) == 1 else "-".join(norms)
        path = common.REPO / "teachers" / f"{args.teacher}_{args.dataset}_{norm}.pt"
        train = ["--model", args.teacher, "--norm", norm, "--dataset", args.dataset, "--data-dir", args.data_dir,
                 "--epochs", str(args.retrain_epochs), "--seed", "0", "--out", str(path), "--device", args.device,
                 "--bf16" if args.bf16 else "--no-bf16",
                 "--resume"]  # continues a training that was stopped (from <out>.partial); else starts it
        points.append((f"gn-stages-{k}", k, path, train))
    return points


@torch.no_grad()
def noise_labels(teacher, configs, args, generator, shape, num_classes):
    """The teacher's argmax histogram on args.probe_samples noise samples, in CS batches of args.batch_size."""
    counts, world = torch.zeros(num_classes, dtype=torch.long), common.dist_info()[1]
    n = args.batch_size // world  # under torchrun each rank labels its slice of every global batch
    with bn_config(teacher, configs), torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=args.bf16):
        for _ in range(math.ceil(args.probe_samples / args.batch_size)):
            z = common.sample_noise(n * world, shape, generator, device=args.device)[common.my_slice(n)]
            counts += torch.bincount(teacher(z).argmax(1).cpu(), minlength=num_classes)
    return common.all_reduce_sum(counts)


# ======================================================================================================================
# Boilerplate: a short noise-KD loop (cs_rejection_bn.py's with white noise, the logits alone, no rejection and no
# calibration), evaluation, bookkeeping
# ======================================================================================================================
def distill(teacher, configs, args, shape, num_classes, desc):
    """A fresh student distilled from the teacher in this BN configuration; the same seed and noise for every point."""
    torch.manual_seed(args.seed)
    student = common.build_model(args.student, num_classes).to(args.device)
    fmt, t_fmt = common.memory_format(student, args.bf16), common.memory_format(teacher, args.bf16)
    student = student.to(memory_format=fmt)
    world = common.dist_info()[1]  # torchrun: each rank its slice of the global batch, gradients averaged by DDP
    net = torch.nn.parallel.DistributedDataParallel(student) if world > 1 else student
    gen = torch.Generator(args.device).manual_seed(args.seed + 1_000)
    opt = torch.optim.Adam(student.parameters(), lr=args.lr)
    warmup, nonfinite = min(50, args.steps // 10), torch.zeros((), device=args.device)
    for step in tqdm(range(args.steps), desc=desc, leave=False, dynamic_ncols=True, disable=world > 1 and
                     common.dist_info()[0] > 0):
        lr = args.lr * ((step + 1) / warmup if step < warmup else
                        0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        n = args.batch_size // world
        z = common.sample_noise(n * world, shape, gen, device=args.device)[common.my_slice(n)]
        z = z.contiguous(memory_format=fmt)
        with torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=args.bf16):
            with torch.no_grad(), bn_config(teacher, configs):
                t = teacher(z.contiguous(memory_format=t_fmt)).float()
            with common.synced_batch_norm(student):
                s = net(z).float()
        loss = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")
        nonfinite += (~torch.isfinite(loss.detach())).float()  # read every 10 steps: no host sync inside a step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ((step + 1) % 10 == 0 or step + 1 == args.steps) and common.all_reduce_sum(nonfinite).item():
            raise FloatingPointError(f"{desc}: distillation loss became non-finite at or before step {step + 1}")
    return student


def main(argv=None):
    args = parse_args(argv)
    resume_dir = Path(args.resume) if args.resume else None
    if not resume_dir:  # kept in args.json, so that the results say how they were made even after a resume
        args.command = "python bn_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    # torchrun: every rank its slice of each global batch, CS statistics of the global batch; rank 0 logs and saves
    args.device = common.init_distributed(args.device)
    rank, world = common.dist_info()
    if args.batch_size % world or (world > 1 and args.retrain):
        sys.exit(f"under torchrun --batch-size must be a multiple of the {world} processes, and --retrain must have "
                 f"trained the teachers in one process before")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    num_classes = common.num_classes(args.dataset, args.data_dir)
    teacher, tinfo = load_teacher(args, num_classes)  # YOUR TEACHER: see load_teacher above
    x_test, y_test = common.load_split(args.dataset, "test", args.data_dir, tinfo["image_size"])
    if args.eval_subset:
        x_test, y_test = x_test[:args.eval_subset], y_test[:args.eval_subset]
    shape = (3, *x_test.shape[1:3])
    names = [n for n, _ in bn_layers(teacher)]
    if not names:
        sys.exit(f"teacher {args.teacher} has no BatchNorm layer to ablate")
    check_points(args, names)
    teacher = teacher.to(args.device)
    teacher = teacher.to(memory_format=common.memory_format(teacher, args.bf16))
    mean, std = tinfo["mean"], tinfo["std"]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    # a teacher's own (eval-mode) answers on the test images: the agreement reference
    predictions = lambda model, stats: common.predict(model, x_test, *stats, 500, "running", args.device).cpu()
    teacher_preds = predictions(teacher, (mean, std))

    run_dir = resume_dir
    if not resume_dir and rank == 0:
        run_dir = common.make_run_dir(args.out_dir, args.dataset, Path(__file__).stem, args.teacher, args.seed)
        common.write_json(run_dir / "args.json", vars(args), keep_paths=True)
    done = {}
    if resume_dir and (run_dir / "metrics.jsonl").exists():
        done = {r["point"]: {k: v for k, v in r.items() if k != "step"}
                for r in common.MetricsLog.read(run_dir / "metrics.jsonl")}
    log = common.MetricsLog(run_dir / "metrics.jsonl", resume_step=len(done) if resume_dir else None) if rank == 0 else None
    if rank == 0:
        print(f"run folder {run_dir}\nteacher {args.teacher} ({tinfo['path']}), {len(names)} BatchNorm layers")

    def run_point(model, configs, key, sweep, k, reference, wants_student, stats):
        """Diagnostics of one configuration (teacher accuracy, noise labels) and, if wanted, a distilled student.
        stats: the teacher's input normalization, which its student (taught in that input space) shares."""
        evaluate = lambda net, y, bn="running": common.evaluate(net, x_test, y, *stats, args.eval_batch_size, bn,
                                                                args.device, args.bf16)
        with bn_config(model, configs):
            teacher_acc = evaluate(model, y_test)  # CS layers: statistics of each test batch
        gen = torch.Generator(args.device).manual_seed(args.seed + 3_000)  # the same noise for every point
        labels = common.label_stats(noise_labels(model, configs, args, gen, shape, num_classes))
        row = {"point": key, "sweep": sweep, "k": k, "teacher/acc": teacher_acc,
               "noise/label_entropy": labels["entropy"], "noise/label_max_share": labels["max_share"],
               "noise/label_missing": labels["missing"]}
        if wants_student:
            student = distill(model, configs, args, shape, num_classes, key)
        if wants_student and rank == 0:
            row.update({"eval/acc_running": evaluate(student, y_test), "eval/acc_batchstats": evaluate(student, y_test, "batch"),
                        "eval/agreement_running": evaluate(student, reference),
                        "eval/agreement_batchstats": evaluate(student, reference, "batch")})
        return row

    def retrained(path, train):
        """A getter of (teacher, its eval-mode test predictions, all its BN layers on CS) for one retrained teacher;
        with --retrain a missing one is trained first, else it is skipped with the command that makes it."""
        def get():
            if not path.is_file():
                if not args.retrain:
                    print(f"skipped: {path} is missing; --retrain trains it (python train_teacher.py {' '.join(train)})")
                    return None, None, None, None
                train_teacher(train)
            epochs = common.load_checkpoint(path).get("args", {}).get("epochs")
            if epochs not in (None, args.retrain_epochs):  # a sweep never mixes teachers of other lengths silently
                raise common.InputError(f"{path} was trained for {epochs} epochs, not --retrain-epochs "
                                        f"{args.retrain_epochs}: use {epochs}, or move it away to train it anew")
            model, info = common.load_teacher(args.teacher, path, num_classes, args.dataset)
            model = model.to(args.device).to(memory_format=common.memory_format(model, args.bf16))
            stats = (info["mean"], info["std"])
            return model, predictions(model, stats), [CS] * len(bn_layers(model)), stats
        return get

    t0, rows = time.time(), []
    students = {}  # configuration -> the point whose student it trained: identical points (first-0 = last-0 = cs-both,
    #                first-L = last-L) get one student, the same one a second run with the same seed would train
    for sweep in args.sweep:
        if sweep == "retrain":
            points = [(p, k, retrained(path, train)) for p, k, path, train in retrain_points(args)]
        else:
            points = [(p, k, lambda c=configs: (teacher, teacher_preds, c, (mean, std)))
                      for p, k, configs in sweep_points(sweep, names, args.k_list)]
        for point, k, get_teacher in points:
            key = f"{sweep}/{point}"
            same = None if sweep == "retrain" else json.dumps(get_teacher()[2])  # retrained teachers are all different
            if key in done:
                rows.append(done[key])
                if "eval/acc_running" in done[key] and same is not None:
                    students.setdefault(same, done[key])
                continue
            model, reference, configs, stats = get_teacher()
            if model is None:
                continue
            wants_student = sweep == "retrain" or ((k in args.distill_k) if k is not None else (point in args.distill_points))
            twin = students.get(same) if wants_student else None
            t_point = time.time()
            row = run_point(model, configs, key, sweep, k, reference, wants_student and twin is None, stats)
            row["wall_s"] = time.time() - t_point  # summed over the points, the sweep's time over every process
            if twin is not None:  # the same teacher configuration: its student, not a second identical training
                row.update({k_: v for k_, v in twin.items() if k_.startswith("eval/")}, student_of=twin["point"])
            elif wants_student and same is not None:
                students[same] = row
            rows.append(row)
            if rank == 0:
                log.log(len(rows), **row)
                tqdm.write(" ".join(f"{k_}={v:.4f}" if isinstance(v, float) else f"{k_}={v}" for k_, v in row.items()))

    if any(not torch.equal(before[k], v) for k, v in teacher.state_dict().items()):
        raise RuntimeError("the teacher changed during the sweep")  # cannot happen with configured_bn; guarded anyway
    if rank > 0:
        common.finish_distributed()
        return None
    results = {"teacher/acc_recorded": tinfo["test_acc"], "teacher/sha256": tinfo["sha256"], "teacher/ckpt": tinfo["path"],
               "bn_layers": names, "points": rows, "samples_per_point": args.steps * args.batch_size,
               "eval/num_images": len(y_test), "args": vars(args),
               "provenance": common.provenance(args.device, sum(r["wall_s"] for r in rows) if all(
                   "wall_s" in r for r in rows) else None, [len(done)] if resume_dir else [], time.time() - t0)}
    common.write_json(run_dir / "results.json", results)
    if args.copy_results_to:
        Path(args.copy_results_to).parent.mkdir(parents=True, exist_ok=True)
        common.write_json(args.copy_results_to, results)
    print(f"done: {len(rows)} points -> {run_dir / 'results.json'}")
    common.finish_distributed()
    return results


if __name__ == "__main__":
    common.run_main(main)
