"""Time per image of each pretraining task against an nnU-Net training iteration, in the same run.

Baseline: nnU-Net's own training step for the same network (deep supervision on, Dice+CE with
its deep-supervision wrapper, SGD with Nesterov momentum, gradient clipping at 12, AMP on CUDA),
on the same patch and batch size. Tasks: the package's loop (``pretraining.loop.train``) with each
task's on-device batch transform, head, loss and metric (jigsaw, rec, seg with 21 classes, cls
with 1000 classes). All get the same ready-made random batch in host memory, so data loading from
disk is excluded; the network is the U-Net nnU-Net plans for a 2D patch of that size (5 stages up
to 512 features at 64², 8 stages at 512²).

One timed call of a candidate is ``--iterations`` training iterations (a task's call is one
``train(...)``, which also builds its AdamW optimiser, as a real run does once). The baseline and
the four tasks alternate in every round with the order rotated, ``--repeats`` rounds after one
untimed warm-up round (see benchmarks/_bench.py); CPU time is the whole process (all torch
threads: ``--threads``, default 1), wall time includes a CUDA synchronisation.

    python benchmarks/pretrain_throughput.py                      # 64², batch 4, 10 it., 7 rounds
    python benchmarks/pretrain_throughput.py --quick              # 32², batch 2, 2 it., 5 rounds
    python benchmarks/pretrain_throughput.py --patch 512 --batch 12 --device cuda
"""
from __future__ import annotations

import itertools
import json
import math
import sys

from _bench import interleaved, machine, machine_report, pin_threads, training_arguments

SOURCES = ("jigsaw", "rec", "seg", "cls")
BASELINE = "nnunet_train_step"


def planned_unet(patch: int, deep_supervision: bool, num_classes: int = 2):
    """The PlainConvUNet nnU-Net's default planner gives a square 2D patch (features capped at 512)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn
    n = min(8, int(math.log2(patch)) - 1)
    return PlainConvUNet(1, n, [min(32 * 2 ** i, 512) for i in range(n)], nn.Conv2d, 3,
                         [1] + [2] * (n - 1), [2] * n, num_classes, [2] * (n - 1), conv_bias=True,
                         norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                         deep_supervision=deep_supervision)


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def example_batch(patch: int, batch: int, device) -> dict:
    """The one random batch every candidate trains on (image, 21-class mask, 1000-class label)."""
    import torch
    g = torch.Generator().manual_seed(0)
    example = {"image": torch.randn(batch, 1, patch, patch, generator=g),
               "mask": torch.randint(0, 21, (batch, patch, patch), generator=g),
               "label": torch.randint(0, 1000, (batch,), generator=g)}
    if device.type == "cuda":
        example = {k: v.pin_memory() for k, v in example.items()}
    return example


def nnunet_step(example: dict, patch: int, iterations: int, device):
    """A callable running ``iterations`` of nnUNetTrainer.train_step (its loss, optimiser,
    clipping and AMP) on ``example``'s image with 0/1 targets at every deep-supervision scale."""
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    net = planned_unet(patch, True).to(device)
    n_out = len(net.decoder.seg_layers)
    weights = torch.tensor([1 / 2 ** i for i in range(n_out)])
    weights[-1] = 0
    loss_fn = DeepSupervisionWrapper(DC_and_CE_loss(
        {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
        weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss), (weights / weights.sum()).tolist())
    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    x = example["image"]
    binary = (example["mask"] > 10).float()[:, None]  # 0/1 like nnU-Net's 2-class target
    targets = [binary[..., ::2 ** i, ::2 ** i].contiguous() for i in range(n_out)]
    if cuda:
        targets = [t.pin_memory() for t in targets]

    def step() -> None:
        data = x.to(device, non_blocking=True)
        tgt = [t.to(device, non_blocking=True) for t in targets]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=cuda):
            loss = loss_fn(net(data), tgt)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        scaler.step(opt)
        scaler.update()

    def run() -> None:
        for _ in range(iterations):
            step()
        _sync(device)
    return run


def task_step(source: str, example: dict, patch: int, iterations: int, device):
    """A callable running ``iterations`` of the package's pretraining loop for ``source``."""
    from nnunet_xfer.pretraining.loop import train
    from nnunet_xfer.pretraining.tasks import ClsTask, JigsawTask, RecTask, SegTask
    net = planned_unet(patch, False).to(device)
    p = (patch, patch)
    task = {"jigsaw": lambda: JigsawTask(net, 1, p, device, permutations=100),
            "rec": lambda: RecTask(net, 1, p, device),
            "seg": lambda: SegTask(net, 1, p, device, num_classes=21),
            "cls": lambda: ClsTask(net, 1, p, device, num_classes=1000)}[source]()
    batches = itertools.repeat(example)

    def run() -> None:
        train(net, task, batches, iterations=iterations, lr=1e-3, device=device, progress=False)
        _sync(device)
    return run


def main() -> None:
    a = training_arguments(__doc__.splitlines()[0], quick=dict(patch=32, batch=2, iterations=2, repeats=5),
                           full=dict(patch=64, batch=4, iterations=10, repeats=7), device=None)

    pin_threads(a.threads)
    info = machine()
    import torch
    torch.set_num_threads(a.threads)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    example = example_batch(a.patch, a.batch, device)
    candidates = {BASELINE: nnunet_step(example, a.patch, a.iterations, device)}
    for source in SOURCES:
        candidates[source] = task_step(source, example, a.patch, a.iterations, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(machine_report(info))
    images = a.iterations * a.batch
    print(f"{a.patch}² patch, batch {a.batch}, {a.iterations} iterations per call "
          f"({images} images), device: {name}")
    res = interleaved(candidates, repeats=a.repeats)
    print()
    print(res.table(baseline=BASELINE, per=images, unit="ms per image"))
    print("\nimages/s per CPU second and per wall second (best and median call), and speed "
          "relative to the nnU-Net iteration (> 1: faster; on a loaded machine read CPU):\n")
    print("| candidate | images/CPU-s, best | images/wall-s, best | images/wall-s, median "
          "| × nnU-Net, CPU min | × nnU-Net, CPU median | × nnU-Net, wall median |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = res.summary(BASELINE, images)
    rows = {}
    for cand in candidates:
        s = res.summary(cand, images)
        r = rows[cand] = {
            "images_per_cpu_s_best": 1 / s["cpu_min"],
            "images_per_wall_s_best": 1 / s["wall_min"],
            "images_per_wall_s_median": 1 / s["wall_median"],
            **{f"speed_ratio_{k}": base[k] / s[k] for k in ("cpu_min", "cpu_median", "wall_median")},
            **{f"s_per_image_{k}": v for k, v in s.items()}}
        print(f"| {cand} | {r['images_per_cpu_s_best']:.1f} | {r['images_per_wall_s_best']:.1f} | "
              f"{r['images_per_wall_s_median']:.1f} | {r['speed_ratio_cpu_min']:.2f} | "
              f"{r['speed_ratio_cpu_median']:.2f} | {r['speed_ratio_wall_median']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "patch": a.patch, "batch": a.batch,
                       "iterations": a.iterations, "repeats": a.repeats, "device": name,
                       "candidates": rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
