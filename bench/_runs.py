"""One helper the benchmark scripts share: run a method script once into its own folder, resume it if an earlier
attempt stopped, and copy its results.json to where the README's tables are generated from."""
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

# cs_rejection_bn.py's former defaults (batches of 256, evaluation every 125 steps, a checkpoint every 100): the
# studies were measured with them and pass them explicitly, now that the script's default is batches of 32. A flag
# given later on the same command line wins.
BATCH_256 = ["--batch-size", "256", "--eval-every", "125", "--ckpt-every", "100"]
# cs_rejection_bn.py's default before it matched the teacher's stage outputs (--feature-weight): the studies measured
# with the logits alone pass it; an arm that matches them gives --feature-weight after it.
LOGITS_ONLY = ["--feature-weight", "0"]
# cs_rejection_bn.py calibrates a BN student's statistics after training by default (--calibrate-bn); the studies
# report their students as trained, and bench/calibrate_bn.py calibrates them afterwards: run_or_resume passes this
# to every script that has the flag.
AS_TRAINED = ["--no-calibrate-bn"]


def unfinished_runs(run_root):
    """The run folders under run_root that have a checkpoint but no results.json (stopped before their end), in name
    (= start time) order."""
    return [d for d in sorted(Path(run_root).glob("*"))
            if (d / "checkpoint.pt").exists() and not (d / "results.json").exists()]


def batch_size_of(script, flags):
    """The batch size a run of script with these flags uses: the flag's value, else the script's own default."""
    return script.parse_args(list(flags)).batch_size


def run_or_resume(script, argv, run_root, target):
    """script.main(argv) with --out-dir run_root, or --resume of the newest unfinished run there; then copy the
    newest results.json under run_root to target."""
    run_root = Path(run_root)
    if "calibrate_bn" in vars(script.parse_args([])):
        argv = [*AS_TRAINED, *argv]
    unfinished = unfinished_runs(run_root)
    if unfinished:  # it continues with its own settings: those asked for now must be the same
        saved = json.loads((unfinished[-1] / "args.json").read_text())
        wanted = vars(script.parse_args(argv))
        where = {"out_dir", "data_dir", "device", "teacher_ckpt", "bf16"}  # where and how it runs, not its recipe
        other = sorted(k for k in set(saved) & set(wanted) - where if saved[k] != wanted[k])
        if other:
            raise common.InputError(
                f"{unfinished[-1]} is an unfinished run with other settings ("
                + ", ".join(f"{k}: {saved[k]} there, {wanted[k]} now" for k in other)
                + "): run with its settings to resume it, or move it away to start anew")
    argv = ["--resume", str(unfinished[-1])] if unfinished else [*argv, "--out-dir", str(run_root)]
    print(f"=== {Path(target).stem}: {Path(script.__file__).name} {' '.join(argv)}", flush=True)
    script.main(argv)
    run = max((d for d in run_root.glob("*") if (d / "results.json").exists()), key=lambda d: d.stat().st_mtime)
    shutil.copy(run / "results.json", target)


def attach_loss_curve(target, run_root):
    """Add the KD loss logged every 10 steps (the run's metrics.jsonl) to its results file as `train_loss_curve`
    ([noise samples seen, loss]), and for a run that matched the stage outputs and logged its terms, the logit loss
    alone as `train_logit_loss_curve`: can the student fit the teacher on this noise is the question the accuracy
    curve alone does not answer."""
    result = json.loads(Path(target).read_text())
    if "train_loss_curve" in result:
        return
    run = [d for d in Path(run_root).glob("*") if (d / "results.json").exists()
           and json.loads((d / "results.json").read_text())["curve"] == result["curve"]]
    if not run:
        print(f"{Path(target).name}: its run folder is gone; no loss curve")
        return
    rows = common.MetricsLog.read(run[0] / "metrics.jsonl")
    common.write_json(target, {**result, **loss_curves(rows, result["args"]["batch_size"])})


def loss_curves(rows, batch_size):
    """From a run's metrics.jsonl rows: `train_loss_curve` ([noise samples seen, loss]) and, where the run logged
    the logit term apart (with the stage outputs), `train_logit_loss_curve`."""
    curve = lambda key: [[r["step"] * batch_size, r[key]] for r in rows if key in r]
    curves = {"train_loss_curve": curve("train/loss")}
    if any("train/logit_loss" in r for r in rows):  # with the stage outputs: the logit loss (KL) alone, as well
        curves["train_logit_loss_curve"] = curve("train/logit_loss")
    return curves
