"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): each rank computes the coupled teachers'
outputs on its half of one global noise batch and updates a rejection sampler with its half's labels; rank 0 gathers
everything into one file that the test compares with a single process. Not a test module itself."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import batch_align_ln_gn as ba  # noqa: E402
import common  # noqa: E402
import cs_rejection_bn as kd  # noqa: E402


def main(bn_ckpt, gn_ckpt, out):
    common.init_distributed("cpu")
    rank, world = common.dist_info()
    z = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))[common.my_slice(16 // world)]
    bn, _ = common.load_teacher("resnet20", bn_ckpt)
    gn, _ = common.load_teacher("resnet20", gn_ckpt)
    with torch.no_grad():
        bn_out = kd.teacher_forward(bn, z, "cs")
        with ba.batch_aligned(gn):
            gn_out = gn(z)
    sampler = kd.RejectionSampler(10, 0.9, 0.1, torch.Generator().manual_seed(5))
    counts = sampler.update(bn_out.argmax(1))
    keep = sampler.accept(bn_out.argmax(1))
    gathered = {}
    for name, t in (("bn", bn_out), ("gn", gn_out), ("keep", keep.float()), ("marginal", sampler.marginal.float())):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        gathered[name] = parts
    if rank == 0:
        torch.save({"bn": torch.cat(gathered["bn"]), "gn": torch.cat(gathered["gn"]), "keep": torch.cat(gathered["keep"]),
                    "marginals": gathered["marginal"], "counts": counts}, out)
    common.finish_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:4])
