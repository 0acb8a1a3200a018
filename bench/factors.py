"""Benchmark behind the README section "What controls learning from noise": one factor at a time around one recipe,
at the same budget of noise samples per arm, learning curves under both protocols and the KD loss beside them.

    python bench/factors.py --data-dir ../shared/data     # 2 min per arm on 2 Xeon cores (bf16), 10 in fp32; resumable
    python bench/report.py                                # README table + figure from results/factors/

The centre: the shared ResNet-20 (91.7%, a teacher we did not train) -> ResNet-20, the prior work's recipe (CS teacher,
no balancing, Adam 1e-3 constant, T = 1, batch 256) on the Gaussian fitted to the teacher's BN statistics
(`--fit-noise`). Each arm changes one thing (flags below, also in each results file's `args`). The teacher arms
change the teacher: ResNet-20s trained by train_teacher.py's recipe for 1, 2 and 5 epochs, the warm-up a tenth of the
run as in the shipped teacher's 2 of 20 epochs (trained here when missing, into runs/bench_factors/teachers/), the
shipped teacher, which is the same recipe for 20 epochs, and three changes of the 5-epoch recipe (no label smoothing,
no weight decay, AdamW instead of SGD). The student arm distils into the CIFAR ResNet-18. With a constant
learning rate a run's first N samples do not depend on its length, so arms can be compared at any common budget.
Each arm is one run of cs_rejection_bn.py; its results.json, with the KD loss logged every 10 steps
(`train_loss_curve`), is copied to results/factors/<arm>__s<seed>.json. Finished arms are skipped; an interrupted one
resumes from its checkpoint.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402
import cs_rejection_bn  # noqa: E402
from _runs import LOGITS_ONLY, attach_loss_curve, batch_size_of, run_or_resume  # noqa: E402

TEACHER = ["--teacher", "resnet20", "--teacher-ckpt",
           str(REPO.parent / "shared" / "teachers" / "akamaster_resnet20-12fca82f.th")]
TRAINED = REPO / "runs" / "bench_factors" / "teachers"  # the short-trained teachers of the teacher arms
CENTRE = ["--teacher-bn", "cs", "--balance", "none", "--optimizer", "adam", "--lr", "1e-3", "--schedule", "constant",
          "--tau", "1", "--fit-noise", "--batch-size", "256", *LOGITS_ONLY]
ARMS = {  # name: (flags on top of CENTRE, what changes); the README lists them in this order
    "centre": ([], "the centre: prior recipe, fitted noise"),
    "white": (["--no-fit-noise"], "noise: white N(0, I), the paper's"),
    "alpha2": (["--no-fit-noise", "--noise-alpha", "2"], "noise: 1/f^2 by hand, no colour or mean"),
    "running": (["--teacher-bn", "running"], "teacher BN: running statistics (eval mode) instead of CS"),
    "lr3e-3": (["--lr", "3e-3"], "learning rate 3e-3"),
    "lr3e-4": (["--lr", "3e-4"], "learning rate 3e-4"),
    "tau4": (["--tau", "4"], "temperature 4"),
    "batch64": (["--batch-size", "64"], "batch 64: 4x the updates for the same samples"),
    "mse": (["--loss", "mse"], "loss: MSE between centred logits, not KL"),
    "teacher_e1": ([], "teacher: our recipe, 1 epoch"),
    "teacher_e2": ([], "teacher: our recipe, 2 epochs"),
    "teacher_e5": ([], "teacher: our recipe, 5 epochs"),
    "teacher_e20": ([], "teacher: our recipe, 20 epochs (the shipped teacher)"),
    "teacher_e5_ls0": ([], "teacher recipe: 5 epochs without label smoothing"),
    "teacher_e5_wd0": ([], "teacher recipe: 5 epochs without weight decay"),
    "teacher_e5_adamw": ([], "teacher recipe: 5 epochs of AdamW (lr 1e-3, weight decay 0.05) instead of SGD"),
    "student_r18": (["--student", "resnet18"], "student: the CIFAR ResNet-18 (11.2M parameters, 41x ResNet-20's)"),
}
TEACHER_RECIPES = {  # teacher arm: (epochs, train_teacher.py flags on top of its own recipe, name suffix)
    "teacher_e1": (1, [], ""), "teacher_e2": (2, [], ""), "teacher_e5": (5, [], ""),
    "teacher_e5_ls0": (5, ["--label-smoothing", "0"], "_ls0"),
    "teacher_e5_wd0": (5, ["--weight-decay", "0"], "_wd0"),
    "teacher_e5_adamw": (5, ["--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"], "_adamw"),
}
DEFAULT_RUNS = ["centre:0", "centre:1", "white:0", "running:0", "lr3e-3:0", "tau4:0", "batch64:0", "alpha2:0",
                "lr3e-4:0", "teacher_e1:0", "teacher_e2:0", "teacher_e5:0", "teacher_e20:0", "white:1", "running:1",
                "lr3e-3:1", "tau4:1", "batch64:1", "alpha2:1", "lr3e-4:1", "teacher_e1:1", "teacher_e2:1",
                "teacher_e5:1", "teacher_e20:1", "mse:0", "mse:1", "teacher_e5_ls0:0", "teacher_e5_ls0:1",
                "teacher_e5_wd0:0", "teacher_e5_wd0:1", "teacher_e5_adamw:0", "teacher_e5_adamw:1", "student_r18:0",
                "student_r18:1"]


def short_teacher(arm):
    """The checkpoint of a teacher arm's teacher: its warm-up is a tenth of the run, as the shipped teacher's 2 of 20
    epochs, and its recipe is in the name (files of an earlier schedule or another recipe are never picked up)."""
    epochs, _, suffix = TEACHER_RECIPES[arm]
    return TRAINED / f"resnet20_e{epochs}_w{epochs / 10:g}{suffix}.pt"


def teacher_flags(arm, data_dir):
    """The --teacher flags of an arm; a teacher arm's teacher is trained first when missing (train_teacher.py as a
    process: the recipe of the shipped teacher with fewer epochs and the arm's own flags; resumable)."""
    if arm == "teacher_e20":
        return ["--teacher", "resnet20"]  # teachers/resnet20_cifar10_bn.pt: the same recipe, 20 epochs
    if arm not in TEACHER_RECIPES:
        return TEACHER
    epochs, recipe, _ = TEACHER_RECIPES[arm]
    ckpt = short_teacher(arm)
    if not ckpt.exists():
        subprocess.run([sys.executable, str(REPO / "train_teacher.py"), "--model", "resnet20", "--data-dir", data_dir,
                        "--epochs", str(epochs), "--warmup-epochs", f"{epochs / 10:g}", *recipe, "--seed", "0",
                        "--out", str(ckpt), "--resume"], check=True)
    return ["--teacher", "resnet20", "--teacher-ckpt", str(ckpt)]


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
        batch = batch_size_of(cs_rejection_bn, [*CENTRE, *flags])
        steps = args.samples // batch
        target = out / f"{arm}__s{seed}.json"
        run_root = REPO / "runs" / "bench_factors" / f"{arm}__s{seed}"
        if target.exists():
            print(f"{target.name}: done already")
        else:
            argv = [*teacher_flags(arm, args.data_dir), *CENTRE, *flags, "--data-dir", args.data_dir, "--seed", seed,
                    "--steps", str(steps), "--eval-every", str(steps // args.evals),
                    "--ckpt-every", str(max(1, steps // args.evals))]
            run_or_resume(cs_rejection_bn, argv, run_root, target)
        attach_loss_curve(target, run_root)
        result = json.loads(target.read_text())
        if "bench/kd_loss_constant_student" not in result:
            result["bench/kd_loss_constant_student"] = constant_student_loss(result, teacher_flags(arm, args.data_dir))
            common.write_json(target, result)


@torch.no_grad()
def constant_student_loss(result, teacher, samples=2048):
    """The KD loss of the best student that ignores its input: for KL it predicts the teacher's mean probabilities on
    this noise (the minimizer of the expected KL over constant predictions), for --loss mse the teacher's mean centred
    logits. A student whose loss sits at this level has learned nothing about the teacher on this noise. Measured on
    fresh noise of the run's own distribution, in the run's teacher mode, batch size and temperature; teacher: the
    arm's --teacher flags."""
    a = result["args"]
    ckpt = teacher[teacher.index("--teacher-ckpt") + 1] if "--teacher-ckpt" in teacher else None
    teacher, _ = common.load_teacher(a["teacher"], common.teacher_ckpt_or_exit(a["teacher"], a["dataset"], ckpt))
    fit = result.get("noise/fitted")
    shaping = {"alpha": a["noise_alpha"]} if fit is None else {
        "alpha": fit["alpha"], "color": torch.tensor(fit["color"]), "mean": torch.tensor(fit["mean"])}
    gen = torch.Generator().manual_seed(a["seed"] + 5_000)
    logits = torch.cat([cs_rejection_bn.teacher_forward(
        teacher, common.sample_noise(a["batch_size"], (3, 32, 32), gen, **shaping), a["teacher_bn"])
        for _ in range(samples // a["batch_size"])])
    if a.get("loss", "kl") == "mse":
        return cs_rejection_bn.logit_mse_loss(logits.mean(0).expand_as(logits), logits).item()
    logp = F.log_softmax(logits / a["tau"], 1)
    mean_log = logp.exp().mean(0).log()
    return ((logp.exp() * (logp - mean_log)).sum(1).mean() * a["tau"] ** 2).item()


if __name__ == "__main__":
    common.run_main(main)  # Ctrl-C or kill: the run in progress says where it stopped; rerun to resume
