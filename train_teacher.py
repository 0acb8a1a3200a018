"""Train a teacher on real labelled data, the one place in this project where a model sees training images.

Any model and normalization of common.build_model, on cifar10 / cifar100 / svhn from the uint8 cache, or on
imagenet100 / an ImageFolder tree (decoded at --image-size). Augmentation: random crop with 4-pixel reflect padding and
horizontal flip. SGD with Nesterov momentum (AdamW by default for ViTs, which SGD trains poorly), label smoothing, a
linear warm-up (2 epochs; a tenth of a shorter run) and a linear decay to zero (one cycle): a small CNN gets to a good
accuracy on a CPU within the hour.
The checkpoint records arch, norm, input normalization, test accuracy and the command; its sha256 is printed.

    python train_teacher.py --model resnet20 --norm bn --dataset cifar10 --data-dir ../shared/data \
        --out teachers/resnet20_cifar10_bn.pt

The shipped teacher teachers/resnet20_cifar10_bn.pt came from that command (teachers/manifest.json has its accuracy,
seed, sha256 and time).
"""
import argparse
import contextlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import common

# each optimizer's peak learning rate and weight decay where --lr / --weight-decay are not given: SGD's are the recipe
# of the shipped CNN teachers, AdamW's that of the shipped ViT
OPTIMIZERS = {"sgd": {"lr": 0.2, "weight_decay": 5e-4}, "adamw": {"lr": 1e-3, "weight_decay": 0.05}}


def norm_arg(value):
    try:
        common.stage_norms(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=common.HelpFormatter)
    p.add_argument("--model", default="resnet20", choices=common.MODEL_NAMES, help="architecture")
    p.add_argument("--norm", default=None, type=norm_arg,
                   help=f"normalization layers (CNNs): {', '.join(common.NORMS)}, or one per stage of a CIFAR ResNet "
                        f"joined by '-' (gn-bn-bn: GroupNorm in the first stage); default bn, ln for the ViTs")
    p.add_argument("--dataset", default="cifar10", choices=common.DATASETS, help="training data")
    p.add_argument("--data-dir", default="./data",
                   help="folder of the <dataset>_{train,test}.npz cache; for imagenet100 / folder the ImageFolder tree")
    p.add_argument("--image-size", type=int, default=224,
                   help="imagenet100 / folder: images are decoded at this size (CIFAR and SVHN stay at 32)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=256, help="training batch size")
    p.add_argument("--optimizer", default=None, choices=list(OPTIMIZERS),
                   help="sgd (Nesterov; default for CNNs) or adamw (default for ViTs, which SGD trains poorly)")
    defaults = lambda key: ", ".join(f"{v[key]:g} with {k}" for k, v in OPTIMIZERS.items())
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {defaults('lr')})")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd: Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay, not on norm parameters or biases; decoupled with adamw (default: "
                        f"{defaults('weight_decay')})")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the cross-entropy")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear warm-up length before the linear decay (default: 2 epochs, or a tenth of the run when "
                        "that is shorter; the shipped teachers: 2 of 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization, shuffling and augmentation")
    p.add_argument("--crop", default="batch", choices=["batch", "image"],
                   help="random-crop offset drawn once per batch (a cheap slice; the recipe of the shipped ResNet-20s) "
                        "or once per image (the standard recipe; a gather, for a teacher trained for accuracy)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast, with channels_last where it is faster (2x or more on CPUs with AVX-512 bf16; "
                        "default: on where the device supports bf16)")
    p.add_argument("--half", action="store_true",
                   help="store the weights in float16 (half the file; for a teacher to commit, e.g. ResNet-34: 43 MB "
                        "instead of 85); the recorded accuracy is measured after the round trip, as loaded")
    p.add_argument("--out", default=None, help="checkpoint path (default teachers/<model>_<dataset>_<norm>.pt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>.partial, saved after every epoch and every --ckpt-every steps within one")
    p.add_argument("--ckpt-every", type=int, default=50, metavar="STEPS",
                   help="also save <out>.partial every this many steps within an epoch (a ResNet-34 epoch takes a "
                        "2-core CPU about a quarter of an hour); an interruption loses at most this many steps")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint at --out (when the run ends), or start over where "
                        "<out>.partial holds an unfinished run (deleted as the run starts); without it, neither is "
                        "ever touched")
    p.add_argument("--device", default=common.default_device(), help="cpu or cuda")
    args = p.parse_args(argv)
    common.check_device(p, args.device)
    if args.bf16 is None:
        args.bf16 = common.bf16_supported(args.device)
    vit = args.model in common.VIT_INPUT_SIZE
    args.norm = args.norm or ("ln" if vit else "bn")
    args.optimizer = args.optimizer or ("adamw" if vit else "sgd")
    for k in ("lr", "weight_decay"):  # the chosen optimizer's defaults, where not given
        setattr(args, k, OPTIMIZERS[args.optimizer][k] if getattr(args, k) is None else getattr(args, k))
    common.check_model_norm(p, args.model, args.norm)  # e.g. a ViT with BatchNorm, per-stage norms for a ResNet-18
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.ckpt_every < 1:  # --epochs 0: untrained
        p.error("need --epochs >= 1, --batch-size >= 1, --lr > 0 and --ckpt-every >= 1")
    if not 0 <= args.label_smoothing < 1 or args.weight_decay < 0 or not 0 <= args.momentum < 1:
        p.error("need 0 <= --label-smoothing < 1, --weight-decay >= 0 and 0 <= --momentum < 1")
    size = common.FIXED_SIZE.get(args.dataset, args.image_size)  # the images the model will see
    fixed = common.VIT_INPUT_SIZE.get(args.model)  # a ViT has a fixed grid of patches
    if fixed and size != fixed:  # else the first step fails inside the model
        p.error(f"--model {args.model} takes {fixed} x {fixed} images; {args.dataset} gives {size} x {size}"
                + (" (set --image-size)" if args.dataset in common.FOLDER_DATASETS else ""))
    if args.warmup_epochs is None:
        args.warmup_epochs = min(2.0, args.epochs / 10)
    if not 0 <= args.warmup_epochs < args.epochs:  # else the run ends inside the warm-up: no decay, not one cycle
        p.error(f"--warmup-epochs {args.warmup_epochs:g} must be at least 0 and shorter than --epochs {args.epochs}")
    # The default path is in the repository's teachers/, from any working folder; a shipped teacher is never
    # replaced by accident (every default run would then use the new file).
    if out_path(args).exists() and not args.overwrite:
        p.error(f"{out_path(args)} exists; pass --overwrite to replace it, or --out another path")
    partial = out_path(args).with_suffix(".partial")
    if partial.exists() and not (args.resume or args.overwrite):  # an unfinished run is never replaced by accident
        p.error(f"{partial} holds an unfinished run: --resume continues it, --overwrite starts over")
    return args


def out_path(args):
    return Path(args.out) if args.out else common.REPO / "teachers" / f"{args.model}_{args.dataset}_{args.norm}.pt"


def augment(x, generator, per_image=False):
    """Random crop (reflect-pad 4) and horizontal flip of a float NCHW batch, done on tensors, no worker processes.
    Flips are per image. The crop offset is drawn once per batch (a cheap slice, our choice for CPU speed) or, with
    per_image, once per image as in the standard recipe (one gather)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    if per_image:
        dy, dx = torch.randint(0, 9, (2, n), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # n, 1, h, 1
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # n, 1, 1, w
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[torch.arange(n, device=x.device)[:, None, None, None], chan, rows, cols]
    else:
        dy, dx = torch.randint(0, 9, (2,), generator=generator).tolist()
        x = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)


@contextlib.contextmanager
def stop_message(partial):
    """Ctrl-C inside: say what <out>.partial holds and how to continue, then let the interrupt end the run."""
    try:
        yield
    except KeyboardInterrupt:
        ck = common.load_checkpoint(partial) if partial.exists() else None
        count = lambda n, what: f"{n} {what}{'s' if n != 1 else ''}"
        done = ck and count(ck["epoch"], "epoch") + (f" and {count(ck['step'], 'step')} of epoch {ck['epoch'] + 1}"
                                                     if ck.get("step") else "")
        print(f"\nstopped: {partial} holds {done}, --resume continues from there" if ck else
              "\nstopped before anything was saved: start it again", file=sys.stderr, flush=True)
        raise


def main(argv=None):
    args = parse_args(argv)
    out = out_path(args)
    partial = out.with_suffix(".partial")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)  # shuffling and augmentation

    x_train, y_train = common.load_split(args.dataset, "train", args.data_dir, args.image_size)
    x_test, y_test = common.load_split(args.dataset, "test", args.data_dir, args.image_size)
    mean, std = common.DATASET_STATS[args.dataset]
    num_classes = common.num_classes(args.dataset, args.data_dir)
    model = common.build_model(args.model, num_classes, args.norm).to(args.device)
    fmt = common.memory_format(model, args.bf16)
    model = model.to(memory_format=fmt)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0}]
    opt = (torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True) if args.optimizer == "sgd"
           else torch.optim.AdamW(groups, lr=args.lr))
    steps_per_epoch = len(y_train) // args.batch_size  # drop the last partial batch
    if steps_per_epoch == 0:
        sys.exit(f"--batch-size {args.batch_size} is larger than the {len(y_train)} training images")
    total, warmup = args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)
    lr_at = lambda s: args.lr * (s / max(1, warmup) if s < warmup else (total - s) / max(1, total - warmup))

    start_epoch, start_step, perm, history, t_before = 0, 0, None, [], 0.0
    # The settings that decide the training: a resumed run must keep them (another --epochs would change the learning
    # rate schedule mid-run). Where the data is read from, the device and how often it is saved may change.
    recipe = {k: v for k, v in vars(args).items()
              if k not in ("resume", "overwrite", "device", "data_dir", "out", "ckpt_every")}
    if args.resume and partial.exists():
        ck = common.load_checkpoint(partial)
        saved = ck.get("recipe", recipe)  # a .partial from before the recipe was recorded: not checked
        changed = sorted(k for k in saved if saved[k] != recipe.get(k))
        if changed:
            raise common.InputError(
                f"--resume: {partial} was trained with " + ", ".join(f"{k}={saved[k]}" for k in changed)
                + "; now " + ", ".join(f"{k}={recipe.get(k)}" for k in changed)
                + ": resume with its settings, or delete it to start over")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        start_epoch, history, t_before = ck["epoch"], ck["history"], ck["train_time_s"]
        # within an epoch: its shuffle and the steps done (a .partial saved at an epoch's end has neither)
        start_step, perm = ck.get("step", 0), ck.get("perm")
        print(f"resumed from {partial} at epoch {start_epoch}" + (f", step {start_step}" if start_step else ""))
    elif args.resume:
        print(f"--resume: no {partial} yet, so training starts at epoch 1")
    elif partial.exists():  # --overwrite (parse_args refuses it otherwise): the earlier run's progress goes now, so
        partial.unlink()  # that what is saved, or said on a stop, is only ever this run's
        print(f"--overwrite: deleted {partial} of an earlier run; training starts at epoch 1")

    t0 = time.time()
    save_partial = lambda epoch, step, perm: common.save_checkpoint(
        partial, model=model.state_dict(), optimizer=opt.state_dict(), generator=gen.get_state(), epoch=epoch,
        step=step, perm=perm, history=history, train_time_s=time.time() - t0 + t_before, recipe=recipe)
    # Ctrl-C or SIGTERM: the step under way ends and is saved in <out>.partial, then the run stops and says so
    with stop_message(partial), common.stop_after_step() as stop:
        for epoch in range(start_epoch, args.epochs):
            model.train()
            first = start_step if epoch == start_epoch else 0  # a run resumed within an epoch goes on with its shuffle
            if not first:
                perm = torch.randperm(len(y_train), generator=gen)
            bar = tqdm(range(first, steps_per_epoch), initial=first, total=steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
            for i in bar:
                for g in opt.param_groups:
                    g["lr"] = lr_at(epoch * steps_per_epoch + i)
                idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
                x = augment(common.normalize(x_train[idx].to(args.device), mean, std), gen, args.crop == "image")
                x = x.contiguous(memory_format=fmt)
                with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y_train[idx].to(args.device),
                                       label_smoothing=args.label_smoothing)
                if not torch.isfinite(loss):
                    sys.exit(f"loss is {loss.item()} at epoch {epoch + 1} step {i}: lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                stopping = stop.requested  # a signal came during this step: save it, then stop
                if i + 1 < steps_per_epoch and ((i + 1) % args.ckpt_every == 0 or stopping):  # the epoch's end: below
                    save_partial(epoch, i + 1, perm)  # epoch: the epochs completed; step: the steps done in this one
                    if stopping:
                        raise KeyboardInterrupt
            acc = common.evaluate(model, x_test, y_test, mean, std, 500, device=args.device, amp=args.bf16)
            history.append({"epoch": epoch + 1, "test_acc": acc, "loss": loss.item()})
            print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.3f}  test acc {acc:.4f}  "
                  f"{time.time() - t0 + t_before:.0f}s", flush=True)
            save_partial(epoch + 1, 0, None)
            if stop.requested:
                raise KeyboardInterrupt

    # The recorded accuracy is the fp32 eval-mode accuracy on the full test split: what load + evaluate reproduces.
    # With --half the stored weights are float16 and the accuracy is that of the model loaded back from them (a
    # loaded teacher computes in float32; only its weights were rounded).
    model = model.float().to(memory_format=torch.contiguous_format)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if args.half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        acc_fp32 = common.evaluate(model, x_test, y_test, mean, std, 500, device=args.device)
        model.load_state_dict(state)  # copies into the float32 parameters: the rounded weights, as a load gives them
        print(f"float16 weights: test acc {acc_fp32:.4f} with the float32 weights")
    acc = common.evaluate(model, x_test, y_test, mean, std, 500, device=args.device)
    common.save_checkpoint(out, model=state, arch=args.model, norm=args.norm, num_classes=num_classes,
                           dataset=args.dataset, mean=list(mean), std=list(std), test_acc=acc, args=common.portable(vars(args)),
                           image_size=int(x_test.shape[1]),
                           command="python train_teacher.py " + " ".join(sys.argv[1:] if argv is None else argv),
                           history=history, train_time_s=round(time.time() - t0 + t_before, 1),
                           **({"test_acc_fp32_weights": acc_fp32} if args.half else {}))
    partial.unlink(missing_ok=True)
    print(f"saved {out}: {args.model}/{args.norm} on {args.dataset}, test acc {acc:.4f} (fp32, eval mode), "
          f"sha256 {common.sha256_of(out)}")
    return {"path": str(out), "test_acc": acc, "sha256": common.sha256_of(out)}


if __name__ == "__main__":
    common.run_main(main)
