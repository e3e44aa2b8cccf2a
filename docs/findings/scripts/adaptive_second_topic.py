"""Measure: Adaptive RMU's second-topic norm on the frozen model (unlearn) against the updated one (released code).

The Adaptive RMU authors' code sets topic 1's coefficient at step 1, from the model being trained, after one
optimizer step on topic 0; unlearn sets it from the frozen model (the paper's wording). This script runs that
first step on the embedded model and prints, per learning rate and optimizer, N_1 both ways and their relative
difference. Two topics: the demo forget corpus (topic 0) and its held-out forget documents (topic 1), the demo
retain corpus for both, the demo's layer 7 and alpha 100, beta 5.

    python docs/findings/scripts/adaptive_second_topic.py                      # smollm2-135m
    python docs/findings/scripts/adaptive_second_topic.py --model tiny://llama --layer 7
"""

from __future__ import annotations

import argparse

import torch

from unlearn.blocks import trained_parameters
from unlearn.corpora import BatchStream, CorpusSpec, read_texts
from unlearn.engine import FastEngine
from unlearn.methods import MethodSpec, build
from unlearn.methods.adaptive_rmu import mean_token_norm
from unlearn.models import load_model
from unlearn.train import TopicStreams, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--lrs", default="5e-5,5e-3")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, seed=0)
    params = trained_parameters(model, [args.layer - 2, args.layer - 1, args.layer], "mlp.down_proj")
    initial = {name: weight.detach().clone() for name, weight in params.items()}
    demo = "pkg://unlearn/data/demo/"

    def stream(file: str) -> BatchStream:
        return BatchStream(read_texts(CorpusSpec(demo + file)), tokenizer, batch_size=4, max_length=256)

    topics = [TopicStreams("forget", stream("forget.jsonl"), stream("retain.jsonl")),
              TopicStreams("heldout", stream("forget_heldout.jsonl"), stream("retain.jsonl"))]
    print(f"{'lr':>8} {'optimizer':>20} {'N_1 frozen':>12} {'N_1 updated':>12} {'difference':>11}")
    for lr in (float(value) for value in args.lrs.split(",")):
        for optimizer in ("transformers_adamw", "adamw"):
            with torch.no_grad():
                for name, weight in params.items():
                    weight.copy_(initial[name])
                    weight.requires_grad_(True)
            engine = FastEngine(model, args.layer, args.layer - 2)
            spec = MethodSpec("adaptive_rmu", "adaptive_rmu", [100.0, 100.0], beta=5.0)
            method = build(spec, n_topics=2, hidden_size=model.config.hidden_size, device="cpu", seed=42)
            method.setup(engine, [topic.forget.batch(0) for topic in topics])
            frozen = method.steering.adaptive_norms[1]
            train(engine, method, topics, list(params.values()), steps=1, lr=lr, optimizer=optimizer, progress=False)
            with torch.no_grad():  # what the released code measures at step 1: the updated model after step 0
                updated = mean_token_norm(engine.updated(engine.prepare(topics[1].forget.batch(0))))
            print(f"{lr:>8.0e} {optimizer:>20} {frozen:>12.4f} {updated:>12.4f} {(updated - frozen) / frozen:>+10.2%}")


if __name__ == "__main__":
    main()
