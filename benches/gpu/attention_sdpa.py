#!/usr/bin/env python3
"""PyTorch SDPA on the prefill shapes of bench_cuda_attention (Llama-3.1-8B:
32 q heads, 8 KV heads, head_dim 128, bf16, one causal sequence of 1K, 8K,
32K tokens), TFLOP/s counted the same way (4 * n^2 * d * heads / 2), so the
ratio to troupe's kernel is measured in the same device call.

    python3 benches/gpu/attention_sdpa.py [OUT_JSON]

Rows: the default backend choice with GQA K/V expanded to 32 heads (it picks
cuDNN's fused attention on Hopper), the same with enable_gqa=True (8 KV
heads), and the FlashAttention-2 backend alone. Median of CUDA-event timings
after warm-up, on random normal inputs.
"""
import json, sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HKV, D = 32, 8, 128


def median_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    rows = []
    dev = torch.cuda.get_device_name(0)
    print(f"PyTorch {torch.__version__} SDPA on {dev}: causal, 32 q heads / 8 kv heads, d 128, bf16")
    print(f"{'tokens':>8} {'variant':>22} {'ms':>10} {'TFLOP/s':>10}")
    for n in (1024, 8192, 32768):
        g = torch.Generator(device="cuda").manual_seed(n)
        q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16, generator=g)
        ke, ve = k.repeat_interleave(H // HKV, dim=1), v.repeat_interleave(H // HKV, dim=1)
        flops = 4.0 * n * n * D * H / 2.0
        variants = [
            ("default, expanded kv", lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True), None),
            ("default, enable_gqa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), None),
            ("cudnn, expanded kv", lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True),
             SDPBackend.CUDNN_ATTENTION),
            ("flash2, expanded kv", lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True),
             SDPBackend.FLASH_ATTENTION),
        ]
        reps = 10 if n >= 32768 else 20
        for name, fn, backend in variants:
            try:
                if backend is None:
                    ms = median_ms(fn, reps=reps)
                else:
                    with sdpa_kernel([backend]):
                        ms = median_ms(fn, reps=reps)
            except Exception as e:  # a backend that refuses the shape
                print(f"{n:>8} {name:>22} {'n/a':>10} {'':>10}  ({type(e).__name__})")
                continue
            tf = flops / (ms * 1e-3) / 1e12
            print(f"{n:>8} {name:>22} {ms:>10.3f} {tf:>10.1f}")
            rows.append({"tokens": n, "variant": name, "ms": ms, "tflops": tf})
        del q, k, v, ke, ve
        torch.cuda.empty_cache()
    if len(sys.argv) > 1:
        json.dump({"device": dev, "torch": torch.__version__, "rows": rows}, open(sys.argv[1], "w"), indent=2)


if __name__ == "__main__":
    main()
