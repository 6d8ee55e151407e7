"""Images/s of each pretraining task against an nnU-Net training iteration, as ratios.

Baseline: nnU-Net's own training step for the same network (deep supervision on, Dice+CE with
its deep-supervision wrapper, SGD with Nesterov momentum, gradient clipping at 12, AMP on CUDA),
on the same patch and batch size. Tasks: the package's loop (``pretraining.loop.train``) with each
task's on-device batch transform, head, loss and metric. Both get ready-made random batches in
host memory, so data loading from disk is excluded from both; the network is the U-Net nnU-Net
plans for a 2D patch of that size (5 stages up to 512 features at 64², 8 stages at 512²).

    .venv/bin/python benchmarks/pretrain_throughput.py --patch 64 --batch 4 --iterations 20
    .venv/bin/python benchmarks/pretrain_throughput.py --patch 512 --batch 12 --device cuda
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch
from torch import nn


def planned_unet(patch: int, deep_supervision: bool, num_classes: int = 2) -> nn.Module:
    """The PlainConvUNet nnU-Net's default planner gives a square 2D patch (features capped at 512)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    n = min(8, int(math.log2(patch)) - 1)
    return PlainConvUNet(1, n, [min(32 * 2 ** i, 512) for i in range(n)], nn.Conv2d, 3,
                         [1] + [2] * (n - 1), [2] * n, num_classes, [2] * (n - 1), conv_bias=True,
                         norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                         deep_supervision=deep_supervision)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def nnunet_images_per_second(patch, batch, iterations, device) -> float:
    """nnUNetTrainer.train_step on random data (its loss, optimiser, clipping and AMP)."""
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
    x = torch.randn(batch, 1, patch, patch)
    targets = [torch.randint(0, 2, (batch, 1, patch // 2 ** i, patch // 2 ** i)).float()
               for i in range(n_out)]

    def step():
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

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return iterations * batch / (time.perf_counter() - t0)


def task_images_per_second(source, patch, batch, iterations, device) -> float:
    from nnunet_xfer.pretraining.loop import train
    from nnunet_xfer.pretraining.tasks import ClsTask, JigsawTask, RecTask, SegTask
    net = planned_unet(patch, False).to(device)
    p = (patch, patch)
    task = {"jigsaw": lambda: JigsawTask(net, 1, p, device, permutations=100),
            "rec": lambda: RecTask(net, 1, p, device),
            "seg": lambda: SegTask(net, 1, p, device, num_classes=21),
            "cls": lambda: ClsTask(net, 1, p, device, num_classes=1000)}[source]()
    example = {"image": torch.randn(batch, 1, patch, patch),
               "mask": torch.randint(0, 21, (batch, patch, patch)),
               "label": torch.randint(0, 1000, (batch,))}
    if device.type == "cuda":
        example = {k: v.pin_memory() for k, v in example.items()}
    batches = itertools.repeat(example)
    train(net, task, batches, iterations=3, lr=1e-3, device=device, progress=False)
    _sync(device)
    t0 = time.perf_counter()
    train(net, task, batches, iterations=iterations, lr=1e-3, device=device, progress=False)
    _sync(device)
    return iterations * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    base = nnunet_images_per_second(a.patch, a.batch, a.iterations, device)
    rows = {"nnunet_train_step": base}
    for source in ("jigsaw", "rec", "seg", "cls"):
        rows[source] = task_images_per_second(source, a.patch, a.batch, a.iterations, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"{a.patch}² patch, batch {a.batch}, {a.iterations} iterations, {name}")
    print("| task | images/s | ratio vs nnU-Net iteration |\n|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} | {v / base:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"patch": a.patch, "batch": a.batch, "iterations": a.iterations,
                       "device": name, "images_per_second": rows,
                       "ratio": {k: v / base for k, v in rows.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
