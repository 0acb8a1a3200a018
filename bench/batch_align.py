"""Benchmark behind the README table "Batch alignment": noise distillation from the project's own GroupNorm,
LayerNorm and ViT teachers without alignment, with alignment, and with alignment + rejection, next to the BatchNorm
teacher trained by the same script and recipe (its arms: eval mode, CS, CS + rejection, by cs_rejection_bn.py; CS is
BatchNorm's own batch coupling). Student: ResNet-20 with BN; the same noise budget for every arm.

    python bench/batch_align.py --data-dir ../shared/data        # ~10 min per arm on 2 CPU cores; resumable
    python bench/report.py                                        # README table + figure from results/

Each arm is one run of batch_align_ln_gn.py (or cs_rejection_bn.py for the BN control); its results.json is copied
to results/batch_align/<teacher>__<arm>.json. Finished arms are skipped; an interrupted one resumes from its
checkpoint. Teachers missing from teachers/ are skipped with a note (train_teacher.py makes them).
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import batch_align_ln_gn  # noqa: E402
import cs_rejection_bn  # noqa: E402
from _runs import BATCH_256, LOGITS_ONLY, run_or_resume  # noqa: E402

TEACHERS = {  # name: (script, flags that pick the teacher)
    "gn": (batch_align_ln_gn, ["--teacher", "resnet20", "--teacher-norm", "gn"]),
    "ln": (batch_align_ln_gn, ["--teacher", "resnet20", "--teacher-norm", "ln"]),
    "vit": (batch_align_ln_gn, ["--teacher", "vit_tiny", "--teacher-norm", "ln"]),
    "bn": (cs_rejection_bn, ["--teacher", "resnet20", "--teacher-ckpt", str(REPO / "teachers/resnet20_cifar10_bn.pt"),
                             # white noise, as the per-sample teachers' arms
                             "--no-fit-noise", *BATCH_256, *LOGITS_ONLY]),
}
ARMS = {  # arm: flags for the per-sample teachers, flags for the BN control
    "plain": (["--align-strength", "0", "--balance", "none"], ["--teacher-bn", "running", "--balance", "none"]),
    "align": (["--balance", "none"], ["--teacher-bn", "cs", "--balance", "none"]),
    "align_reject": (["--balance", "reject"], ["--teacher-bn", "cs", "--balance", "reject"]),
    # ours: alignment (CS for the control) with the teacher's stage outputs matched too, at the weight that had won
    # for BatchNorm teachers then (cs_rejection_bn.py's default then; 30 since)
    "align_feat10": (["--balance", "none", "--feature-weight", "10"],
                     ["--teacher-bn", "cs", "--balance", "none", "--feature-weight", "10"]),
}
NO_STAGES = {"vit"}  # teachers whose blocks have no stage outputs of the ResNet student's shapes: no align_feat10 arm
CKPT = {"gn": "resnet20_cifar10_gn.pt", "ln": "resnet20_cifar10_ln.pt", "vit": "vit_tiny_cifar10_ln.pt",
        "bn": "resnet20_cifar10_bn.pt"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--steps", type=int, default=1000, help="student steps of 256 noise samples per arm")
    p.add_argument("--teachers", nargs="*", default=list(TEACHERS), choices=list(TEACHERS), help="teachers to run")
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS), help="arms to run")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    p.add_argument("--out", default=str(REPO / "results" / "batch_align"), help="where the results JSONs go")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for teacher in args.teachers:
        if not (REPO / "teachers" / CKPT[teacher]).is_file():
            print(f"{teacher}: teachers/{CKPT[teacher]} is missing; skipped (train it with train_teacher.py)")
            continue
        script, teacher_flags = TEACHERS[teacher]
        for arm in args.arms:
            target = out / f"{teacher}__{arm}.json"
            if arm == "align_feat10" and teacher in NO_STAGES:  # batch_align_ln_gn.py would refuse it
                print(f"{teacher} {arm}: skipped, its stages cannot be matched to the ResNet student's")
                continue
            if target.exists():
                print(f"{teacher} {arm}: done already ({target})")
                continue
            run_root = REPO / "runs" / f"bench_batch_align_s{args.seed}" / f"{teacher}__{arm}"
            arm_flags = ARMS[arm][1 if script is cs_rejection_bn else 0]
            run_or_resume(script, [*teacher_flags, "--data-dir", args.data_dir, "--steps", str(args.steps),
                                   "--seed", str(args.seed), *arm_flags], run_root, target)


if __name__ == "__main__":
    main()
