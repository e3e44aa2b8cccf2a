"""Benchmark: the fast activation engine against the reference approach, side by side in one run.

Same model, same batches, same layer, same method (RMU, or NPO + KL with `--method npo`); each engine runs in its
own fresh process so the peak memory of one does not hide the other's. Prints the median step time and the peak
resident memory during training of each, and the ratios. For NPO the reference approach is the plain one of
the authors' code and open-unlearning: a deep copy of the whole model as the reference, full forwards of both,
gradients enabled everywhere.

    python scripts/bench_engine.py                                  # smollm2-135m, layer 7, 256 tokens, batch 4
    python scripts/bench_engine.py --method npo                     # NPO + KL on the same setting
    python scripts/bench_engine.py --model mistral-7b-shape --device cuda --steps 150   # on a GPU: 7B shapes, bf16

`mistral-7b-shape` is Mistral-7B's architecture with random bf16 weights (no download): the published recipe's
shapes (32 blocks, d=4096, layer 7, batch 4, 512 tokens).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

import torch


def peak_memory_sampler(device: str):
    """Samples resident memory (CPU) every 2 ms; on CUDA reads the allocator's peak. Returns (start, stop)."""
    if device.startswith("cuda"):
        def start():
            torch.cuda.reset_peak_memory_stats()

        def stop():
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()

        return start, stop
    page = 4096
    peak = [0]
    running = [False]

    def sample():
        while running[0]:
            with open("/proc/self/statm") as file:
                peak[0] = max(peak[0], int(file.read().split()[1]) * page)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)

    def start():
        running[0] = True
        thread.start()

    def stop():
        running[0] = False
        thread.join()
        return peak[0]

    return start, stop


def build_model(name: str, device: str):
    from unlearn.models import load_model

    if name == "mistral-7b-shape":
        from transformers import AutoModelForCausalLM, MistralConfig

        from unlearn.models import byte_tokenizer

        config = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.eval().requires_grad_(False)
        tokenizer = byte_tokenizer()
        tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
        return model, tokenizer
    source = {"smollm2-135m": "embedded://smollm2-135m-instruct", "tiny-random": "tiny://llama"}[name]
    return load_model(source, device=device)


def texts(count: int) -> list[str]:
    """Deterministic documents of a few hundred words: long enough that every sample reaches max_length."""
    import random

    words = ("the cell virus river city music light energy history protein market mountain language system "
             "water theory planet culture number signal").split()
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(700)) for _ in range(count)]


def measure(args) -> dict:
    """One engine in this process: `steps` training steps, the first `warmup` not timed."""
    from unlearn.blocks import trained_parameters
    from unlearn.corpora import BatchStream
    from unlearn.engine import FastEngine, ReferenceEngine
    from unlearn.methods import MethodSpec, build
    from unlearn.train import TopicStreams, train

    torch.manual_seed(0)
    model, tokenizer = build_model(args.model, args.device)
    layer = args.layer
    params = trained_parameters(model, [layer - 2, layer - 1, layer], "mlp.down_proj")
    for weight in params.values():
        weight.requires_grad_(True)
    docs = texts(args.batch_size * args.steps * 2)
    stream = TopicStreams("bench", BatchStream(docs[::2], tokenizer, args.batch_size, args.max_length),
                          BatchStream(docs[1::2], tokenizer, args.batch_size, args.max_length))
    assert stream.forget.batch(0)["input_ids"].shape[1] == args.max_length, "documents too short for max_length"
    spec = {"rmu": MethodSpec("rmu", "rmu", [1200.0], steering_coeffs=[6.5]),
            "npo": MethodSpec("npo", "npo", [50.0], beta=0.1, retain_loss="kl")}[args.method]
    method = build(spec, n_topics=1, hidden_size=model.config.hidden_size, device=args.device, seed=0)
    start, stop = peak_memory_sampler(args.device)
    start()
    engine = FastEngine(model, layer, layer - 2) if args.engine == "fast" else ReferenceEngine(model, layer)
    method.setup(engine, [stream.forget.batch(0)])
    records = []
    began = time.perf_counter()
    train(engine, method, [stream], list(params.values()), steps=args.steps, lr=5e-5 if args.method == "rmu" else 2e-5,
          optimizer="transformers_adamw" if args.method == "rmu" else "adamw", on_step=records.append, progress=False)
    total = time.perf_counter() - began
    peak = stop()
    timed = [r["step_time_s"] for r in records[args.warmup :]]
    return {"engine": args.engine, "median_step_s": statistics.median(timed), "peak_bytes": peak,
            "total_s": total, "steps": args.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "tiny-random", "mistral-7b-shape"])
    parser.add_argument("--method", default="rmu", choices=["rmu", "npo"], help="rmu, or npo (NPO + KL)")
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--max-length", type=int, default=None, help="tokens per document (default 256; 512 for 7B)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engines", default="fast,reference")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: measure one engine in this process
    args = parser.parse_args()
    if args.max_length is None:
        args.max_length = 512 if args.model == "mistral-7b-shape" else 256
    if args.engine:
        print(json.dumps(measure(args)))
        return

    results = {}
    for engine in args.engines.split(","):
        command = [sys.executable, __file__, "--engine", engine] + sys.argv[1:]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{engine} engine failed:\n{done.stderr[-3000:]}")
        results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"method={args.method} model={args.model} layer={args.layer} batch={args.batch_size} max_length={args.max_length} "
          f"device={args.device} steps={args.steps} (median over the last {args.steps - args.warmup})")
    print(f"{'engine':<10} {'median step':>12} {'peak memory':>12} {'total':>9}")
    for name, r in results.items():
        print(f"{name:<10} {r['median_step_s']:>11.3f}s {r['peak_bytes'] / 2**30:>10.2f}GiB {r['total_s']:>8.1f}s")
    if {"fast", "reference"} <= results.keys():
        fast, ref = results["fast"], results["reference"]
        print(f"speed-up per step: {ref['median_step_s'] / fast['median_step_s']:.2f}x   "
              f"peak memory ratio (fast/reference): {fast['peak_bytes'] / ref['peak_bytes']:.2f}")


if __name__ == "__main__":
    main()
