"""GPU speed of noise distillation: the plain fp32 eager loop against the fast path, both in one run on one device.

The step is the one of cs_rejection_bn.py with --balance none: Gaussian noise made on the device, the CS teacher's
forward, the student's forward and backward, an Adam step. Fast path: bf16 autocast, channels_last, optionally
torch.compile of the student (--compile), and no host synchronization inside the timed loop (the plain loop has none
either; the clock stops after a device synchronize). Weights are random: speed does not depend on them.

    python bench/gpu_speed.py                      # ResNet-34 -> ResNet-18, CIFAR-sized noise, batch 256, on cuda
    python bench/gpu_speed.py --compile            # + torch.compile
    python bench/gpu_speed.py --device cpu --teacher resnet20 --student resnet20 --steps 5   # the CPU path

Writes results/gpu_speed.json (device named in it). Until a GPU run is committed, the README says so.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import common  # noqa: E402
import cs_rejection_bn as kd  # noqa: E402


def timed_steps(teacher, student, batch, steps, warmup, device, fast, compile_student):
    """Samples/s of `steps` distillation steps after `warmup` untimed ones."""
    fmt = torch.channels_last if fast else torch.contiguous_format
    teacher, student = teacher.to(device, memory_format=fmt), student.to(device, memory_format=fmt)
    forward = torch.compile(student) if compile_student else student
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    gen = torch.Generator(device).manual_seed(0)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def step():
        z = common.sample_noise(batch, (3, 32, 32), gen, device=device).contiguous(memory_format=fmt)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=fast):
            t = kd.teacher_forward(teacher, z, "cs")
            s = forward(z)
        loss = kd.kd_loss(s, t, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):  # compilation, cudnn autotuning, allocator warm-up
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="resnet34", choices=common.MODEL_NAMES, help="teacher architecture (BN)")
    p.add_argument("--student", default="resnet18", choices=common.MODEL_NAMES, help="student architecture")
    p.add_argument("--batch-size", type=int, default=256, help="noise samples per step")
    p.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="fast path: also torch.compile the student")
    p.add_argument("--device", default=common.default_device(), help="cuda (the point of this script) or cpu")
    p.add_argument("--out", default=str(REPO / "results" / "gpu_speed.json"), help="where the JSON goes")
    args = p.parse_args(argv)
    if str(args.device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    t0 = time.time()
    out = {"teacher": args.teacher, "student": args.student, "batch_size": args.batch_size, "steps": args.steps,
           "compile": args.compile}
    for name, fast in (("fp32_eager", False), ("fast", True)):
        torch.manual_seed(0)
        teacher, student = common.build_model(args.teacher).eval(), common.build_model(args.student)
        for q in teacher.parameters():
            q.requires_grad_(False)
        out[f"samples_per_s_{name}"] = timed_steps(teacher, student, args.batch_size, args.steps, args.warmup,
                                                   args.device, fast, fast and args.compile)
        print(f"{name}: {out[f'samples_per_s_{name}']:.0f} samples/s", flush=True)
    out["speedup"] = out["samples_per_s_fast"] / out["samples_per_s_fp32_eager"]
    out["provenance"] = common.provenance(args.device, time.time() - t0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out, out)
    print(f"speedup {out['speedup']:.2f}x on {out['provenance']['device']} -> {args.out}")
    return out


if __name__ == "__main__":
    main()
