"""Benchmark behind the README section "What controls learning from noise": one factor at a time around one recipe,
at the same budget of noise samples per arm, learning curves under both protocols and the KD loss beside them.

    python bench/factors.py --data-dir ../shared/data     # about 10 min per arm on 2 CPU cores; resumable
    python bench/report.py                                # README table + figure from results/factors/

The centre: the shared ResNet-20 (91.7%, a teacher we did not train) -> ResNet-20, the prior work's recipe (CS teacher,
no balancing, Adam 1e-3 constant, T = 1, batch 256) on the Gaussian fitted to the teacher's BN statistics
(`--fit-noise`). Each arm changes one thing (flags below, also in each results file's `args`). With a constant
learning rate a run's first N samples do not depend on its length, so arms can be compared at any common budget.
Each arm is one run of cs_rejection_bn.py; its results.json, with the KD loss logged every 10 steps
(`train_loss_curve`), is copied to results/factors/<arm>__s<seed>.json. Finished arms are skipped; an interrupted one
resumes from its checkpoint.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402
import cs_rejection_bn  # noqa: E402
from _runs import attach_loss_curve, run_or_resume  # noqa: E402

TEACHER = ["--teacher", "resnet20", "--teacher-ckpt",
           str(REPO.parent / "shared" / "teachers" / "akamaster_resnet20-12fca82f.th")]
CENTRE = ["--teacher-bn", "cs", "--balance", "none", "--optimizer", "adam", "--lr", "1e-3", "--schedule", "constant",
          "--tau", "1", "--fit-noise"]
ARMS = {  # name: (flags on top of CENTRE, what changes); the README lists them in this order
    "centre": ([], "the centre: prior recipe, fitted noise"),
    "white": (["--no-fit-noise"], "noise: white N(0, I), the paper's"),
    "alpha2": (["--no-fit-noise", "--noise-alpha", "2"], "noise: 1/f^2 by hand, no colour or mean"),
    "running": (["--teacher-bn", "running"], "teacher BN: running statistics (eval mode) instead of CS"),
    "lr3e-3": (["--lr", "3e-3"], "learning rate 3e-3"),
    "lr3e-4": (["--lr", "3e-4"], "learning rate 3e-4"),
    "tau4": (["--tau", "4"], "temperature 4"),
    "batch64": (["--batch-size", "64"], "batch 64: 4x the updates for the same samples"),
}
DEFAULT_RUNS = ["centre:0", "centre:1", "white:0", "running:0", "lr3e-3:0", "tau4:0", "batch64:0", "alpha2:0",
                "lr3e-4:0", "white:1", "running:1", "lr3e-3:1", "tau4:1", "batch64:1", "alpha2:1", "lr3e-4:1"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--samples", type=int, default=64_000, help="noise samples per arm (the budget)")
    p.add_argument("--evals", type=int, default=5, help="evaluations along each run, evenly spaced")
    p.add_argument("--runs", nargs="*", default=DEFAULT_RUNS, help="arm:seed pairs, run in this order")
    p.add_argument("--out", default=str(REPO / "results" / "factors"), help="where the results JSONs go")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        arm, seed = run.split(":")
        flags = ARMS[arm][0]
        batch = int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else 256
        steps = args.samples // batch
        target = out / f"{arm}__s{seed}.json"
        run_root = REPO / "runs" / "bench_factors" / f"{arm}__s{seed}"
        if target.exists():
            print(f"{target.name}: done already")
        else:
            run_or_resume(cs_rejection_bn, [*TEACHER, *CENTRE, *flags, "--data-dir", args.data_dir, "--seed", seed,
                                            "--steps", str(steps), "--eval-every", str(steps // args.evals),
                                            "--ckpt-every", str(max(1, steps // args.evals))], run_root, target)
        attach_loss_curve(target, run_root)
        result = json.loads(target.read_text())
        if "bench/kd_loss_constant_student" not in result:
            result["bench/kd_loss_constant_student"] = constant_student_loss(result)
            common.write_json(target, result)


@torch.no_grad()
def constant_student_loss(result, samples=2048):
    """The KD loss of the best student that ignores its input: it predicts the teacher's mean probabilities on this
    noise (the minimizer of the expected KL over constant predictions). A student whose loss sits at this level has
    learned nothing about the teacher on this noise. Measured on fresh noise of the run's own distribution, in the run's
    teacher mode, batch size and temperature."""
    a = result["args"]
    teacher, _ = common.load_teacher(a["teacher"], TEACHER[-1])
    fit = result.get("noise/fitted")
    shaping = {"alpha": a["noise_alpha"]} if fit is None else {
        "alpha": fit["alpha"], "color": torch.tensor(fit["color"]), "mean": torch.tensor(fit["mean"])}
    gen = torch.Generator().manual_seed(a["seed"] + 5_000)
    logp = torch.cat([F.log_softmax(cs_rejection_bn.teacher_forward(
        teacher, common.sample_noise(a["batch_size"], (3, 32, 32), gen, **shaping), a["teacher_bn"]) / a["tau"], 1)
        for _ in range(samples // a["batch_size"])])
    mean_log = logp.exp().mean(0).log()
    return ((logp.exp() * (logp - mean_log)).sum(1).mean() * a["tau"] ** 2).item()


if __name__ == "__main__":
    main()
