"""Speed of one noise-KD step, and the cost of the rejection sampler's bookkeeping, on this machine.

    python bench/throughput.py     # ~3 minutes on 2 CPU cores -> results/throughput.json

1. Samples/s of a whole ResNet-20 -> ResNet-20 KD step (teacher forward + student forward/backward + Adam), fp32
   against bf16 autocast + channels_last, with `--balance none`.
2. The sampler's own cost at the same teacher compute: draw_batch with `--balance none` at batch 2B and with
   `--balance reject` at batch B, pool factor 2 and one pool per step both run the CS teacher on exactly 2B noise
   samples; the difference is the sampler (marginal update, coins, indexing), reported as a fraction of a KD step.
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

B, REPEATS = 256, 20


def timed(fn, repeats=REPEATS, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]  # median


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help, and no stray flags
    teacher_ckpt = REPO.parent / "shared/teachers/akamaster_resnet20-12fca82f.th"
    out = {"batch_size": B, "repeats": REPEATS}
    for bf16 in (False, True):
        teacher, _ = common.load_teacher("resnet20", teacher_ckpt)
        student = common.build_model("resnet20")
        fmt = torch.channels_last if bf16 else torch.contiguous_format
        teacher, student = teacher.to(memory_format=fmt), student.to(memory_format=fmt)
        teacher_fn = lambda z: kd.teacher_forward(teacher, z.contiguous(memory_format=fmt), "cs")
        opt = torch.optim.Adam(student.parameters(), 1e-3)
        gen = torch.Generator().manual_seed(0)
        args = kd.parse_args(["--balance", "none", "--batch-size", str(B), "--device", "cpu",
                              "--bf16" if bf16 else "--no-bf16"])
        sampler, stats = kd.RejectionSampler(10, 0.9, 0.1, torch.Generator().manual_seed(1)), kd.new_stats(10)

        def step():  # the body of cs_rejection_bn.main's loop, less logging
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                z, t, w = kd.draw_batch(args, teacher_fn, sampler, gen, (3, 32, 32), stats)
                s = student(z.contiguous(memory_format=fmt))
            loss = kd.kd_loss(s, t, 1.0, w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[f"kd_step_samples_per_s_{'bf16' if bf16 else 'fp32'}"] = B / timed(step)

        # Sampler cost at equal teacher compute (2B samples through the CS teacher either way), timed alternately so
        # that drifts in machine speed hit both alike.
        tag = "bf16" if bf16 else "fp32"
        draws = {}
        for balance, batch in (("none", 2 * B), ("reject", B)):
            a = kd.parse_args(["--balance", balance, "--batch-size", str(batch), "--pool-factor", "2",
                               "--max-pools", "1", "--device", "cpu", "--bf16" if bf16 else "--no-bf16"])
            draws[balance] = (a, kd.RejectionSampler(10, 0.9, 0.1, torch.Generator().manual_seed(1)), kd.new_stats(10))
        times = {"none": [], "reject": []}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(REPEATS + 3):
                for balance, (a, sampler, stats) in draws.items():
                    t = time.perf_counter()
                    kd.draw_batch(a, teacher_fn, sampler, gen, (3, 32, 32), stats)
                    if i >= 3:  # warm-up draws are not timed
                        times[balance].append(time.perf_counter() - t)
        for balance, (a, sampler, stats) in draws.items():
            out[f"draw_batch_s_{balance}_{tag}"] = sorted(times[balance])[REPEATS // 2]
            out[f"sampler_timer_s_{balance}_{tag}"] = stats["sampler_s"] / (REPEATS + 3)
        step_s = B / out[f"kd_step_samples_per_s_{tag}"]
        # Two measures: the sampler's own code timed inside draw_batch (direct), and the difference of the two
        # draw_batch medians (end to end, but as noisy as two timings of a teacher forward: a few % of a step).
        out[f"sampler_timer_frac_of_step_{tag}"] = out[f"sampler_timer_s_reject_{tag}"] / step_s
        out[f"sampler_overhead_frac_of_step_{tag}"] = (out[f"draw_batch_s_reject_{tag}"]
                                                       - out[f"draw_batch_s_none_{tag}"]) / step_s
    out["bf16_speedup"] = out["kd_step_samples_per_s_bf16"] / out["kd_step_samples_per_s_fp32"]
    out["provenance"] = common.provenance("cpu", 0.0)
    common.write_json(REPO / "results" / "throughput.json", out)
    for k, v in out.items():
        print(k, v)


if __name__ == "__main__":
    main()
