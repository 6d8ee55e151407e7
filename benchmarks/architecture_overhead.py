"""Cost of the package's networks (torchvision backbones, ViT UNETR) relative to nnU-Net's default 2D network.

Time per training iteration (forward + backward + SGD step, cross-entropy on random labels, the
same batch for every network) and peak memory of each network at the same patch and batch size,
reported as ratios to nnU-Net's PlainConvUNet measured in the same run.

Time: all networks are built in this process and alternate in every round with the order rotated,
``--repeats`` rounds after one untimed warm-up round (see benchmarks/_bench.py); one timed call is
``--iterations`` training steps; CPU time is the whole process (all torch threads: ``--threads``,
default 1), wall time includes a CUDA synchronisation. Peak memory is measured once per network,
each in its own fresh process: ``torch.cuda.max_memory_allocated`` on CUDA, on CPU the growth of the
process's peak RSS after the imports (parameters, gradients, optimizer state, activations; the
kernel's peak is reset after the imports through ``/proc/self/clear_refs`` where Linux allows it).

    python benchmarks/architecture_overhead.py                  # 128², batch 2, 3 it., 7 rounds
    python benchmarks/architecture_overhead.py --quick          # 64², batch 1, 1 it., 5 rounds
    python benchmarks/architecture_overhead.py --plans $nnUNet_preprocessed/D/nnUNetPlans.json

Without ``--plans`` the baseline is the PlainConvUNet nnU-Net plans for a 2D patch of that size:
32·2^s features capped at 512, poolings until the feature map is 4 px, two conv–InstanceNorm–
LeakyReLU per stage.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys

from _bench import interleaved, machine, machine_report, pin_threads, training_arguments

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


def training_step(spec: tuple, patch: int, batch: int, device: str):
    """(network, one training step on a fixed random batch) for a plans-style network spec."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    torch.manual_seed(0)
    cls, kwargs, req = spec
    net = get_network_from_plans(cls, kwargs, req, 1, 2, deep_supervision=False).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, patch, patch, generator=g).to(device)
    y = torch.randint(0, 2, (batch, patch, patch), generator=g).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, step


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Reset the kernel's peak RSS to the current RSS (Linux ``clear_refs`` 5); returns the
    baseline in KiB to subtract: the current RSS, or the peak so far where a reset is impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        rss = _proc_status_kib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_memory(spec: tuple, patch: int, batch: int, iterations: int, device: str,
                 threads: int, queue) -> None:
    """Peak memory of a few training steps of one network, in a fresh process (MiB)."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: F401
    torch.set_num_threads(threads)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _reset_peak_rss()
    _, step = training_step(spec, patch, batch, device)
    for _ in range(1 + iterations):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:  # parameters, gradients, optimizer state, activations: peak RSS growth after imports
        hwm = _proc_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = (hwm - rss_before) / 1024
    queue.put(peak)


def peak_memory(spec: tuple, patch: int, batch: int, iterations: int, device: str,
                threads: int) -> float:
    """:func:`_peak_memory` in a spawned process (so that peak RSS belongs to one network)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_memory, args=(spec, patch, batch, iterations, device, threads, q))
    p.start()
    peak = q.get()
    p.join()
    return peak


def main() -> None:
    def extra(ap) -> None:
        ap.add_argument("--plans", default=None, help="take the baseline network from this plans file")
        ap.add_argument("--archs", default="fcn_resnet50,unet_resnet34,unetr_vit_b16")
    a = training_arguments(__doc__.splitlines()[0], quick=dict(patch=64, batch=1, iterations=1, repeats=5),
                           full=dict(patch=128, batch=2, iterations=3, repeats=7), device="cpu",
                           extra=extra)

    pin_threads(a.threads)
    info = machine()
    import torch
    torch.set_num_threads(a.threads)
    from nnunet_xfer.architectures.registry import ARCHITECTURES
    if a.plans:
        with open(a.plans) as f:
            arch = json.load(f)["configurations"]["2d"]["architecture"]
        baseline = (arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"])
    else:
        baseline = nnunet_default_architecture(a.patch)
    specs = {BASELINE: baseline}
    for name in a.archs.split(","):
        a_ = ARCHITECTURES[name]  # the ViT takes the patch as img_size, as its plans do
        specs[name] = (a_.class_name, a_.plans_kwargs([a.patch, a.patch]), [])

    print(machine_report(info))
    print(f"patch {a.patch}², batch {a.batch}, {a.iterations} training steps per call, "
          f"device {a.device}, {torch.get_num_threads()} torch thread(s)")
    params, candidates = {}, {}
    for name, spec in specs.items():
        net, step = training_step(spec, a.patch, a.batch, a.device)
        params[name] = sum(p.numel() for p in net.parameters()) / 1e6

        def call(step=step) -> None:
            for _ in range(a.iterations):
                step()
            if a.device == "cuda":
                torch.cuda.synchronize()
        candidates[name] = call
    res = interleaved(candidates, repeats=a.repeats)
    print()
    print(res.table(baseline=BASELINE, per=a.iterations, unit="ms per training step"))

    mem = "peak CUDA MiB" if a.device == "cuda" else "peak RSS growth MiB"
    peaks = {name: peak_memory(spec, a.patch, a.batch, a.iterations, a.device, a.threads)
             for name, spec in specs.items()}
    print(f"\nparameters and {mem} (one fresh process per network, {1 + a.iterations} steps):\n")
    print(f"| network | params M | {mem} | × {BASELINE} |\n| --- | ---: | ---: | ---: |")
    rows = {}
    for name in specs:
        rows[name] = {"params_m": params[name], "peak_mib": peaks[name],
                      "memory_ratio": peaks[name] / peaks[BASELINE] if peaks[BASELINE] > 0
                      else float("nan"),
                      **{f"s_per_step_{k}": v for k, v in res.summary(name, a.iterations).items()}}
        print(f"| {name} | {params[name]:.1f} | {peaks[name]:.0f} | "
              f"{rows[name]['memory_ratio']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "patch": a.patch, "batch": a.batch, "device": a.device,
                       "iterations": a.iterations, "repeats": a.repeats, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    sys.exit(main())
