"""The prior work's pair on one GPU: ResNet-34 -> ResNet-18 on CIFAR-10 at the prior work's budget (10M noise samples),
with the prior work's recipe and with ours, then bench/gpu_speed.py. Prepared for a lent GPU machine; tested on the
CPU with tiny sizes (tests/test_bench.py).

    python bench/gpu_pair.py --data-dir data                    # teacher if missing, both arms, speed (on cuda)
    python bench/gpu_pair.py --data-dir data --arms prior       # one arm; an arm whose result exists is skipped,
                                                                # one stopped mid-run resumes from its checkpoint
    python bench/gpu_pair.py --data-dir data --eval-subset 2000 # flags it does not know go to every arm's run
    python bench/report.py                                      # README rows from results/gpu_pair/

1. The teacher, teachers/resnet34_cifar10_bn.pt, is trained first if it is missing, with the recipe of the shipped one
   (TEACHER below: needs CIFAR-10's training split in --data-dir).
2. One cs_rejection_bn.py run per arm, ResNet-34 teacher -> ResNet-18 student, seed 0, batches of 256:
   - prior: the prior work's recipe (white noise, CS, no balancing, Adam 1e-3 constant, the logits alone, the
     student as trained).
   - ours: our defaults (fitted noise, CS + rejection, stage outputs at weight 30, Adam with warm-up and cosine decay,
     the student calibrated after training), at batches of 256 instead of our default 32: on a GPU a step of 32 is
     bound by kernel launches, and 10M samples would take 312,500 of them.
3. bench/gpu_speed.py for the pair (fp32 eager against bf16 + channels_last), into --out as gpu_speed.json.

A lent machine takes the working tree only, at most 64 MiB of it: CIFAR-10's training split (150 MB) cannot travel,
so there the teacher must be the committed one (teachers/resnet34_cifar10_bn.pt, 43 MB, trained on a CPU), and the
test split goes as a subset:
`python -c "import numpy as np; d = np.load('data/cifar10_test.npz'); np.savez('gpu_data/cifar10_test.npz',
x=d['x'][:2000], y=d['y'][:2000])"` (gpu_data/ listed in .git/info/exclude and carried), then
`python bench/gpu_pair.py --data-dir gpu_data --out $OUT`, and the JSONs that come back go to results/gpu_pair/.
Such a machine keeps nothing between calls and stops a command after 10 minutes: give each arm its own call
(`--arms prior`, then `--arms ours`). Our estimate, not a measurement: at batches of 256 a step of prior is ~1.5
TFLOP (a ResNet-34 forward, a ResNet-18 forward and backward; 1.16 and 0.56 GMAC a sample), one of ours ~2.7 TFLOP
(rejection's pools of 512, where the CS teacher labels 2.0-2.3 noise samples per sample used in our CPU runs, and the
stage outputs' second teacher forward), so the 39,063 steps of an arm take about 4 (prior) and 7-8 minutes (ours) at
a third of the H200's bf16 peak.
"""
import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402
import cs_rejection_bn  # noqa: E402
import gpu_speed  # noqa: E402
import train_teacher  # noqa: E402
from _runs import attach_loss_curve, batch_size_of, unfinished_runs  # noqa: E402

TEACHER = ["--model", "resnet34", "--dataset", "cifar10", *shlex.split(common.train_recipe("resnet34"))]
PAIR = ["--teacher", "resnet34", "--student", "resnet18", "--dataset", "cifar10", "--batch-size", "256"]
ARMS = {  # name: flags on top of PAIR
    "prior": ["--no-fit-noise", "--feature-weight", "0", "--no-calibrate-bn", "--balance", "none", "--lr", "1e-3",
              "--schedule", "constant"],
    "ours": [],
}
RUNS = REPO / "runs" / "bench_gpu_pair"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz (and _train.npz for the teacher)")
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS), help="arms, run in this order")
    p.add_argument("--samples", type=int, default=10_000_000, help="noise samples per arm")
    p.add_argument("--evals", type=int, default=10, help="evaluations along each arm's run")
    p.add_argument("--teacher-ckpt", default=str(REPO / "teachers" / "resnet34_cifar10_bn.pt"),
                   help="the ResNet-34 teacher; trained here first if the file is missing")
    p.add_argument("--teacher-args", default="",
                   help="train_teacher.py flags after the recipe's, which they override (e.g. '--epochs 40')")
    p.add_argument("--speed-steps", type=int, default=50, help="bench/gpu_speed.py: timed steps per configuration")
    p.add_argument("--speed-batch-size", type=int, default=256, help="bench/gpu_speed.py: noise samples per step")
    p.add_argument("--device", default=common.default_device(), help="cuda (the point of this script) or cpu")
    p.add_argument("--runs-dir", default=str(RUNS), help="run folders go here, one subfolder per arm")
    p.add_argument("--out", default=str(REPO / "results" / "gpu_pair"), help="where the results JSONs go")
    # Flags it does not know go to every arm's cs_rejection_bn.py run, after the arm's own (--steps, --eval-every,
    # --ckpt-every and --out-dir come from --samples, --evals and --runs-dir)
    args, extra = p.parse_known_args(argv)
    common.check_device(p, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if not Path(args.teacher_ckpt).exists():
        flags = [*TEACHER, *shlex.split(args.teacher_args), "--data-dir", args.data_dir, "--device", args.device,
                 "--out", args.teacher_ckpt, "--resume"]  # --resume: from the last epoch, if a call stopped mid-way
        print(f"=== teacher: train_teacher.py {' '.join(flags)}", flush=True)
        train_teacher.main(flags)

    for arm in args.arms:
        target, run_root = out / f"{arm}.json", Path(args.runs_dir) / arm
        if target.exists():
            print(f"{target.name}: done already")
            continue
        flags = [*PAIR, *ARMS[arm], "--teacher-ckpt", args.teacher_ckpt, "--data-dir", args.data_dir,
                 "--device", args.device, *extra]
        steps = -(-args.samples // batch_size_of(cs_rejection_bn, flags))  # the budget, rounded up to whole steps
        every = str(max(1, steps // args.evals))
        argv_arm = [*flags, "--steps", str(steps), "--eval-every", every, "--ckpt-every", every,
                    "--out-dir", str(run_root)]
        unfinished = unfinished_runs(run_root)  # an earlier call stopped mid-run: continue it from its checkpoint
        argv_arm = ["--resume", str(unfinished[-1])] if unfinished else argv_arm
        print(f"=== {arm}: cs_rejection_bn.py {' '.join(argv_arm)}", flush=True)
        common.write_json(target, {"arm": arm, **cs_rejection_bn.main(argv_arm)})
        attach_loss_curve(target, run_root)

    gpu_speed.main(["--teacher", "resnet34", "--student", "resnet18", "--device", args.device,
                    "--batch-size", str(args.speed_batch_size), "--steps", str(args.speed_steps),
                    "--warmup", str(min(10, args.speed_steps)),
                    "--out", str(out / "gpu_speed.json")])
    print(json.dumps({arm: {k: v for k, v in json.loads((out / f"{arm}.json").read_text()).items()
                            if k.startswith("eval/")} for arm in args.arms}, indent=1))


if __name__ == "__main__":
    common.run_main(main)
