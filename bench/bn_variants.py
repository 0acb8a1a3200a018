"""Benchmark behind the README table "CS + rejection on CIFAR-10": the shared ResNet-20 teacher (91.73%) distilled
into a ResNet-20 student from Gaussian noise, every variant at the same budget of noise samples seen by the student.

    python bench/bn_variants.py --data-dir ../shared/data            # ~1 h on 2 CPU cores; resumable
    python bench/report.py                                            # README table + figure from results/

Each variant is one run of cs_rejection_bn.py; its results.json (with the learning curve) is copied to
results/bn_variants/<variant>.json. Finished variants are skipped; an interrupted one resumes from its checkpoint.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import cs_rejection_bn  # noqa: E402
from _runs import BATCH_256, LOGITS_ONLY, batch_size_of, run_or_resume  # noqa: E402

TEACHER = ["--teacher", "resnet20", "--teacher-ckpt", str(REPO.parent / "shared/teachers/akamaster_resnet20-12fca82f.th"),
           # the paper's white noise (and --noise-alpha): bench/noise_fit.py fits it
           "--no-fit-noise", *BATCH_256, *LOGITS_ONLY]
# The prior work's recipe (Raikwar & Mishra 2022): CS teacher, Adam 1e-3 constant, T = 1, batch 256, fresh white noise.
PRIOR = ["--teacher-bn", "cs", "--balance", "none", "--optimizer", "adam", "--lr", "1e-3", "--schedule", "constant"]
VARIANTS = {  # name: flags on top of the script's defaults (our recipe: Adam 2e-3, 50 warm-up steps, cosine decay)
    "prior_recipe": PRIOR,
    "running": ["--teacher-bn", "running", "--balance", "none"],
    "cs": ["--balance", "none"],
    "cs_reject": ["--balance", "reject"],
    "cs_reweight": ["--balance", "reweight"],
    "cs_reject_alpha2": ["--balance", "reject", "--noise-alpha", "2"],
    # Same samples, 4x the updates: does a smaller batch learn more per noise sample? (eval every 32k samples too)
    "cs_b64": ["--balance", "none", "--batch-size", "64", "--eval-every", "500"],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data", help="folder of cifar10_test.npz")
    p.add_argument("--steps", type=int, default=1000, help="student steps of 256 noise samples per variant")
    p.add_argument("--only", nargs="*", default=list(VARIANTS), help="variants to run")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (another seed: another --out)")
    p.add_argument("--out", default=str(REPO / "results" / "bn_variants"), help="where the results JSONs go")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        target = out / f"{name}.json"
        if target.exists():
            print(f"{name}: done already ({target})")
            continue
        run_root = REPO / "runs" / f"bench_bn_variants_s{args.seed}" / name
        flags = VARIANTS[name]
        # The budget is in noise samples: a variant with another batch size gets the steps that keep it.
        batch = batch_size_of(cs_rejection_bn, [*TEACHER, *flags])
        run_or_resume(cs_rejection_bn, [*TEACHER, "--data-dir", args.data_dir, "--steps", str(args.steps * 256 // batch),
                                        "--seed", str(args.seed), *flags], run_root, target)


if __name__ == "__main__":
    main()
