"""One helper the benchmark scripts share: run a method script once into its own folder, resume it if an earlier
attempt stopped, and copy its results.json to where the README's tables are generated from."""
import shutil
from pathlib import Path


def run_or_resume(script, argv, run_root, target):
    """script.main(argv) with --out-dir run_root, or --resume of the newest unfinished run there; then copy the
    newest results.json under run_root to target."""
    run_root = Path(run_root)
    unfinished = [d for d in sorted(run_root.glob("*")) if (d / "checkpoint.pt").exists() and not (d / "results.json").exists()]
    argv = ["--resume", str(unfinished[-1])] if unfinished else [*argv, "--out-dir", str(run_root)]
    print(f"=== {Path(target).stem}: {Path(script.__file__).name} {' '.join(argv)}", flush=True)
    script.main(argv)
    run = max((d for d in run_root.glob("*") if (d / "results.json").exists()), key=lambda d: d.stat().st_mtime)
    shutil.copy(run / "results.json", target)
