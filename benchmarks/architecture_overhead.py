"""Cost of the torchvision-backbone networks relative to nnU-Net's default 2D network.

Seconds per training iteration (forward + backward + SGD step, cross-entropy on random labels) and
peak memory of each network at the same patch and batch size, reported as ratios to nnU-Net's
PlainConvUNet measured in the same run. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA;
on CPU the growth of the process's peak RSS after the imports (parameters, optimizer state,
activations), each network in its own process.

    .venv/bin/python benchmarks/architecture_overhead.py --patch 128 --batch 2 --iterations 3
    .venv/bin/python benchmarks/architecture_overhead.py --plans $nnUNet_preprocessed/D/nnUNetPlans.json

Without ``--plans`` the baseline is the PlainConvUNet nnU-Net plans for a 2D patch of that size:
32·2^s features capped at 512, poolings until the feature map is 4 px, two conv–InstanceNorm–
LeakyReLU per stage.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

BASELINE = "nnunet_plainconvunet"


def nnunet_default_architecture(patch: int) -> tuple[str, dict, list[str]]:
    """PlainConvUNet arguments as nnU-Net's planner writes them for a square 2D patch."""
    n_pool = 0
    while patch // 2 ** (n_pool + 1) >= 4 and n_pool < 7:
        n_pool += 1
    n = n_pool + 1
    kwargs = {"n_stages": n, "features_per_stage": [min(32 * 2 ** i, 512) for i in range(n)],
              "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * n,
              "strides": [[1, 1]] + [[2, 2]] * n_pool, "n_conv_per_stage": [2] * n,
              "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
              "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    return ("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs,
            ["conv_op", "norm_op", "dropout_op", "nonlin"])


def _measure(name: str, spec: tuple, patch: int, batch: int, iterations: int, device: str,
             queue) -> None:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    torch.manual_seed(0)
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cls, kwargs, req = spec
    net = get_network_from_plans(cls, kwargs, req, 1, 2, deep_supervision=False).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, patch, patch, device=device)
    y = torch.randint(0, 2, (batch, patch, patch), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()  # warm-up (allocations, cuDNN autotune)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(iterations):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / iterations
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:  # parameters, optimizer state, activations: peak RSS growth since the imports
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_imports) / 1024
    queue.put({"network": name, "s_per_iter": seconds, "peak_mib": peak,
               "params_m": sum(p.numel() for p in net.parameters()) / 1e6})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats; fastest kept")
    ap.add_argument("--plans", default=None, help="take the baseline network from this plans file")
    ap.add_argument("--archs", default="fcn_resnet50,unet_resnet34")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()

    from nnunet_xfer.architectures.registry import ARCHITECTURES
    if a.plans:
        arch = json.load(open(a.plans))["configurations"]["2d"]["architecture"]
        baseline = (arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"])
    else:
        baseline = nnunet_default_architecture(a.patch)
    specs = {BASELINE: baseline}
    for name in a.archs.split(","):
        specs[name] = (ARCHITECTURES[name].class_name, ARCHITECTURES[name].kwargs, [])

    ctx = mp.get_context("spawn")  # one fresh process per network: peak RSS is per process
    best: dict[str, dict] = {}
    for _ in range(a.rounds):  # interleaved rounds, fastest kept: robust to a shared, busy CPU
        for name, spec in specs.items():
            q = ctx.Queue()
            p = ctx.Process(target=_measure, args=(name, spec, a.patch, a.batch, a.iterations,
                                                    a.device, q))
            p.start()
            r = q.get()
            p.join()
            if name not in best or r["s_per_iter"] < best[name]["s_per_iter"]:
                best[name] = r
    rows = list(best.values())
    base = rows[0]
    mem = "peak CUDA MiB" if a.device == "cuda" else "peak RSS MiB"
    print(f"patch {a.patch}², batch {a.batch}, {a.iterations} iterations × best of {a.rounds} "
          f"rounds, device {a.device}")
    print(f"{'network':24s} {'params M':>9s} {'s/iter':>8s} {'× time':>7s} {mem:>13s} {'× mem':>6s}")
    for r in rows:
        r["time_ratio"] = r["s_per_iter"] / base["s_per_iter"]
        r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
        print(f"{r['network']:24s} {r['params_m']:9.1f} {r['s_per_iter']:8.3f} "
              f"{r['time_ratio']:7.2f} {r['peak_mib']:13.0f} {r['memory_ratio']:6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"patch": a.patch, "batch": a.batch, "device": a.device,
                       "rounds": a.rounds, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
