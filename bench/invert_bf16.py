"""Is bf16 autocast safe for the inversion that `--calibrate-bn` runs after training? For each run folder given, the
student of its final checkpoint is calibrated as the run's `--calibrate-bn` does (its --calibrate-samples and
--calibrate-steps, by default 512 inputs and 100 Adam steps per batch of 256) on inputs inverted in float32 and under
bf16 autocast, each timed; the calibrated students are evaluated in float32.

    python bench/invert_bf16.py --data-dir ../shared/data --runs runs/bench_long_run/prior/<run folder>
    python bench/invert_bf16.py --data-dir ../shared/data --runs <a ResNet-34 run> --precisions bf16  # fp32: its own
    python bench/invert_bf16.py --data-dir ../shared/data --runs <a ResNet-34 run> --time-only 5   # both, 5 steps

The teacher runs channels_last, as in a run. Seeds default to the run's own (its inversion seed is the run's seed +
5,000, as `cs_rejection_bn.py` has it), so a float32 row repeats the run's own calibration; where a run folder has
results.json, its own calibrated accuracy (float32 inversion, evaluated as the run evaluated) is recorded beside, and
where it has student_calibrated.pt, that student's accuracy evaluated here in float32 (the evaluation's precision
apart from the inversion's). A white-noise run's inversion starts from a noise fitted here, as bench/calibrate_bn.py
does. Rows are merged into results/invert_bf16.json by (run, seed, precision, timed only or not). Needs a CPU with
native bf16 to mean anything.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402
import cs_rejection_bn as kd  # noqa: E402
from calibrate_bn import load_run, load_student  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--runs", nargs="+", required=True, help="run folders of cs_rejection_bn.py (with checkpoint.pt)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="run seeds to invert with (default: the run's)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--time-only", type=int, default=None, metavar="STEPS",
                   help="only time this many Adam steps on one batch of 256 per precision, after one untimed step (no "
                        "calibration): for a teacher whose full float32 inversion takes too long here")
    p.add_argument("--out", default=str(REPO / "results" / "invert_bf16.json"), help="where the rows are merged")
    args = p.parse_args(argv)
    if args.time_only is not None and args.time_only < 1:
        p.error("--time-only needs at least 1 step")
    folders = [Path(r).resolve() for r in args.runs]
    for f in folders:
        if not (f / "checkpoint.pt").is_file():
            raise common.InputError(f"{f} has no checkpoint.pt")
    if "bf16" in args.precisions and not common.bf16_supported("cpu"):
        print("note: this CPU has no native bf16: the bf16 rows time an emulation", file=sys.stderr)
    defaults = vars(kd.parse_args([]))  # for a run made before these settings existed
    x, y = common.load_split("cifar10", "test", args.data_dir)
    shape, start, rows = (3, *x.shape[1:3]), time.time(), []
    for folder in folders:
        ck = common.load_checkpoint(folder / "checkpoint.pt")
        a = ck["args"]
        n, steps = (a.get(k, defaults[k]) for k in ("calibrate_samples", "calibrate_steps"))  # as the run inverts
        if args.time_only:
            n, steps = 256, args.time_only
        teacher, tinfo, params, student = load_run(ck, folder / "checkpoint.pt", shape)
        teacher = teacher.to(memory_format=common.memory_format(teacher, True))  # as a run has it
        own = folder / "results.json"
        own = json.loads(own.read_text()).get("eval/acc_calibrated") if own.exists() else None
        name = common.portable(str(folder))  # relative to the repository, as the results record paths
        acc = lambda model: common.evaluate(model, x, y, tinfo["mean"], tinfo["std"], a["eval_batch_size"], "running")
        own_pt = folder / "student_calibrated.pt"  # the run's own calibrated student, evaluated here in float32:
        own_fp32 = (acc(load_student(a, common.load_checkpoint(own_pt)["student"], own_pt))  # its evaluation's
                    if not args.time_only and own_pt.is_file() else None)  # precision apart from the inversion's
        as_trained = None if args.time_only else acc(student)
        for seed in args.seeds or [a["seed"]]:
            for precision in args.precisions:
                invert = lambda k: kd.invert_teacher_inputs(teacher, shape, n, k, torch.Generator().manual_seed(
                    seed + 5_000), params, bf16=precision == "bf16")  # k Adam steps, seeded as the run
                if args.time_only:  # one untimed step first: the first pass through a model pays for its setup
                    invert(1)
                began = time.time()
                made = invert(steps)
                took = time.time() - began
                with torch.no_grad(), kd.bn_statistics_loss(teacher) as bn_loss:  # how well they fit, in float32
                    fit = sum(bn_loss(b).item() for b in made) / len(made)
                row = {"run": name, "teacher": a["teacher"], "student": a["student"], "seed": seed,
                       "precision": precision, "timed_only": bool(args.time_only), "samples": n, "steps": steps,
                       "s_per_step": took / max(1, len(made) * steps), "bn_loss": fit,
                       "device": common.device_name("cpu")}  # rows of other calls may come from elsewhere
                if not args.time_only:
                    row.update(acc_as_trained=as_trained, acc_calibrated=acc(kd.calibrate_bn(student, made)),
                               acc_calibrated_by_the_run=own, acc_calibrated_by_the_run_fp32=own_fp32)
                print(f"{name} seed {seed} {precision}: {row['s_per_step']:.2f} s per step, BN-statistics loss "
                      f"{fit:.4f}" + ("" if args.time_only else f", eval mode {as_trained:.4f} -> "
                                                                f"{row['acc_calibrated']:.4f}"), flush=True)
                rows.append(row)
    out = Path(args.out)
    old = json.loads(out.read_text())["rows"] if out.exists() else []
    key = lambda r: (r["run"], r["seed"], r["precision"], r["timed_only"])
    measured = {key(r) for r in rows}
    rows = [r for r in old if key(r) not in measured] + rows
    common.write_json(out, {"rows": rows, "provenance": common.provenance("cpu", time.time() - start)})


if __name__ == "__main__":
    common.run_main(main)
