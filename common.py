"""Shared boilerplate for the NormShift-KD scripts: nothing in here is under study.

Models, checkpoints, the uint8 dataset cache, Gaussian noise, the two evaluation protocols, run folders and logging,
and the few torch.distributed helpers that let a script run unchanged under torchrun.
Every method (current-statistics inference, rejection sampling, batch alignment, ...) lives in its own script, so that
one file read top to bottom teaches one method. The README's "How it works" sections hold the design.
"""
import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import platform
import signal
import sys
import subprocess
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock as TVBasicBlock
from torchvision.models.resnet import ResNet as TVResNet
from tqdm import tqdm

REPO = Path(__file__).resolve().parent


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a data set that cannot be used as given): the scripts print its
    message as one line instead of a traceback (see run_main)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, except a None default: the flag's help says what it resolves to then (which
    can depend on other flags), so '(default: None)' would only mislead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def run_main(main):
    """A script's entry point: bad input ends in one line on stderr and exit status 1, an interrupt in status 130,
    neither with a traceback (the training loops say where they stopped and how to resume before they get here).
    SIGTERM (`kill`, a job scheduler) interrupts as Ctrl-C does, and so does SIGINT in a background job, which the
    shell starts with SIGINT ignored (`nohup python ... &`)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # raises KeyboardInterrupt, whatever the signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main()
    except (InputError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None

# Per-channel input normalization of the datasets (images as x / 255). The shared akamaster teachers were trained
# with the ImageNet values instead; every checkpoint carries the (mean, std) it was trained with.
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASET_STATS.update(imagenet100=IMAGENET_STATS, folder=IMAGENET_STATS)
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet100": 100}  # folder: one class per subfolder
DATASETS = sorted(NUM_CLASSES) + ["folder"]
# ImageFolder trees (--data-dir with train/ and val/, one subfolder per class), decoded once into the uint8 cache.
FOLDER_DATASETS = ("imagenet100", "folder")
FIXED_SIZE = {"cifar10": 32, "cifar100": 32, "svhn": 32}  # the image size of the cached datasets (the models' input)


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------
class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels at each position of an (N, C, H, W) map, as in ConvNeXt (norm 'lnc')."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


NORMS = ["bn", "gn", "ln", "lnc", "none"]


def norm_layer(norm, channels):
    """The 2-d normalization layer for a CNN: bn; gn (8 groups, as in the GN paper's small-net setting);
    ln (GroupNorm with one group = LayerNorm over (C, H, W) of each sample); lnc (LayerNorm over C at each position,
    ConvNeXt's); none. All but bn normalize each sample on its own."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    if norm == "lnc":
        return ChannelLayerNorm(channels)
    if norm == "none":
        return nn.Identity()
    raise InputError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")


class ShortcutA(nn.Module):
    """He et al.'s option A shortcut: subsample by 2 and zero-pad the new channels; no parameters."""

    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.shortcut = ShortcutA(cout // 4) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def stage_norms(norm, stages=3):
    """A norm for every stage: 'gn' -> [gn, gn, gn]; 'gn-bn-bn' -> GroupNorm in the first stage (and the stem),
    BatchNorm after it: the teachers of bn_ablation.py's retraining arm."""
    norms = norm.split("-") if "-" in norm else [norm] * stages
    if len(norms) != stages or any(n not in NORMS for n in norms):
        raise InputError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}, or one per stage joined by '-' "
                         f"({stages} stages, e.g. gn-bn-bn)")
    return norms


class CifarResNet(nn.Module):
    """The CIFAR ResNets of He et al. (2016) with the parameter names of akamaster/pytorch_resnet_cifar10, so that
    its pretrained checkpoints load as they are. norm: one for all layers, or one per stage
    joined by '-' (the stem belongs to the first stage)."""

    def __init__(self, depth, num_classes=10, norm="bn"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n, norms = (depth - 2) // 6, stage_norms(norm)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(norms[0], 16)
        cin, stages = 16, []
        for (cout, stride), norm in zip(((16, 1), (32, 2), (64, 2)), norms):
            blocks = []
            for i in range(n):
                blocks.append(CifarBlock(cin, cout, stride if i == 0 else 1, norm))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def cifar_torchvision_resnet(layers, num_classes, norm):
    """ResNet-18/34 from torchvision's blocks with the CIFAR stem (3x3 conv, stride 1, no max-pool), as used by the
    prior work's teacher/student pair."""
    model = TVResNet(TVBasicBlock, layers, num_classes=num_classes, norm_layer=partial(norm_layer, norm))
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


class Attention(nn.Module):
    """Multi-head self-attention written out: the attention probabilities pass through `self.attend`, so a forward hook
    there sees them (vit_failure_analysis.py measures their entropy). For 65 short tokens it is also faster on a CPU
    than PyTorch's fused attention, whose CPU backward dominated a ViT training step when we timed it."""

    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attend = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.attend((q @ k.transpose(-2, -1)) * self.scale)  # (N, heads, L, L)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, length, dim))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A pre-norm Vision Transformer for small images: patch embedding, class token, learned positions, LayerNorm."""

    def __init__(self, num_classes=10, image_size=32, patch_size=4, dim=128, depth=6, heads=4, mlp_ratio=4):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, L, D)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
TV_RESNET_LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
IMAGENET_MODELS = {"imagenet_resnet18": "resnet18", "imagenet_resnet34": "resnet34", "imagenet_resnet50": "resnet50",
                   "imagenet_vit_b_16": "vit_b_16"}  # torchvision's own, for 224 x 224 inputs (ImageNet-100, folders)
MODEL_NAMES = sorted(CIFAR_RESNET_DEPTHS) + sorted(TV_RESNET_LAYERS) + ["vit_tiny"] + sorted(IMAGENET_MODELS)
VIT_INPUT_SIZE = {"vit_tiny": 32, "imagenet_vit_b_16": 224}  # the ViTs (LayerNorm only), each for one image size


def build_model(name, num_classes=10, norm=None):
    """Build a model by name. norm: bn/gn/ln/lnc/none for the CNNs (default bn), or one per stage for the CIFAR
    ResNets (e.g. gn-bn-bn); vit_tiny always uses LayerNorm. imagenet_*: torchvision's ImageNet-shaped models
    (ResNet-18/34/50 with any norm but per-stage ones; ViT-B/16 for 224 x 224 inputs only).
    vit_tiny here is a small ViT for 32x32 inputs: patch 4 (64 tokens + class token), width 128, depth 6, 4 heads
    (about 1.2M parameters, so that a checkpoint stays under 5 MB)."""
    problem = model_norm_problem(name, norm)
    if problem:
        raise InputError(problem)
    if name in CIFAR_RESNET_DEPTHS:
        return CifarResNet(CIFAR_RESNET_DEPTHS[name], num_classes, norm or "bn")
    if name in TV_RESNET_LAYERS:
        return cifar_torchvision_resnet(TV_RESNET_LAYERS[name], num_classes, norm or "bn")
    if name in VIT_INPUT_SIZE:
        return ViT(num_classes) if name == "vit_tiny" else torchvision.models.vit_b_16(num_classes=num_classes)
    return getattr(torchvision.models, IMAGENET_MODELS[name])(num_classes=num_classes,  # torchvision's ImageNet
                                                              norm_layer=partial(norm_layer, norm or "bn"))  # ResNets


def model_norm_problem(name, norm):
    """Why build_model(name, norm=norm) cannot be built (one line), or None: it needs a known model, a ViT with
    LayerNorm (or no norm given), per-stage norms only for the CIFAR ResNets."""
    if name not in MODEL_NAMES:
        return f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}"
    if name in VIT_INPUT_SIZE:
        return None if norm in (None, "ln") else f"{name} uses LayerNorm only (norm ln); got norm {norm}"
    if norm is not None and "-" in norm:
        if name not in CIFAR_RESNET_DEPTHS:
            return (f"norm {norm}: one norm per stage is for the CIFAR ResNets (resnet20 ... resnet110) only; "
                    f"{name} takes one of {', '.join(NORMS)}")
        try:
            stage_norms(norm)
        except InputError as e:
            return str(e)
    elif norm is not None and norm not in NORMS:
        return f"unknown norm {norm!r}; choose from {', '.join(NORMS)}"
    return None


def check_model_norm(parser, name, norm):
    """The model and its norm must make a model build_model can build: one line before any data loads, instead of
    an error once the teacher has loaded."""
    problem = model_norm_problem(name, norm)
    if problem:
        parser.error(problem)


def memory_format(model, bf16):
    """The memory format a model runs fastest in, as we timed it with PyTorch 2.14: channels_last with bf16 autocast,
    and on a CPU in fp32 too; contiguous where the model has GroupNorm with more than one group, whose channels_last
    kernel is the slow one (GroupNorm(1) is not). README, Speed: the step times. Call it after moving the model."""
    slow = any(isinstance(m, nn.GroupNorm) and m.num_groups > 1 for m in model.modules())
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return torch.channels_last if (bf16 or on_cpu) and not slow else torch.contiguous_format


def batchnorm_layers(model):
    """The BatchNorm layers of model, in the order it registers them (its forward order for the CNNs here)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model):
    return bool(batchnorm_layers(model))


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------
def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path, **payload):
    """Write atomically (a crash mid-write never leaves a half checkpoint behind). Only tensors, numbers, strings,
    lists and dicts go in, so that the file loads with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    """A checkpoint's contents, on the CPU. weights_only=True: a checkpoint from the internet must never be able to
    run code on load, so one that holds pickled code is refused (the error says so)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):  # a checkpoint in torch.save's format whose contents are more than tensors
            raise InputError(f"{path} holds pickled code or objects, which are never loaded here (Weights only "
                             f"load failed); save a plain state_dict instead") from None
        raise InputError(f"{path} is not a readable PyTorch checkpoint (or one in the legacy format that holds "
                         f"pickled objects, which are never loaded here)") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no message'})") from None


def load_state_strict(model, state, source):
    """load_state_dict with an error that lists every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    # BatchNorm checkpoints older than PyTorch 0.4.1 have no num_batches_tracked; torch fills it in on load.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise InputError(
            f"checkpoint {source} does not match the model ({type(model).__name__}):\n"
            f"  missing keys ({len(missing)}): {missing[:20]}\n  unexpected keys ({len(unexpected)}): {unexpected[:20]}\n"
            f"  shape mismatches ({len(shapes)}): {shapes[:20]}")
    model.load_state_dict(state)


def train_recipe(name):
    """train_teacher.py flags beyond its defaults for a teacher of this architecture (README: Teachers): for
    ResNet-18/34, trained for accuracy, 30 epochs with per-image crops, stored in float16 (a ViT's AdamW is
    train_teacher.py's default for it)."""
    return "--epochs 30 --crop image --half" if name in TV_RESNET_LAYERS else ""


def teacher_ckpt_or_exit(name, dataset, ckpt=None, data_dir="./data", norm="bn"):
    """The checkpoint to use: `ckpt` when given, else the shipped teachers/<name>_<dataset>_<norm>.pt; when that does
    not exist, exit with the train_teacher.py command that makes it."""
    if ckpt:
        return str(ckpt)
    norm = "ln" if name in VIT_INPUT_SIZE else norm  # our ViTs have LayerNorm only
    path = REPO / "teachers" / f"{name}_{dataset}_{norm}.pt"
    if not path.is_file():
        recipe = f" {train_recipe(name)}" if train_recipe(name) else ""
        raise InputError(f"no checkpoint for teacher {name} ({norm}) on {dataset} at {path}. Train one with\n"
                         f"  python train_teacher.py --model {name} --norm {norm}{recipe} --dataset {dataset} "
                         f"--data-dir {data_dir} --out {path}\n(a GPU is advised beyond resnet20), or pass "
                         f"--teacher-ckpt with your own.")
    return str(path)


def load_teacher(name, ckpt, num_classes=None, dataset=None, mean=None, std=None, norm="bn"):
    """Load a teacher: our own checkpoints (train_teacher.py), the akamaster format ({state_dict, best_prec1}, keys
    prefixed with 'module.'), or a plain state_dict of any model build_model(name, num_classes, norm) makes; a plain
    state_dict carries no input normalization, so mean and std (per channel, of images in [0, 1]) must be given, and
    given for the other formats they replace the recorded ones. Returns (model in eval mode, info) where info has
    mean, std, norm, test_acc, sha256. With `dataset` given, a checkpoint that records another dataset is refused."""
    ckpt, given = Path(ckpt), (mean, std)
    if (mean is None) != (std is None) or (mean is not None and not len(mean) == len(std) == 3):
        raise InputError("--teacher-mean and --teacher-std go together, three numbers each")
    blob = load_checkpoint(ckpt)  # a missing file, a folder, a text file: one clear error each
    if not isinstance(blob, dict):
        raise InputError(f"{ckpt} holds a {type(blob).__name__}, not a checkpoint (a dict: ours, akamaster's or a "
                         f"plain state_dict)")
    if "model" in blob:  # ours
        if blob.get("arch", name) != name:
            raise InputError(f"checkpoint {ckpt} holds a {blob['arch']}, not a {name}")
        if dataset and blob.get("dataset", dataset) != dataset:
            raise InputError(f"checkpoint {ckpt} was trained on {blob['dataset']}, not {dataset}")
        state, norm = blob["model"], blob.get("norm", "bn")
        mean, std, acc = tuple(blob["mean"]), tuple(blob["std"]), blob.get("test_acc")
        num_classes = num_classes or blob.get("num_classes", 10)
    elif "state_dict" in blob:  # akamaster/pytorch_resnet_cifar10
        state = {k.removeprefix("module."): v for k, v in blob["state_dict"].items()}
        norm, (mean, std) = "bn", IMAGENET_STATS
        acc = float(blob["best_prec1"]) / 100 if "best_prec1" in blob else None
        num_classes = num_classes or state["linear.weight"].shape[0]
    elif blob and all(torch.is_tensor(v) for v in blob.values()):  # a plain state_dict: bring your own teacher
        if mean is None:  # (mean and std come together: checked above)
            raise InputError(f"{ckpt} is a plain state_dict, which records no input normalization: pass "
                             f"--teacher-mean and --teacher-std (per channel, for images scaled to [0, 1])")
        state = {k.removeprefix("module."): v for k, v in blob.items()}
        acc, num_classes = None, num_classes or NUM_CLASSES.get(dataset, 10)
    else:
        raise InputError(f"{ckpt}: neither our format (key 'model'), akamaster's (key 'state_dict') nor a plain "
                         f"state_dict; top-level keys: {sorted(blob)[:10]}")
    if given[0] is not None:  # given by the user: they define the teacher's input space
        mean, std = tuple(given[0]), tuple(given[1])
    model = build_model(name, num_classes, norm)
    load_state_strict(model, state, ckpt)
    for p in model.parameters():
        p.requires_grad_(False)
    sha = sha256_of(ckpt)
    manifest = REPO / "teachers" / "manifest.json"  # the shipped teachers' checksums: warn when one was replaced
    shipped = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if ckpt.resolve().parent == manifest.parent and ckpt.name in shipped and shipped[ckpt.name]["sha256"] != sha:
        print(f"WARNING: {ckpt} is not the teacher we ship (sha256 {sha[:12]}..., teachers/manifest.json says "
              f"{shipped[ckpt.name]['sha256'][:12]}..., {shipped[ckpt.name]['test_acc']:.2%}): numbers will differ "
              f"from the README's; `git checkout teachers/{ckpt.name}` restores it", file=sys.stderr)
    info = {"mean": mean, "std": std, "norm": norm, "test_acc": acc, "sha256": sha, "path": str(ckpt),
            "image_size": blob.get("image_size", 224)}  # the size folder datasets are decoded at for this teacher
    return model.eval(), info


# ----------------------------------------------------------------------------------------------------------------------
# Data: a uint8 cache <data-dir>/<name>_{train,test}.npz (x: uint8 NHWC, y: int labels), downloaded only when missing
# ----------------------------------------------------------------------------------------------------------------------
def _download(name, split, root):
    import torchvision.datasets as tvd
    train = split == "train"
    if name == "cifar10":
        ds = tvd.CIFAR10(root, train=train, download=True)
        return ds.data, np.asarray(ds.targets)
    if name == "cifar100":
        ds = tvd.CIFAR100(root, train=train, download=True)
        return ds.data, np.asarray(ds.targets)
    if name == "svhn":
        ds = tvd.SVHN(root, split=split, download=True)
        return ds.data.transpose(0, 2, 3, 1), np.asarray(ds.labels)  # SVHN comes as NCHW
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def _decode_folder(root, split, size):
    """An ImageFolder split (root/train, or root/val for the test split) as uint8 [N, size, size, 3], labels and
    class names: torchvision's ImageFolder with the usual ImageNet evaluation transform (shorter side to
    size * 256 / 224, centre crop; train_teacher.py crops and flips from there)."""
    folder = Path(root) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: --data-dir must point at an ImageFolder tree with train/ "
                                f"and val/, one subfolder of images per class")
    T = torchvision.transforms
    crop = T.Compose([T.Lambda(lambda img: img.convert("RGB")), T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])
    ds = torchvision.datasets.ImageFolder(folder, transform=lambda img: np.asarray(crop(img)))
    x = np.stack([ds[i][0] for i in tqdm(range(len(ds)), desc=f"decoding {folder} at {size}px (once; cached)",
                                         leave=False)])
    return x, np.array(ds.targets), ds.classes


def num_classes(name, data_dir="./data"):
    """Classes of a dataset: fixed for the named ones, the number of class subfolders for 'folder'."""
    if name != "folder":
        if name not in NUM_CLASSES:
            raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        return NUM_CLASSES[name]
    for split in ("train", "val"):
        if (Path(data_dir) / split).is_dir():
            return sum(p.is_dir() for p in (Path(data_dir) / split).iterdir())
    caches = sorted(Path(data_dir).glob("folder_*.npz"))
    if caches:
        with np.load(caches[0]) as f:
            return len(f["classes"])
    raise FileNotFoundError(f"{data_dir} has neither train/ nor val/ nor a folder_*.npz cache")


def load_split(name, split, data_dir="./data", image_size=224):
    """Return (x uint8 [N, H, W, 3], y int64 [N]) as tensors, from the cache or, when missing, a torchvision download
    (CIFAR, SVHN) or the decoded ImageFolder tree (imagenet100, folder; at image_size) that then writes the cache."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name in FOLDER_DATASETS:
        cache = Path(data_dir) / f"{name}_{split}_{image_size}.npz"
        if not cache.is_file():
            x, y, classes = _decode_folder(data_dir, split, image_size)
            if name == "imagenet100" and len(classes) != 100:
                raise InputError(f"{data_dir}: ImageNet-100 has 100 classes, this tree has {len(classes)}; "
                                 f"use --dataset folder for other trees")
            np.savez(cache, x=x, y=y.astype(np.int64), classes=np.array(classes))
    else:
        cache = Path(data_dir) / f"{name}_{split}.npz"
    if not cache.is_file():
        try:
            x, y = _download(name, split, Path(data_dir) / "torchvision")
        except Exception as e:  # offline, blocked, corrupt: say which file would have made the download unnecessary
            raise FileNotFoundError(
                f"{cache} is missing and downloading {name} failed ({type(e).__name__}: {e}). Offline, put an .npz "
                f"there with x: uint8 [N, H, W, 3] and y: integer labels (the README's layout), or pass "
                f"--data-dir pointing at a folder that has it.") from e
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=np.ascontiguousarray(x, dtype=np.uint8), y=y.astype(np.int64))
    try:  # allow_pickle=False (numpy's default): an .npz that needs pickle is refused, never loaded with it
        f = np.load(cache, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{cache} is not a readable .npz with arrays x and y ({type(e).__name__})") from None
    expected = f"{cache}: expected an .npz with arrays x (uint8 [N, H, W, 3]) and y (labels), got"
    if not isinstance(f, np.lib.npyio.NpzFile):  # an .npy under an .npz name
        raise InputError(f"{expected} a single array")
    with f:
        if not {"x", "y"} <= set(f.files):
            raise InputError(f"{expected} {sorted(f.files)}")
        x, y = f["x"], f["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
        raise InputError(f"{cache}: expected x uint8 [N, H, W, 3] and y [N], got x {x.dtype} {x.shape}, y {y.shape}")
    if name in FIXED_SIZE and x.shape[1:3] != (FIXED_SIZE[name],) * 2:
        raise InputError(f"{cache}: {name} images are {FIXED_SIZE[name]}x{FIXED_SIZE[name]}, these are "
                         f"{x.shape[1]}x{x.shape[2]}")
    k = NUM_CLASSES.get(name) or len(np.unique(y))
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise InputError(f"{cache}: labels must lie in [0, {k}) for {name}, found {y.min()}..{y.max()}")
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def normalize(x_uint8, mean, std):
    """uint8 NHWC -> float NCHW, standardized with the model's own input normalization."""
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------------------------------------------------
# Noise: standard Gaussian, optionally with a 1/f^alpha power spectrum (README: How it works), from its own generator
# ----------------------------------------------------------------------------------------------------------------------
def spectrum_filter(height, width, alpha):
    """Amplitude filter A(f) = f^(-alpha/2) (power ~ 1/f^alpha), scaled so that each output pixel has unit variance.
    For x = ifft2(fft2(w) * A) with white w, Var(x_ij) = mean(A^2), the same for every pixel (the process is
    stationary), so dividing A by sqrt(mean(A^2)) standardizes every pixel exactly. The DC term gets the amplitude of
    the lowest non-zero frequency instead of infinity. Computed in log space, so no alpha overflows float32 (alpha
    may be a tensor that requires grad: the filter is differentiable in it)."""
    fy = torch.fft.fftfreq(height).abs().view(-1, 1)
    fx = torch.fft.fftfreq(width).abs().view(1, -1)
    f = torch.sqrt(fy ** 2 + fx ** 2).clamp_min(1.0 / max(height, width))
    log_amp = -torch.as_tensor(alpha, dtype=torch.float32) / 2 * f.log()
    log_amp = log_amp - log_amp.max()  # the largest amplitude is 1: nothing overflows, the smallest may underflow to 0
    amp = log_amp.exp()
    return amp / amp.pow(2).mean().sqrt()


def shape_noise(w, alpha=0.0, color=None, mean=None):
    """Turn white noise w [N, C, H, W] into a stationary Gaussian: a 1/f^alpha power spectrum per channel (unit
    variance per pixel), then the channels mixed by `color` (C x C: the channel covariance is color @ color.T) and
    shifted by `mean` (C). Differentiable in alpha, color and mean. Any such z is still a Gaussian with no data and no
    generator network behind it."""
    z = w
    if torch.is_tensor(alpha) or alpha != 0:
        z = torch.fft.ifft2(torch.fft.fft2(z) * spectrum_filter(w.shape[-2], w.shape[-1], alpha).to(w.device)).real
    if color is not None:
        z = torch.einsum("ij,njhw->nihw", color.to(z), z)
    if mean is not None:
        z = z + mean.to(z).view(1, -1, 1, 1)
    return z


def label_counts(labels, k):
    """The histogram of integer labels in [0, k), on their device. torch.bincount would do, but on a GPU it reads the
    labels' min and max back to the host: a sync in every training step."""
    return torch.zeros(k, dtype=torch.long, device=labels.device).index_add_(0, labels, torch.ones_like(labels))


def sample_noise(n, shape, generator, alpha=0.0, device="cpu", color=None, mean=None):
    """n samples of N(0, I) with the given (C, H, W) shape, from `generator`; alpha > 0 gives each channel a 1/f^alpha
    power spectrum with unit per-pixel variance, and color / mean mix and shift the channels (see shape_noise)."""
    z = torch.randn((n, *shape), generator=generator, device=generator.device).to(device)
    return shape_noise(z, alpha, color, mean)


# ----------------------------------------------------------------------------------------------------------------------
# Distributed (torchrun): one process per device. Every helper is a no-op in a single process, so a script that uses
# them runs the same code with and without torchrun.
# ----------------------------------------------------------------------------------------------------------------------
def init_distributed(device):
    """Under torchrun (WORLD_SIZE > 1) join the process group, nccl on GPUs and gloo on CPUs, and return this rank's
    device (cuda:LOCAL_RANK on GPUs); in a single process return `device` as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return f"cuda:{torch.cuda.current_device()}" if cuda else device


def dist_info():
    """(rank, world size): (0, 1) unless torch.distributed is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t):
    """The sum of t over all ranks (t itself in a single process). NCCL reduces GPU tensors only, so a CPU tensor
    travels through the current GPU and comes back."""
    if dist_info()[1] == 1:
        return t
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    out = t.to(dev, copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def batch_var_mean(x, dims):
    """Biased variance and mean of x over `dims` (kept as size-1 dims), over the global batch under torchrun: what one
    process would compute on all ranks' samples together, up to float rounding. Across ranks: one all-reduce for the
    sums and counts, one for the centred squares (more exact than E[x^2] - E[x]^2)."""
    if dist_info()[1] == 1:
        return torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    count = all_reduce_sum(torch.tensor(float(math.prod(x.shape[d] for d in dims)), device=x.device))
    mean = all_reduce_sum(x.sum(dims, keepdim=True)) / count
    var = all_reduce_sum((x - mean).pow(2).sum(dims, keepdim=True)) / count
    return var, mean


def _global_batch_norm_train(m, x):
    """Training-mode BatchNorm m over the global batch: statistics from a differentiable all-reduce (so gradients flow
    as in one process), running buffers updated as BatchNorm updates them. Every rank holds an equal share."""
    dims, shape = (0, *range(2, x.ndim)), [1, -1] + [1] * (x.ndim - 2)
    xf = x.float()
    count = math.prod(x.shape[d] for d in dims) * dist_info()[1]
    mean = dist_nn.all_reduce(xf.sum(dims)) / count
    var = dist_nn.all_reduce((xf - mean.view(shape)).pow(2).sum(dims)) / count
    if m.track_running_stats:
        with torch.no_grad():
            m.num_batches_tracked += 1
            f = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
            m.running_mean.mul_(1 - f).add_(f * mean.detach())
            m.running_var.mul_(1 - f).add_(f * var.detach() * count / max(count - 1, 1))  # unbiased, as BatchNorm
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + m.eps)
    if m.affine:
        y = y * m.weight.view(shape) + m.bias.view(shape)
    return y.to(x.dtype)


@contextlib.contextmanager
def synced_batch_norm(model):
    """Under torchrun, inside this context the BatchNorm layers of `model` (in training mode) normalize with the
    statistics of the global batch, as SyncBatchNorm does, but on every backend (PyTorch's SyncBatchNorm needs a GPU):
    a BN student then trains as it would in one process. A no-op in a single process."""
    patched = []
    if dist_info()[1] > 1:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                m.forward = partial(_global_batch_norm_train, m)  # shadows the class's forward until deleted
                patched.append(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


def finish_distributed():
    """Leave the process group at the end of a run (nothing to do in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def my_slice(n_local):
    """This rank's part [rank * n, (rank + 1) * n) of a global batch of world * n samples."""
    rank, _ = dist_info()
    return slice(rank * n_local, (rank + 1) * n_local)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation (README: How it works): two protocols, neither touches the model's state
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, x_uint8, mean, std, batch_size=256, bn_stats="running", device="cpu", amp=False):
    """The classes `model` predicts for x_uint8, in batches of batch_size.
    bn_stats='running': eval mode, each BatchNorm uses its running statistics (what a deployed model does).
    bn_stats='batch': each BatchNorm uses the statistics of the current test batch (the prior work's protocol; the
    result depends on batch_size). Done on a copy, so the model's running statistics are never touched."""
    if bn_stats not in ("running", "batch"):
        raise ValueError(f"bn_stats must be 'running' or 'batch', got {bn_stats!r}")
    net = model
    if bn_stats == "batch":
        net = copy.deepcopy(model).eval()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    was_training = net.training
    if bn_stats == "running":
        net.eval()
    preds = []
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        for i in range(0, len(x_uint8), batch_size):
            preds.append(net(normalize(x_uint8[i:i + batch_size].to(device), mean, std)).argmax(1))
    if bn_stats == "running":
        net.train(was_training)
    return torch.cat(preds)


def evaluate(model, x_uint8, y, mean, std, batch_size=256, bn_stats="running", device="cpu", amp=False):
    """Top-1 accuracy on (x_uint8, y), with either protocol of `predict` (running or test-batch statistics)."""
    return (predict(model, x_uint8, mean, std, batch_size, bn_stats, device, amp) == y.to(device)).sum().item() / len(y)


def label_stats(counts):
    """Summary of a label histogram: normalized entropy H/log K, largest class share, classes never seen."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item() + 0.0  # + 0.0: a one-class histogram gives 0.0, not -0.0
    return {"entropy": entropy / math.log(len(p)), "max_share": p.max().item(),
            "missing": int((counts == 0).sum().item())}


# ----------------------------------------------------------------------------------------------------------------------
# Run folders, logging, provenance
# ----------------------------------------------------------------------------------------------------------------------
def make_run_dir(out_dir, dataset, script, teacher, seed):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) / f"{dataset}__{script}__{teacher}__s{seed}__{stamp}"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for suffix in range(10_000):  # two runs started in the same second must not share a folder
        try:
            run_dir.mkdir()  # atomic: of two processes racing for one name, exactly one gets it
            return run_dir
        except FileExistsError:
            run_dir = Path(out_dir) / f"{dataset}__{script}__{teacher}__s{seed}__{stamp}-{suffix + 1}"
    raise InputError(f"{out_dir}: 10,000 run folders named {run_dir.name} already; use another --out-dir")


RENAMED = {"diag_samples": "probe_samples"}  # old args.json key: its name now


def given_flags(parser, argv=None):
    """The options on the command line argv (sys.argv[1:] when None), whatever their values, defaults included."""
    unset = object()  # argparse fills in a default only where the namespace has no value yet
    seen = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, seen)
    return ["/".join(a.option_strings) for a in parser._actions  # --bf16/--no-bf16: either was given
            if a.option_strings and a.dest != "help" and getattr(seen, a.dest) is not unset]


def resume_args(parser, args, script, extra_keys=(), before=None, argv=None):
    """The settings of the run folder args.resume, which `script` continues. Exits with one line (parser.error) when the
    folder is missing or not a run of this script, when other flags were given beside --resume (on argv, at any value):
    a resumed run keeps the settings it started with, so such flags could only be ignored, or when the run's device is
    not on this machine (its noise generator's state lives there). The one setting that follows the machine: a bf16 run
    continues in fp32 where bf16 would be emulated. Settings that the run's args.json predates get their defaults, or
    the value in `before` (what the script did before the setting existed); extra_keys: what the script adds to
    args.json beside its flags."""
    given = [f for f in given_flags(parser, argv) if f != "--resume"]
    if given:
        parser.error(f"--resume continues a run with the settings in its args.json; drop {' '.join(given)} "
                     f"(start a new run to change them)")
    run = Path(args.resume)
    if not run.is_dir():
        parser.error(f"--resume {run}: no such run folder")
    if not (run / "args.json").is_file():
        parser.error(f"--resume {run}: not a run folder (it has no args.json)")
    saved = json.loads((run / "args.json").read_text())
    saved = {RENAMED.get(k, k): v for k, v in saved.items()}  # runs started before a flag was renamed
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    foreign = set(saved) - set(defaults) - set(extra_keys)
    if foreign:
        parser.error(f"--resume {run}: a run of another script (its settings {sorted(foreign)[:3]} "
                     f"are not {script}.py's)")
    resumed = argparse.Namespace(**{**defaults, **(before or {}), **saved, "resume": str(run)})
    if device_problem(resumed.device):
        parser.error(f"--resume {run}: the run was on {resumed.device}, which this machine does not have; it "
                     f"continues only there (its noise generator's state is a {resumed.device} one)")
    if getattr(resumed, "bf16", False) and not bf16_supported(resumed.device):  # the run moved to another machine
        print(f"note: {run} trained with bf16 autocast, which this machine lacks native support for (emulated, it is "
              f"many times slower than fp32): it continues in fp32")
        resumed.bf16 = False
    return resumed


def check_same_teacher(ckpt, tinfo, run_dir):
    """A resumed run must continue with the teacher it started with: its checkpoint records the teacher's sha256
    (checkpoints made before that record pass)."""
    started = ckpt.get("teacher_sha256", tinfo["sha256"])
    if started != tinfo["sha256"]:
        raise InputError(f"{tinfo['path']} is not the teacher {run_dir} started with (sha256 {tinfo['sha256'][:12]}... "
                         f"vs {started[:12]}...): put that file back or start a new run")


def device_problem(device):
    """Why `device` cannot be used on this machine (one line), or None."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device {device}: unknown device (use cpu, cuda or cuda:N)"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: this machine has no CUDA GPU (use --device cpu)"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"--device {device}: there are {torch.cuda.device_count()} GPUs"
    if dev.type not in ("cpu", "cuda"):
        return f"--device {device}: only cpu and cuda are supported"
    return None


def check_device(parser, device):
    """--device must name a device this machine has: one line instead of a CUDA traceback."""
    problem = device_problem(device)
    if problem:
        parser.error(problem)


@contextlib.contextmanager
def stop_message(run_dir, step_fn):
    """Ctrl-C (SIGINT) inside: say at which step the run stopped, where its last checkpoint is and how to resume,
    then exit with status 130, without a traceback. step_fn() gives the step reached; run_dir None: no run folder
    yet (a torchrun rank > 0 never has one)."""
    try:
        yield
    except KeyboardInterrupt:
        ckpt = Path(run_dir) / "checkpoint.pt" if run_dir else None
        last = load_checkpoint(ckpt)["step"] if ckpt and ckpt.is_file() else None
        where = f"last checkpoint at step {last}: resume with --resume {run_dir}" if last is not None else \
            "no checkpoint yet: start it again"
        print(f"\nstopped at step {step_fn()}, {where}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


@contextlib.contextmanager
def stop_after_step(enabled=True):
    """Inside, Ctrl-C or SIGTERM does not cut a training step in half: the first one only sets `stop.requested`, which
    the loop reads once a step is done, to save a checkpoint of it and stop (KeyboardInterrupt); no step is lost. A
    second one stops at once. enabled False (a torchrun rank: the ranks would have to agree on the step), or outside
    the main thread (where no signal can be caught): every signal stops at once, as outside."""
    stop = argparse.Namespace(requested=False)
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping once this step is done and saved (again: stop at once)",
              file=sys.stderr, flush=True)
    before = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


class MetricsLog:
    """metrics.jsonl, one JSON object per line with a 'step' key. On resume, lines written after the checkpoint's step
    are dropped, so that the log matches the state the run continues from."""

    def __init__(self, path, resume_step=None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            rows = self.read(self.path)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= resume_step))
        elif resume_step is None:
            self.path.write_text("")

    def log(self, step, **metrics):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    @staticmethod
    def read(path):
        """The rows of a metrics.jsonl; a torn last line (the disk filled up, the process died mid-write) is dropped."""
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        rows = []
        for i, line in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:  # only the last line can be torn by an interrupted write
                    raise InputError(f"{path}: line {i + 1} is not JSON") from None
        return rows


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device):
    """The device a process computes on, as results record it: 'cpu (<model>, <n> threads)' or
    'cuda (<GPU>, <n> threads)' ('1 thread')."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():  # a record made on another machine
        return f"{device} (not on this machine)"
    dev = torch.cuda.get_device_name(0) if str(device).startswith("cuda") else cpu_name()
    n = torch.get_num_threads()
    return f"{device} ({dev}, {n} thread{'s' if n != 1 else ''})"


def provenance(device, wall_time_s, resumed_at=(), process_time_s=None):
    """Where and how a result was made. wall_time_s: the run's wall time over all its processes (None if unknown: a
    run resumed from a checkpoint that did not record it); resumed_at: the steps at which it was resumed;
    process_time_s: the last process's share."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    return {"git_commit": commit, "git_dirty": dirty, "torch": torch.__version__, "python": platform.python_version(),
            "device": device_name(device),
            "wall_time_s": None if wall_time_s is None else round(wall_time_s, 1),
            "resumed_at_steps": list(resumed_at),
            "process_wall_time_s": None if process_time_s is None and wall_time_s is None else
            round(wall_time_s if process_time_s is None else process_time_s, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def portable(obj):
    """obj with every absolute path (a string) made machine-independent: relative to the repository when inside it,
    else the file or folder name alone (a teacher's checksum is recorded beside its name). Results that are committed
    then say nothing about one machine's layout."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        path = Path(os.path.normpath(obj))
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    return obj


def write_json(path, obj, keep_paths=False):
    """Write obj as JSON; paths made portable unless keep_paths (a run's own args.json, which --resume reads)."""
    Path(path).write_text(json.dumps(obj if keep_paths else portable(obj), indent=2, sort_keys=True) + "\n")


def bf16_supported(device):
    """Whether bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with native bf16 (AVX-512 bf16 / AMX)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"
