"""The training loop shared by RMU, Adaptive RMU and RNA: AdamW over the few trained weights, one pass."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from unlearn.corpora import BatchStream
from unlearn.engine import Engine
from unlearn.errors import UnlearnError
from unlearn.methods import MethodSpec, adaptive_coefficient, mean_token_norm, noisy_retain_target, rmu_loss


@dataclass
class TopicStreams:
    name: str
    forget: BatchStream
    retain: BatchStream


def make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # The old transformers.AdamW defaults the reference ran with (eps 1e-6, no weight decay), not torch's.
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)


def steering_coefficients(engine: Engine, method: MethodSpec, topics: list[TopicStreams]) -> tuple[list[float], list[float | None]]:
    """The coefficient each topic's target uses, and (Adaptive RMU) the frozen norm N_topic it came from."""
    if not method.adaptive:
        return list(method.steering_coeffs), [None] * len(topics)
    norms = []
    for topic in topics:
        h_frozen = engine.frozen(engine.prepare(topic.forget.batch(0)))  # the topic's first forget batch
        norms.append(mean_token_norm(h_frozen))
    return [method.beta * n for n in norms], norms


def train(
    engine: Engine,
    method: MethodSpec,
    topics: list[TopicStreams],
    control_vectors: list[torch.Tensor],
    coefficients: list[float],
    params: list[torch.nn.Parameter],
    *,
    steps: int,
    lr: float,
    seed: int,
    mask_padding: bool = False,
    on_step: Callable[[dict], None] = lambda record: None,
    progress: bool = True,
) -> None:
    """Run `steps` optimizer steps; topics alternate (`topic = step % n_topics`, `batch = step // n_topics`).

    Raises UnlearnError on a non-finite loss, naming the step; KeyboardInterrupt passes through (the caller
    records the run as interrupted).
    """
    optimizer = make_optimizer(params, lr)
    device = control_vectors[0].device
    noise = torch.Generator(device=device).manual_seed(seed + 1)  # RNA's noise, apart from the vectors' draw
    bar = tqdm(range(steps), desc="unlearning", disable=not progress, dynamic_ncols=True)
    for step in bar:
        started = time.perf_counter()
        topic_index, batch_index = step % len(topics), step // len(topics)
        topic = topics[topic_index]
        forget_batch, retain_batch = topic.forget.batch(batch_index), topic.retain.batch(batch_index)

        forget_input, retain_input = engine.prepare(forget_batch), engine.prepare(retain_batch)
        h_forget = engine.updated(forget_input)
        h_retain = engine.updated(retain_input)
        retain_target = engine.frozen(retain_input)
        if method.nu is not None:
            retain_target = noisy_retain_target(retain_target, method.nu, noise)

        parts = rmu_loss(
            h_forget, h_retain, retain_target,
            control_vectors[topic_index].to(h_forget.device), coefficients[topic_index], method.alphas[topic_index],
            forget_mask=forget_batch["attention_mask"].to(device) if mask_padding else None,
            retain_mask=retain_batch["attention_mask"].to(device) if mask_padding else None,
        )
        loss = parts.loss.item()
        if not math.isfinite(loss):
            raise UnlearnError(
                f"the loss became {loss} at step {step} (topic '{topic.name}'): use dtype=bf16 or dtype=fp32 "
                "instead of fp16, or lower the steering coefficient or lr"
            )
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        optimizer.step()

        record = {
            "step": step,
            "topic": topic.name,
            "loss": loss,
            "forget_loss": parts.forget_loss.item(),
            "retain_loss": parts.retain_loss.item(),
            "step_time_s": time.perf_counter() - started,
        }
        if method.adaptive:
            record["adaptive_coeff"] = coefficients[topic_index]
        on_step(record)
        bar.set_postfix(topic=topic.name, forget=f"{record['forget_loss']:.4g}", retain=f"{record['retain_loss']:.4g}")
