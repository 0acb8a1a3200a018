"""Benchmark behind the README table "Which students learn from noise" (methods.md section 8): students ResNet-20
with BatchNorm, ResNet-20 with GroupNorm(8) and vit_tiny (LayerNorm), each taught by the BatchNorm teacher in CS mode
(cs_rejection_bn.py) and by the GroupNorm teacher with batch alignment (batch_align_ln_gn.py), both without rejection
(--balance none), at the same noise budget as bench/batch_align.py. Without rejection, because the study compares
students, not sampling: the aligned GroupNorm teacher's labels are uneven enough that rejection accepts about 12% of
its noise, six times the teacher compute per student sample, which a CPU cannot give four runs.

    python bench/student_study.py --data-dir ../shared/data      # 10-20 min per run on 2 CPU cores; resumable
    python bench/report.py

The ResNet-20/BN rows are the align arms of bench/batch_align.py (the same runs: same teachers, flags, seed and
budget), so this script runs only the other students. Results: results/student_study/<teacher>__<student>.json.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import batch_align_ln_gn  # noqa: E402
import cs_rejection_bn  # noqa: E402
from _runs import run_or_resume  # noqa: E402

TEACHERS = {  # name: (script, flags)
    "bn": (cs_rejection_bn, ["--teacher", "resnet20", "--teacher-ckpt", str(REPO / "teachers/resnet20_cifar10_bn.pt"),
                             "--teacher-bn", "cs", "--balance", "none"]),
    "gn": (batch_align_ln_gn, ["--teacher", "resnet20", "--teacher-norm", "gn", "--balance", "none"]),
}
STUDENTS = {
    "resnet20_gn": ["--student", "resnet20", "--student-norm", "gn"],
    "vit_tiny": ["--student", "vit_tiny"],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--steps", type=int, default=1000, help="student steps of 256 noise samples per run")
    p.add_argument("--teachers", nargs="*", default=list(TEACHERS), choices=list(TEACHERS), help="teachers to run")
    p.add_argument("--students", nargs="*", default=list(STUDENTS), choices=list(STUDENTS), help="students to run")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    p.add_argument("--out", default=str(REPO / "results" / "student_study"), help="where the results JSONs go")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for teacher in args.teachers:
        script, teacher_flags = TEACHERS[teacher]
        for student in args.students:
            target = out / f"{teacher}__{student}.json"
            if target.exists():
                print(f"{teacher} -> {student}: done already ({target})")
                continue
            run_root = REPO / "runs" / f"bench_student_study_s{args.seed}" / f"{teacher}__{student}"
            run_or_resume(script, [*teacher_flags, *STUDENTS[student], "--data-dir", args.data_dir, "--steps",
                                   str(args.steps), "--seed", str(args.seed)], run_root, target)


if __name__ == "__main__":
    main()
