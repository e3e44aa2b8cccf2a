"""The training loop shared by every method: AdamW (unlearn.optim) over the few trained weights, one pass, topics
alternating.

The loop knows no method: it asks the method for the loss parts of a topic's forget and retain batches.
"""

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
from unlearn.methods import Method
from unlearn.optim import make_optimizer


@dataclass
class TopicStreams:
    name: str
    forget: BatchStream
    retain: BatchStream


def train(
    engine: Engine,
    method: Method,
    topics: list[TopicStreams],
    params: list[torch.nn.Parameter],
    *,
    steps: int,
    lr: float,
    optimizer: str,
    on_step: Callable[[dict], None] = lambda record: None,
    progress: bool = True,
) -> None:
    """Run `steps` steps of the optimizer named `optimizer` (unlearn.optim.OPTIMIZERS); topics alternate
    (`topic = step % n_topics`, `batch = step // n_topics`).

    `method.setup` has run. Raises UnlearnError on a non-finite loss, naming the step; KeyboardInterrupt passes
    through (the caller records the run as interrupted).
    """
    updater = make_optimizer(optimizer, params, lr)
    bar = tqdm(range(steps), desc="unlearning", disable=not progress, dynamic_ncols=True)
    for step in bar:
        started = time.perf_counter()
        topic_index, batch_index = step % len(topics), step // len(topics)
        topic = topics[topic_index]
        parts = method.loss(engine, topic_index, topic.forget.batch(batch_index), topic.retain.batch(batch_index))
        loss = parts.loss.item()
        if not math.isfinite(loss):
            fp16 = "use dtype=bf16 or dtype=fp32 instead of fp16, or " if params[0].dtype == torch.float16 else ""
            raise UnlearnError(f"the loss became {loss} at step {step} (topic '{topic.name}'): {fp16}lower lr or "
                               "the method's coefficients (method.alpha, and method.steering_coeff or method.beta)")
        updater.zero_grad(set_to_none=True)
        parts.loss.backward()
        updater.step()

        record = {
            "step": step,
            "topic": topic.name,
            "loss": loss,
            "forget_loss": parts.forget_loss.item(),
            "retain_loss": parts.retain_loss.item(),
            "step_time_s": time.perf_counter() - started,
            **parts.logs,
        }
        on_step(record)
        bar.set_postfix(topic=topic.name, forget=f"{record['forget_loss']:.4g}", retain=f"{record['retain_loss']:.4g}")
