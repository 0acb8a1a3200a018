"""Record shipped teachers in teachers/manifest.json from their checkpoints (command, seed, accuracy, sha256, time).

    python bench/manifest.py teachers/resnet20_cifar10_gn.pt --note "2 CPU cores, bf16"

The accuracy is the one train_teacher.py measured and stored (fp32, eval mode, full test split); tests/test_teachers.py
re-measures it and checks the checksum.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints under teachers/, written by train_teacher.py")
    p.add_argument("--note", default=None, help="a note for every entry (hardware, what else ran)")
    args = p.parse_args()
    path = REPO / "teachers" / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    for ckpt in map(Path, args.checkpoints):
        blob = common.load_checkpoint(ckpt)
        manifest[ckpt.name] = {"arch": blob["arch"], "norm": blob["norm"], "dataset": blob["dataset"],
                               "command": blob["command"].replace(f"{REPO}/", ""),  # run from the repository root
                               "seed": blob["args"]["seed"], "test_acc": blob["test_acc"],
                               "train_time_s": blob["train_time_s"], "sha256": common.sha256_of(ckpt),
                               **({"note": args.note} if args.note else {})}
        print(f"{ckpt.name}: {blob['arch']}/{blob['norm']} {blob['test_acc']:.4f}")
    common.write_json(path, manifest)


if __name__ == "__main__":
    main()
