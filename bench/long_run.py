"""Benchmark behind the README section "Long runs": our default recipe and the prior work's at the prior work's final
budget (10M noise samples), and ours at 1M, on the teacher we ship; today's recipe at 1M on a teacher users bring.

    python bench/long_run.py --data-dir ../shared/data              # run or resume each arm in turn
    python bench/long_run.py --data-dir ../shared/data --snapshot   # only write each arm's curve so far
    python bench/long_run.py --data-dir ../shared/data --snapshot --calibrate   # and its student calibrated now
    python bench/report.py                                          # README table from results/long_run/

On a 2-core CPU without bf16 a 10M arm takes about 16-19 hours, so it runs over several sittings: each start resumes the
unfinished run from its last checkpoint (every 25,600 samples, about 3 minutes here). --snapshot copies each arm's curve
so far from its checkpoint to results/long_run/<arm>.json with "finished": false, so that a curve in progress can be
committed (the finished run's results.json replaces it), and packs the run folder (checkpoint, args.json, metrics.jsonl;
3-3.5 MB for a ResNet-20 student) into results/long_run/resume/<arm>.tar.gz: committed with the curve, it carries the
run to the next sitting, whose machine starts without run folders, and the arm resumes from it there (the pack is
deleted when the arm finishes). An arm whose committed curve is unfinished but which has neither run folder nor pack is
not started again silently: --restart runs it anew from 0, and its new curve replaces the committed one. With
--calibrate the snapshot also records the checkpoint's student after bench/calibrate_bn.py's calibrations (a few minutes
per arm): how far the student that --calibrate-bn would deploy has come.

Arms (one run of cs_rejection_bn.py each, a ResNet-20 student; the shipped ResNet-20 teacher, seed 0 and the logits
alone unless the arm says, as the script did before it matched the teacher's stage outputs by default):
- ours_1m, ours_1m_s1: the defaults (fitted noise, CS + rejection, batches of 32, Adam 2e-3 with warm-up and cosine
  decay over the budget) for 1M samples, 8x the 128k default run of then (about 2 hours on 2 CPU cores without bf16),
  seeds 0 and 1.
- ours_512k, ours_512k_s1: the defaults for 512k samples (4x the default run of then), seeds 0 and 1: the budget at
  which the 1M run's student passed 0.74 of its teacher with test-batch statistics.
- feat_512k, feat_512k_s1: the stage outputs matched too (--feature-weight 1, the default before weight 10), 512k.
- feat10_10m: our recipe with the stage outputs at weight 10 (the default before 30) for 10M samples (about 8 hours
  with bf16 on a 2-core Xeon).
- default_10m: today's recipe (the stage outputs at weight 30) for 10M samples (about 10 hours with bf16 on a 2-core
  Xeon, over several sittings, carried from one to the next by --snapshot's pack).
- ours: the former defaults (the logits alone) for 10M samples.
- aka20_1m, aka20_1m_s1: today's recipe on the shared akamaster ResNet-20 (91.7%), a teacher users bring, for 1M
  samples (4x the default run; about an hour each with bf16 on a 2-core Xeon), seeds 0 and 1.
- prior: the prior work's recipe (white noise, CS, no balancing, batches of 256, Adam 1e-3 constant) for 10M samples.
"""
import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402
import cs_rejection_bn  # noqa: E402
from calibrate_bn import calibrate_checkpoint  # noqa: E402
from _runs import LOGITS_ONLY, attach_loss_curve, loss_curves, run_or_resume, unfinished_runs  # noqa: E402

# the shared akamaster ResNet-20 (91.7%), named as the benchmark runs from the repository (like --data-dir
# ../shared/data), so that a packed run resumes on another machine with the same layout
SHARED_RESNET20 = ["--teacher", "resnet20", "--teacher-ckpt", "../shared/teachers/akamaster_resnet20-12fca82f.th"]
ARMS = {  # name: (flags on top of the shipped teacher unless they name another, budget in noise samples, batch size),
    # run in this order
    "ours_1m": ([], 1_000_000, 32),
    "ours_512k": ([], 512_000, 32),
    "ours_512k_s1": (["--seed", "1"], 512_000, 32),  # its own seed wins over --seed
    "ours_1m_s1": (["--seed", "1"], 1_000_000, 32),
    "feat_512k": (["--feature-weight", "1"], 512_000, 32),  # the stage outputs matched too, at weight 1
    "feat_512k_s1": (["--feature-weight", "1", "--seed", "1"], 512_000, 32),
    "feat10_10m": (["--feature-weight", "10"], 10_000_000, 32),  # weight 10 (the default then), the prior work's budget
    "default_10m": (["--feature-weight", "30"], 10_000_000, 32),  # today's weight, named: it stays if the default moves
    "ours": ([], 10_000_000, 32),
    "aka20_1m": ([*SHARED_RESNET20, "--feature-weight", "30"], 1_000_000, 32),  # today's default, a teacher users bring
    "aka20_1m_s1": ([*SHARED_RESNET20, "--feature-weight", "30", "--seed", "1"], 1_000_000, 32),
    "prior": (["--no-fit-noise", "--balance", "none", "--lr", "1e-3", "--schedule", "constant"], 10_000_000, 256),
}
EVAL_SAMPLES, CKPT_SAMPLES = 128_000, 25_600  # by default, evaluate and save at these sample counts, whatever the batch
RUNS = REPO / "runs" / "bench_long_run"


def argv_of(arm, args):
    flags, samples, batch = ARMS[arm]
    batch = args.batch_size or batch
    steps = -(-(args.samples or samples) // batch)  # the budget, rounded up to whole steps
    eval_every, ckpt_every = args.eval_every or EVAL_SAMPLES // batch, args.ckpt_every or CKPT_SAMPLES // batch
    return ["--seed", str(args.seed), *LOGITS_ONLY, *flags, "--data-dir", args.data_dir, "--batch-size", str(batch),
            "--steps", str(steps), "--eval-every", str(eval_every), "--ckpt-every", str(ckpt_every)]


def snapshot(arm, run_root, target, test_split=None):
    """The curve so far of the arm's unfinished run, from its checkpoint, written to target with "finished": false,
    and with test_split (x, y) the checkpoint's student calibrated as bench/calibrate_bn.py does; returns the run folder
    it read, or None when there is nothing to write (no run yet, or the run has finished: its results.json is the
    result)."""
    unfinished = unfinished_runs(run_root)
    if not unfinished:
        return None
    ck = common.load_checkpoint(unfinished[-1] / "checkpoint.pt")
    calibrated = test_split and {"calibrated": calibrate_checkpoint(ck, unfinished[-1] / "checkpoint.pt", *test_split,
                                                                    batches=20)}
    a = ck["args"]
    _, info = common.load_teacher(a["teacher"], common.teacher_ckpt_or_exit(a["teacher"], a["dataset"],
                                                                            a["teacher_ckpt"]),
                                  mean=a.get("teacher_mean"), std=a.get("teacher_std"))
    rows = common.MetricsLog.read(unfinished[-1] / "metrics.jsonl")
    stretches = ck.get("stretches", [])  # where and how each process of the run trained
    common.write_json(target, {
        "finished": False, "arm": arm, "args": a, "teacher/acc_recorded": info["test_acc"],
        "samples_seen": ck["stats"]["student_samples"], "samples_budget": a["steps"] * a["batch_size"],
        "curve": ck["curve"], "noise/fitted": ck.get("noise_params") and {
            k: v.tolist() if hasattr(v, "tolist") else v for k, v in ck["noise_params"].items()},
        **loss_curves(rows, a["batch_size"]), **(calibrated or {}),
        # where the run trained (its latest process), not where this snapshot is taken
        "provenance": {**common.provenance(a["device"], ck.get("wall_s"), ck.get("resumed_at", [])),
                       **({"device": stretches[-1]["device"], "stretches": stretches} if stretches else {})}})
    return unfinished[-1]


def pack(run_dir, path):
    """The unfinished run folder run_dir (its checkpoint, args.json and metrics.jsonl) as one .tar.gz at path. Its
    out_dir, this machine's folder that nothing on resume reads, is made machine-independent as in every committed
    result; its --data-dir stays as given (the resumed run reads the data there: ../shared/data in the benchmark)."""
    run_dir, path = Path(run_dir), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / run_dir.name
        staged.mkdir()
        portable = lambda a: {**a, "out_dir": common.portable(a["out_dir"])}
        ck = common.load_checkpoint(run_dir / "checkpoint.pt")
        common.save_checkpoint(staged / "checkpoint.pt", **{**ck, "args": portable(ck["args"])})
        common.write_json(staged / "args.json", portable(json.loads((run_dir / "args.json").read_text())),
                          keep_paths=True)
        shutil.copy(run_dir / "metrics.jsonl", staged / "metrics.jsonl")
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(staged, arcname=run_dir.name)
        partial.replace(path)  # a stop mid-write never leaves half a pack behind


def unpack(path, run_root):
    """A pack written by pack() back into a run folder under run_root, which then resumes; returns that folder."""
    with tarfile.open(path) as tar:
        tops = {Path(name).parts[0] for name in tar.getnames()}
        folder = tops.pop() if len(tops) == 1 else None
        if folder is None or not {f"{folder}/checkpoint.pt", f"{folder}/args.json"} <= set(tar.getnames()):
            raise common.InputError(f"{path} is not a packed run folder (one folder with checkpoint.pt and args.json)")
        tar.extractall(run_root, filter="data")  # "data": nothing outside run_root, no links or devices
    return Path(run_root) / folder


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS), help="arms, run in this order")
    p.add_argument("--samples", type=int, default=None, help="noise samples per arm (default: each arm's own budget)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="noise samples per student update (default: each arm's own, 32 for ours, 256 for prior)")
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"evaluate every this many steps (default: every {EVAL_SAMPLES:,} samples)")
    p.add_argument("--ckpt-every", type=int, default=None,
                   help=f"save a resumable checkpoint every this many steps (default: every {CKPT_SAMPLES:,} samples)")
    p.add_argument("--seed", type=int, default=0, help="seed of every arm that does not set its own")
    p.add_argument("--snapshot", action="store_true",
                   help="only write each unfinished arm's curve so far, and pack its run folder to resume it elsewhere")
    p.add_argument("--calibrate", action="store_true",
                   help="--snapshot: also calibrate the checkpoint's student as bench/calibrate_bn.py does")
    p.add_argument("--restart", action="store_true",
                   help="run anew from 0 an arm whose committed curve is unfinished but whose run folder is gone, "
                        "packed or not (its new curve then replaces the committed one)")
    p.add_argument("--runs-dir", default=str(RUNS), help="run folders go here, one subfolder per arm")
    p.add_argument("--out", default=str(REPO / "results" / "long_run"), help="where the results JSONs go")
    args = p.parse_args(argv)
    if args.calibrate and not args.snapshot:
        p.error("--calibrate goes with --snapshot (a finished arm is calibrated by bench/calibrate_bn.py)")
    changed = [f for f, v in (("--samples", args.samples), ("--batch-size", args.batch_size)) if v is not None]
    default = lambda flag: Path(getattr(args, flag)).resolve() == Path(p.get_default(flag)).resolve()
    if changed and not args.snapshot and (default("out") or default("runs_dir")):
        p.error(f"{' and '.join(changed)} change the arms: give --out and --runs-dir of their own, so that the "
                f"committed results/long_run/ and the arms' run folders stay those of the benchmark")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = common.load_split("cifar10", "test", args.data_dir) if args.calibrate else None
    for arm in args.arms:
        target, run_root, packed = out / f"{arm}.json", Path(args.runs_dir) / arm, out / "resume" / f"{arm}.tar.gz"
        if target.exists() and json.loads(target.read_text()).get("finished", True):
            print(f"{target.name}: done already (with the settings in it; delete it to run the arm again)")
        elif args.snapshot:
            run = snapshot(arm, run_root, target, split)
            if run:
                pack(run, packed)
            print(f"{target.name}: " + (f"curve so far written, run folder packed into {packed.relative_to(out)}"
                                        if run else "no run yet"))
        else:
            if target.exists() and not unfinished_runs(run_root) and not args.restart:
                if not packed.exists():
                    raise common.InputError(
                        f"{target} holds {arm}'s curve to {json.loads(target.read_text())['samples_seen']:,} samples, "
                        f"but neither {run_root} nor {packed} has a checkpoint to resume it from: pass --restart to "
                        f"run the arm anew from 0 (its new curve then replaces that one)")
                print(f"{arm}: resuming the packed run {packed} in {unpack(packed, run_root)}")
            run_or_resume(cs_rejection_bn, argv_of(arm, args), run_root, target)
            attach_loss_curve(target, run_root)
            packed.unlink(missing_ok=True)  # finished: its results replace the packed run

if __name__ == "__main__":
    common.run_main(main)  # Ctrl-C or kill: the run in progress says where it stopped; rerun to resume
