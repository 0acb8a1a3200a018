"""Benchmark behind the README table "Which students learn from noise": students ResNet-20
with BatchNorm, ResNet-20 with GroupNorm(8) and vit_tiny (LayerNorm), each taught by the BatchNorm teacher in CS mode
(cs_rejection_bn.py) and by the GroupNorm teacher with batch alignment (batch_align_ln_gn.py), both without rejection
(--balance none), at the same noise budget as bench/batch_align.py. Without rejection, because the study compares
students, not sampling: the aligned GroupNorm teacher's labels are uneven enough that rejection accepts about 12% of
its noise, about eight times the teacher compute per student sample, which a CPU cannot give four runs.

    python bench/student_study.py --data-dir ../shared/data      # 10-20 min per run on 2 CPU cores; resumable
    python bench/report.py

The ResNet-20/BN rows are the align arms of bench/batch_align.py (the same runs: same teachers, flags, seed and
budget), so this script runs only the other students. Results: results/student_study/<teacher>__<student>.json.

Then every student of the table (the BN ones too) is evaluated once more from its final checkpoint, with and without
the test batch's statistics, and the classes it predicts on the test images are counted
(results/student_study/test_time.json). A BatchNorm student has test-batch statistics built in (BatchNorm in batch
mode); for the GroupNorm and LayerNorm students the same thing is batch alignment (batch_align_ln_gn.py) in front of
each of their norm layers, on each test batch: a per-channel re-standardization that a per-sample norm cannot do.
"""
import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import batch_align_ln_gn  # noqa: E402
import cs_rejection_bn  # noqa: E402
from _runs import BATCH_256, LOGITS_ONLY, run_or_resume  # noqa: E402
import common  # noqa: E402

TEACHERS = {  # name: (script, flags)
    "bn": (cs_rejection_bn, ["--teacher", "resnet20", "--teacher-ckpt", str(REPO / "teachers/resnet20_cifar10_bn.pt"),
                             "--teacher-bn", "cs", "--balance", "none", "--no-fit-noise", *BATCH_256,
                             *LOGITS_ONLY]),
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
    test_time(args, out)


def test_predictions(student, x, mean, std, coupled, amp, batch_size):
    """The classes `student` predicts for the test images x (uint8), in test batches of batch_size. coupled: with the
    test batch's statistics, BatchNorm in batch mode for a BN student, batch alignment in front of every per-sample
    norm layer otherwise. The student itself is not touched."""
    if coupled and common.has_batchnorm(student):
        return common.predict(student, x, mean, std, batch_size, "batch", amp=amp)
    with batch_align_ln_gn.batch_aligned(student) if coupled else contextlib.nullcontext():
        return common.predict(student, x, mean, std, batch_size, "running", amp=amp)


def test_time(args, out, runs_dir=REPO / "runs"):
    """Evaluate each study student from its final checkpoint with and without test-batch statistics; count the classes
    it predicts. Writes out/test_time.json. Students whose run folder is gone (only the copied results remain) are
    skipped with a note."""
    start = time.time()
    runs = {stem: runs_dir / f"bench_student_study_s{args.seed}" / stem for stem in
            (f"{t}__{s}" for t in TEACHERS for s in STUDENTS)}
    runs |= {f"{t}__resnet20_bn": runs_dir / f"bench_batch_align_s{args.seed}" / f"{t}__align" for t in TEACHERS}
    x, y = common.load_split("cifar10", "test", args.data_dir)
    rows = []
    for stem, run_root in runs.items():
        done = sorted(d for d in run_root.glob("*") if (d / "results.json").exists() and (d / "checkpoint.pt").exists())
        if not done:
            print(f"test-time statistics, {stem}: no finished run under {run_root}; skipped")
            continue
        ckpt = common.load_checkpoint(done[-1] / "checkpoint.pt")
        recorded = json.loads((done[-1] / "results.json").read_text())
        a = ckpt["args"]
        if ckpt["step"] != a["steps"]:
            raise RuntimeError(f"{done[-1]}: checkpoint at step {ckpt['step']}, the run ended at {a['steps']}")
        num_classes = len(recorded["noise/label_hist"])
        student = common.build_model(a["student"], num_classes, a["student_norm"])
        common.load_state_strict(student, ckpt["student"], done[-1] / "checkpoint.pt")
        # the run's own teacher file (results.json records only a portable name): its input normalization
        teacher = common.load_checkpoint(common.teacher_ckpt_or_exit(a["teacher"], a["dataset"], a["teacher_ckpt"],
                                                                     norm=a.get("teacher_norm", "bn")))
        row = {"teacher": stem.split("__")[0], "student": stem.split("__")[1], "run": done[-1].name,
               "batch_size": a["eval_batch_size"], "bf16": a["bf16"],
               "recorded/acc_running": recorded["eval/acc_running"],
               "recorded/acc_batchstats": recorded["eval/acc_batchstats"]}
        for mode in ("plain", "coupled"):
            pred = test_predictions(student, x, teacher["mean"], teacher["std"], mode == "coupled", a["bf16"],
                                    a["eval_batch_size"])
            hist = torch.bincount(pred, minlength=num_classes)
            row |= {f"{mode}/acc": (pred == y).sum().item() / len(y),  # as common.evaluate
                    f"{mode}/pred_hist": hist.tolist(),
                    **{f"{mode}/pred_{k}": v for k, v in common.label_stats(hist).items()}}
        print(f"test-time statistics, {stem}: {row['plain/acc']:.4f} plain, {row['coupled/acc']:.4f} coupled; "
              f"largest predicted class {row['plain/pred_max_share']:.2f} / {row['coupled/pred_max_share']:.2f}")
        rows.append(row)
    command = f"python bench/student_study.py --data-dir {args.data_dir} --seed {args.seed}"
    common.write_json(out / "test_time.json", {"args": {"command": command, "seed": args.seed}, "rows": rows,
                                                "provenance": common.provenance("cpu", time.time() - start)})


if __name__ == "__main__":
    main()
