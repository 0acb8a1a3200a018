"""Benchmark behind the README paragraph "Why a well-trained teacher is hard to fit on noise": how each teacher answers
on noise, under each way of running its BatchNorm, without training any student.

    python bench/teacher_on_noise.py --data-dir ../shared/data    # a few minutes on 2 CPU cores (one noise fit each)
    python bench/report.py

For each teacher, on 1,024 samples (--batches 4 of 256) of white noise and of the noise fitted to its BN statistics
(cs_rejection_bn.fit_noise, with a seed-0 run's seed and settings), and with its BatchNorm layers normalizing by
  cs      the statistics of the current noise batch (the paper's CS inference),
  running their running statistics (eval mode),
  bm_rv   the batch's mean but the running variance,
  rm_bv   the running mean but the batch's variance,
  cs_lastK  CS in the last K BatchNorm layers only, running statistics before (cs_rejection_bn.py --cs-last-layers K;
          on the fitted noise, for K in CS_LAST),
we measure the balance of its argmax labels (entropy / log K, largest share), the input-free level (the KL from its
answers to its mean answer: what a student that ignores its input scores; 0 = the teacher ignores its input too), and
its roughness: the mean KL between its answers on z and on z + sigma * eps (eps white, sigma = --sigma in the
teacher's normalized input space; the jittered batch gets its own statistics). A roughness above the input-free level
means that a jitter of that size changes the teacher's answer more than drawing a new noise sample does: such a
function cannot be learned from samples. For reference, the same measures on 1,024 test images in eval mode.
Teachers: the shared akamaster ResNet-20 and ResNet-56, the ResNet-20 we ship, and the short-trained ResNet-20s of
bench/factors.py's teacher arms when they exist (runs/bench_factors/teachers/).
"""
import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402
import cs_rejection_bn  # noqa: E402
from factors import short_teacher  # noqa: E402

SHARED = REPO.parent / "shared" / "teachers"
TEACHERS = [  # (name, architecture, checkpoint; None = the shipped teachers/<arch>_cifar10_bn.pt)
    ("shared ResNet-20", "resnet20", SHARED / "akamaster_resnet20-12fca82f.th"),
    ("shared ResNet-56", "resnet56", SHARED / "akamaster_resnet56-4bfd9763.th"),
    ("ours, 20 epochs (shipped)", "resnet20", None),
    *[(f"ours, {e} epoch{'s' * (e > 1)}", "resnet20", short_teacher(f"teacher_e{e}"))  # bench/factors.py's
      for e in (1, 2, 5)],
]
MODES = ["cs", "running", "bm_rv", "rm_bv"]
CS_LAST = [2, 3, 5, 7, 13]


@contextlib.contextmanager
def bn_statistics(model, mode):
    """Every BatchNorm of `model` normalizes with the mean and variance `mode` names (see the docstring); the running
    buffers are only read."""
    bns = common.batchnorm_layers(model)
    if mode.startswith("cs_last"):  # cs_lastK: CS in the last K layers, the earlier ones left as they are
        patched, batch_mean, batch_var = bns[len(bns) - int(mode[len("cs_last"):]):], True, True
    else:
        patched, batch_mean, batch_var = bns, mode in ("cs", "bm_rv"), mode in ("cs", "rm_bv")
    for m in patched:
        def forward(x, m=m):
            var, mean = torch.var_mean(x, (0, 2, 3), correction=0)
            mu = mean if batch_mean else m.running_mean
            v = var if batch_var else m.running_var
            return F.batch_norm(x, mu, v, m.weight, m.bias, training=False, eps=m.eps)
        m.forward = forward
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


@torch.no_grad()
def answers(teacher, batches, mode, sigma, generator):
    """The measures of the docstring on `batches` (a list of input batches), with BN statistics `mode`."""
    p, p_jit = [], []
    with bn_statistics(teacher, mode):
        for z in batches:
            p.append(F.log_softmax(teacher(z).float(), 1))
            p_jit.append(F.log_softmax(teacher(z + sigma * torch.randn(z.shape, generator=generator)).float(), 1))
    logp, logq = torch.cat(p), torch.cat(p_jit)
    kl_to = lambda target: (logp.exp() * (logp - target)).sum(1).mean().item()
    hist = torch.bincount(logp.argmax(1), minlength=logp.shape[1]).double()
    stats = common.label_stats(hist)
    return {"label_entropy": stats["entropy"], "label_max_share": stats["max_share"],
            "sample_entropy": -(logp.exp() * logp).sum(1).mean().item(),
            "input_free_level": kl_to(logp.exp().mean(0).log()), "roughness": kl_to(logq)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--sigma", type=float, default=0.1, help="jitter std in the teacher's normalized input space")
    p.add_argument("--batches", type=int, default=4, help="noise batches (and test-image batches) per measure")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch (the CS statistics' batch)")
    p.add_argument("--fit-steps", type=int, default=100, help="Adam steps of each noise fit (a run's default)")
    p.add_argument("--out", default=str(REPO / "results" / "teacher_on_noise.json"), help="where the results go")
    args = p.parse_args(argv)
    start, rows = time.time(), []
    x, y = common.load_split("cifar10", "test", args.data_dir)
    shape = (3, 32, 32)
    for name, arch, ckpt in TEACHERS:
        if ckpt is not None and not ckpt.exists():
            print(f"{name}: {common.portable(str(ckpt))} missing; skipped (bench/factors.py trains it)")
            continue
        path = common.teacher_ckpt_or_exit(arch, "cifar10", ckpt)
        teacher, tinfo = common.load_teacher(arch, path)
        fitted, _ = cs_rejection_bn.fit_noise(teacher, shape, args.fit_steps, torch.Generator().manual_seed(3_000))
        gen = torch.Generator().manual_seed(0)
        n = args.batches * args.batch_size
        images = common.normalize(x[:n], tinfo["mean"], tinfo["std"])
        row = {"teacher": name, "arch": arch, "checkpoint": str(Path(path).resolve()), "sha256": tinfo["sha256"],
               "test_acc": common.evaluate(teacher, x, y, tinfo["mean"], tinfo["std"]),
               "fitted_alpha": fitted["alpha"],
               "bn_layers": len(common.batchnorm_layers(teacher)),
               "images_running": answers(teacher, list(images.split(args.batch_size)), "running", args.sigma, gen)}
        for noise, shaping in (("white", {}), ("fitted", fitted)):
            batches = [common.sample_noise(args.batch_size, shape, gen, **shaping) for _ in range(args.batches)]
            for mode in MODES:
                row[f"{noise}_{mode}"] = answers(teacher, batches, mode, args.sigma, gen)
        for k in CS_LAST:  # after the modes above (the fitted noise's batches), so that their jitter stays the same
            row[f"fitted_cs_last{k}"] = answers(teacher, batches, f"cs_last{k}", args.sigma, gen)
        cs = row["fitted_cs"]
        print(f"{name} ({row['test_acc']:.1%}): fitted noise, CS: label entropy {cs['label_entropy']:.2f}, "
              f"input-free level {cs['input_free_level']:.2f}, roughness {cs['roughness']:.2f}; images: roughness "
              f"{row['images_running']['roughness']:.2f}")
        rows.append(row)
    common.write_json(args.out, {"sigma": args.sigma, "samples": n, "batch_size": args.batch_size, "log_classes": math.log(10), "rows": rows,
                                 "command": "python bench/teacher_on_noise.py --data-dir " + args.data_dir,
                                 "provenance": common.provenance("cpu", time.time() - start)})


if __name__ == "__main__":
    main()
