"""Deployable students without data: does re-estimating a noise-trained student's BatchNorm statistics close the gap
between plain eval mode and test-batch statistics? Two sources of inputs, neither an image: the noise fitted to the
teacher (`cs_rejection_bn.fit_noise`), and inputs optimized so that the teacher's BN layers see their recorded
statistics (`cs_rejection_bn.invert_teacher_inputs`, what `--calibrate-bn` does after training).

    python bench/calibrate_bn.py --data-dir ../shared/data       # about 5 minutes per student on 2 CPU cores
    python bench/report.py

    python bench/calibrate_bn.py --data-dir ../shared/data --only ours_1m   # one student, merged into the results

For every finished run of bench/noise_fit.py and bench/long_run.py, and every default run copied to
results/default_run*.json, whose run folder is still here (or those named by --only, whose rows replace their old ones
and leave the others as they are): load the student from its final checkpoint, reset its BatchNorm running statistics
and re-estimate them (cumulative average, BatchNorm's momentum=None) (a) on --batches batches of 256 samples of the
Gaussian fitted to the run's teacher (the run's own fit when it trained on fitted noise; otherwise a fit made here with
the same seed and settings), and (b) on the inputs that `cs_rejection_bn.py --calibrate-bn` would make for that run (its
defaults: 512 inputs, 100 Adam steps per batch of 256, starting from the fitted noise, seeded as the run would). The
student's weights are not changed. Writes results/calibrate_bn.json: accuracy in eval mode as trained, after each
calibration, and with test-batch statistics (the number to reach); each row with the provenance of the process that
computed it (the file's own provenance is the last process's, which with --only computed only some rows).
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

STUDIES = ("noise_fit", "long_run")  # results/<study>/<run>.json, run folders in runs/bench_<study>/<run>/
RESULTS, RUNS = REPO / "results", REPO / "runs"


def load_run(ck, path, shape):
    """From a run's checkpoint ck (read from path): its teacher as the run had it (only read: the inversion
    differentiates through it to the inputs), its tinfo, the noise fitted to it (the run's own; for a white-noise run a
    fit made now with the same seed and settings as a run's) and the student."""
    a = ck["args"]
    teacher, tinfo = common.load_teacher(a["teacher"], common.teacher_ckpt_or_exit(a["teacher"], a["dataset"],
                                                                                  a["teacher_ckpt"]),
                                         mean=a.get("teacher_mean"), std=a.get("teacher_std"))
    teacher.requires_grad_(False)
    params = ck.get("noise_params")
    if params is None:
        params, _ = kd.fit_noise(teacher, shape, a["fit_noise_steps"], torch.Generator().manual_seed(a["seed"] + 3_000))
    return teacher, tinfo, params, load_student(a, ck["student"], path)


def load_student(a, state, path):
    """The student a run with settings `a` trains, holding `state` (read from path)."""
    student = common.build_model(a["student"], 10, a["student_norm"])
    common.load_state_strict(student, state, path)
    return student


def calibrate_checkpoint(ck, path, x, y, batches):
    """The student of a run's checkpoint ck (read from path) on the test split (x, y): its accuracy in eval mode as
    trained, after re-estimating its BatchNorm statistics on `batches` batches of 256 fitted-noise samples, after
    re-estimating them on the inputs --calibrate-bn makes, and with test-batch statistics. Its weights are not
    changed."""
    defaults = kd.parse_args([])  # what --calibrate-bn does with its default settings
    a, shape = ck["args"], (3, *x.shape[1:3])
    teacher, tinfo, params, student = load_run(ck, path, shape)
    gen = torch.Generator().manual_seed(a["seed"] + 4_000)
    calibrated = kd.calibrate_bn(student, [common.sample_noise(256, shape, gen, **params) for _ in range(batches)])
    made = kd.invert_teacher_inputs(teacher, shape, defaults.calibrate_samples, defaults.calibrate_steps,
                                    torch.Generator().manual_seed(a["seed"] + 5_000), params)  # seeded as the run
    inverted = kd.calibrate_bn(student, made)
    acc = lambda model, bn: common.evaluate(model, x, y, tinfo["mean"], tinfo["std"], a["eval_batch_size"], bn)
    return {"trained_on": "fitted noise" if ck.get("noise_params") else "white noise", "seed": a["seed"],
            "samples_seen": ck["stats"]["student_samples"], "acc_running": acc(student, "running"),
            "acc_calibrated": acc(calibrated, "running"), "acc_inverted": acc(inverted, "running"),
            "acc_batchstats": acc(student, "batch")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--batches", type=int, default=20, help="calibration batches of 256 fitted-noise samples")
    p.add_argument("--only", nargs="+", default=None, metavar="RUN",
                   help="calibrate only these runs (results file stems) and keep the other rows of --out")
    p.add_argument("--out", default=str(RESULTS / "calibrate_bn.json"), help="where the results go")
    args = p.parse_args(argv)
    start, rows = time.time(), []
    defaults = kd.parse_args([])  # what --calibrate-bn does with its default settings
    old = json.loads(Path(args.out).read_text()) if args.only and Path(args.out).exists() else None
    if old and old.get("batches", args.batches) != args.batches:  # one file, one setting
        sys.exit(f"--only: {args.out} was made with --batches {old['batches']}; use the same")
    x, y = common.load_split("cifar10", "test", args.data_dir)
    found = [(study, t) for study in STUDIES for t in sorted((RESULTS / study).glob("*.json"))]
    found += [("default_run", t) for t in sorted(RESULTS.glob("default_run*.json"))]
    read = {t: json.loads(t.read_text()) for _, t in found}
    root = lambda study, t: (REPO / read[t]["args"]["out_dir"] if study == "default_run"  # --out-dir as it ran
                             else RUNS / f"bench_{study}" / t.stem)
    targets = [(study, t, root(study, t)) for study, t in found
               if (args.only is None or t.stem in args.only) and read[t].get("finished", True)]
    missing = set(args.only or ()) - {t.stem for _, t, _ in targets}
    if missing:
        sys.exit(f"--only: no finished result named {sorted(missing)} in results/{{{','.join(STUDIES)}}}/ "
                 "or results/default_run*.json")
    for study, target, run_root in targets:
        # the run folder whose results are the target's (a root such as runs/ can hold other finished runs)
        runs = [d for d in sorted(run_root.glob("*")) if (d / "results.json").exists() and (d / "checkpoint.pt").exists()
                and json.loads((d / "results.json").read_text())["curve"] == read[target]["curve"]]
        if not runs:
            print(f"{target.stem}: its run folder is gone; skipped")
            continue
        row_start = time.time()
        row = {"run": target.stem, "study": study,
               **calibrate_checkpoint(common.load_checkpoint(runs[-1] / "checkpoint.pt"), runs[-1] / "checkpoint.pt",
                                      x, y, args.batches)}
        row["provenance"] = common.provenance("cpu", time.time() - row_start)  # a row kept by --only keeps its own
        print(f"{target.stem}: eval mode {row['acc_running']:.4f} -> calibrated on fitted noise "
              f"{row['acc_calibrated']:.4f}, on inverted inputs {row['acc_inverted']:.4f}; test-batch statistics "
              f"{row['acc_batchstats']:.4f}", flush=True)
        rows.append(row)
    if old:  # keep the rows of the runs not calibrated this time
        kept = [r for r in old["rows"] if r["run"] not in args.only]
        rows = [{"study": "noise_fit", **r} for r in kept] + rows  # rows written before "study" came from noise_fit
    common.write_json(args.out, {"batches": args.batches, "batch_size": 256, "rows": rows,
                                 "inverted": {"samples": defaults.calibrate_samples, "steps": defaults.calibrate_steps},
                                 "command": "python bench/calibrate_bn.py --data-dir " + args.data_dir,
                                 "provenance": common.provenance("cpu", time.time() - start)})  # the last process's


if __name__ == "__main__":
    common.run_main(main)
