"""The one training loop shared by all source tasks.

AdamW with nnU-Net's polynomial learning-rate decay, mixed precision on CUDA (as nnU-Net: float16
autocast + gradient scaling), gradient-norm clipping at 12 (nnU-Net's value), a training-state
checkpoint every ``checkpoint_every`` iterations and when stopped (``stop()`` turns true, e.g.
after SIGINT/SIGTERM, or Ctrl-C without a handler), and a tqdm bar with the loss and
images/s. The training state holds only tensors and primitive types so it loads with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch
from torch import nn
from tqdm import tqdm

from nnunet_xfer.pretraining.tasks import Task

CLIP_NORM = 12.0
WEIGHT_DECAY = 1e-4
#: The final loss/metric are averaged over this many last iterations (single batches are noisy).
FINAL_WINDOW = 50


class TrainingStopped(Exception):
    """Training stopped on request; the state of ``iteration`` has been saved."""

    def __init__(self, iteration: int):
        super().__init__(f"stopped at iteration {iteration}")
        self.iteration = iteration


class StateMismatch(Exception):
    """A training state that does not fit the network, head or optimiser (one-line message)."""


def poly_lr(initial: float, iteration: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's PolyLRScheduler value at ``iteration`` of ``total``."""
    return initial * (1 - min(iteration, total - 1) / total) ** exponent


def train(network: nn.Module, task: Task, batches: Iterator[dict], *, iterations: int, lr: float,
          device: torch.device, state: dict | None = None, checkpoint_every: int = 500,
          save_state: Callable[[dict], None] | None = None, progress: bool | None = None,
          stop: Callable[[], bool] | None = None) -> dict:
    """Train ``network`` + ``task.head`` up to ``iterations``; returns the final training state.

    ``state`` (from an earlier run) restores network, head, optimiser, scaler, iteration and the
    loss/metric history. ``save_state(state)`` is called every ``checkpoint_every`` iterations,
    at the end and when interrupted. ``stop()`` is asked before every iteration: when it is
    true, the state is saved and :class:`TrainingStopped` raised.
    """
    device = torch.device(device)
    network.to(device).train()
    task.to(device).train()
    params = list(network.parameters()) + list(task.head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    history = {"loss": [], "metric": []}
    start = 0
    if state is not None:
        try:
            network.load_state_dict(state["network"])
            task.head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start = int(state["iteration"])
            history = {"loss": [float(v) for v in state["loss"]],
                       "metric": [float(v) for v in state["metric"]]}
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise StateMismatch(f"{type(e).__name__}: {first}") from None
        if not 0 <= start <= iterations or len(history["loss"]) != start:
            raise StateMismatch(f"iteration {start} with {len(history['loss'])} loss values")

    def snapshot(iteration: int) -> dict:
        return {"network": network.state_dict(), "head": task.head.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if cuda else {},
                "iteration": iteration, "loss": torch.tensor(history["loss"], dtype=torch.float64),
                "metric": torch.tensor(history["metric"], dtype=torch.float64)}

    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else nullcontext
    bar = tqdm(range(start, iterations), initial=start, total=iterations,
               disable=None if progress is None else not progress,  # None: on a terminal only
               desc=f"pretrain {task.name}", unit="it", dynamic_ncols=True)
    it = start
    try:
        for it in bar:
            if stop is not None and stop():
                if save_state is not None:
                    save_state(snapshot(it))
                raise TrainingStopped(it)
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(lr, it, iterations)
            x, target = task.prepare(next(batches))
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                out = task(network, x)
            loss = task.loss(out, target)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                history["loss"].append(float(loss.detach()))
                history["metric"].append(task.metric(out.detach(), target))
            dt = time.perf_counter() - t0
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}",
                            **{task.metric_name: f"{history['metric'][-1]:.3f}"},
                            img_s=f"{x.shape[0] / dt:.1f}")
            if save_state is not None and (it + 1) % checkpoint_every == 0 and it + 1 < iterations:
                save_state(snapshot(it + 1))
    except KeyboardInterrupt:
        if save_state is not None:
            done = min(len(history["loss"]), len(history["metric"]))
            history = {k: v[:done] for k, v in history.items()}
            save_state(snapshot(done))
        raise
    finally:
        bar.close()
    final = snapshot(iterations)
    if save_state is not None:
        save_state(final)
    return final


def window_mean(values, n: int = FINAL_WINDOW) -> float:
    """Mean of the last ``n`` values (the reported final loss / metric)."""
    values = [float(v) for v in values][-n:]
    return sum(values) / len(values) if values else float("nan")
