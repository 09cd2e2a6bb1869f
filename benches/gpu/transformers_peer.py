#!/usr/bin/env python3
"""The transformers peer of benches/cuda_engine.cpp: the same two shapes
(Llama-3.1-8B, Llama-3.2-1B) with random bf16 weights built on the GPU from a
LlamaConfig (no download), measured the way transformers users run them.

    python3 benches/gpu/transformers_peer.py [--models 8B,1B] [--modes eager,compile]
        [--compile-models 8B] [--steps 16] [--time-budget 480] [--json OUT.json]

Decode: tokens/s at batch 1, 8, 64, 256 with contexts 512 and 8192, on a
StaticCache (max_cache_len = ctx + warm-up + timed steps + 8) filled by a real
eager prefill (chunked along the sequence so at most --chunk-tokens tokens go
through one forward), then timed steps: a host clock around each step with the
device synchronised on both sides, median of --steps after --warmup steps, the
logits left on the device (as troupe's bench does). Two modes:
  eager    the model's forward as is;
  compile  torch.compile(model.forward, mode="reduce-overhead", fullgraph=True,
           dynamic=False) on the decode step only (transformers' recommended fast
           path: static cache + CUDA graphs); the prefill stays eager. compile_s
           is the warm-up wall time (dynamo + inductor + graph capture) less the
           same number of steady steps. Each case gets a fresh compile, as
           generate() does for a new batch size or cache length.
Prefill: TTFT for one sequence of 1K, 8K, 32K, 128K tokens through the eager
model with SDPA, use_cache=True (a DynamicCache, generate()'s default) and
logits_to_keep=1, best of 3 (2 at 128K). The SDPA backend that PyTorch picked
for that call is read with torch._fused_sdp_choice on the attention call's own
arguments; up to 32K the TTFT is also taken with SDPA restricted to
FLASH_ATTENTION and to CUDNN_ATTENTION (under "extra" in the JSON).

Cases whose KV + transient memory does not fit are skipped up front, with the
sizes in the reason. Transformers' SDPA path repeats K/V to all query heads
(repeat_kv) whenever it passes a mask, which a StaticCache always needs: one
layer's K and V at 4x size are live at once, so that is counted too. Likewise
transformers' static cache attends over all of max_cache_len every step (the
unused tail is masked, not skipped): that is the peer's real behaviour, kept.

Ordering for --time-budget (default 480 s from process start): all eager work
(TTFT, eager decode) for every model first, compile cases last. A case is skipped
with reason 'time budget' once the budget is spent, or when the previous case of
the same model and mode took longer than what is left (compile cases cost about
the same each), so a run ends near the budget instead of one case past it.

Defaults and why: torch.compile recompiles for every case (a new batch size or
cache length is new shapes and new static cache addresses, as in generate()).
Measured on the H100 (2026-11-22, torch 2.11, transformers 5.17): one compile
of the decode step, CUDA graph capture included, takes 33-44 s for the 8B and
about 19 s for the 1B. Eager work for both models takes about 100 s after ~15 s
of imports (the 8B's 128K TTFT alone 24 s); the 8B's six fitting compile cases
about 230 s: the whole default run took 344 s. The 1B's seven compile cases
would add about 160 s (~8.5 minutes in all), so compile mode runs for the 8B
only by default (--compile-models 8B); --compile-models 8B,1B runs both (give it
--time-budget 600 or the last 1B cases are skipped for time).
"""
import argparse, gc, inspect, json, statistics, sys, time, traceback

T_START = time.perf_counter()

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

try:
    from transformers import StaticCache
except ImportError:  # older layouts
    from transformers.cache_utils import StaticCache

GiB = 1 << 30

SHAPES = {
    "8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, rope_factor=8.0),
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rope_factor=32.0),
}
VOCAB = 128256


def log(msg):
    print(f"[{time.perf_counter() - T_START:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------
# API differences between transformers 4.x and 5.x, found once by inspection.
class Api:
    def __init__(self):
        fwd = inspect.signature(LlamaForCausalLM.forward).parameters
        model_fwd = inspect.signature(transformers.LlamaModel.forward).parameters
        self.logits_kw = ("logits_to_keep" if "logits_to_keep" in fwd else
                          "num_logits_to_keep" if "num_logits_to_keep" in fwd else None)
        # 5.x (after "remove cache positions") keeps the position inside the cache as a tensor; older
        # versions need cache_position passed, or a StaticCache computes its length from its contents.
        self.cache_position = "cache_position" in model_fwd
        self.static_params = inspect.signature(StaticCache.__init__).parameters
        cfg_params = inspect.signature(LlamaConfig.__init__).parameters
        self.rope_parameters = "rope_parameters" in cfg_params

    def describe(self):
        return (f"logits kwarg={self.logits_kw}, cache_position in forward={self.cache_position}, "
                f"StaticCache({', '.join(p for p in self.static_params if p != 'self')}), "
                f"LlamaConfig rope_parameters={self.rope_parameters}")


API = Api()


def make_config(name):
    s = SHAPES[name]
    rope = dict(rope_type="llama3", factor=s["rope_factor"], low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
    common = dict(vocab_size=VOCAB, hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                  num_hidden_layers=s["num_hidden_layers"], num_attention_heads=s["num_attention_heads"],
                  num_key_value_heads=s["num_key_value_heads"], head_dim=s["head_dim"], rms_norm_eps=1e-5,
                  max_position_embeddings=131072, tie_word_embeddings=s["tie_word_embeddings"],
                  hidden_act="silu", attention_bias=False, mlp_bias=False, attn_implementation="sdpa",
                  bos_token_id=128000, eos_token_id=128001)
    if API.rope_parameters:
        cfg = LlamaConfig(**common, rope_parameters=dict(rope, rope_theta=500000.0))
    else:
        cfg = LlamaConfig(**common, rope_theta=500000.0, rope_scaling=rope)
    cfg._attn_implementation = "sdpa"
    return cfg


def build(name):
    t0 = time.perf_counter()
    cfg = make_config(name)
    torch.set_default_dtype(torch.bfloat16)
    try:
        # Parameters are made and initialised (normal, std 0.02; norms 1) on the GPU directly.
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    for p in model.parameters():
        if p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
    model.eval()
    model.requires_grad_(False)
    rot = getattr(model.model, "rotary_emb", None)
    rope_type = getattr(rot, "rope_type", "?")
    if rope_type not in ("llama3", "?"):
        raise RuntimeError(f"{name}: rope type is {rope_type!r}, expected 'llama3': the config's rope fields were "
                           "not understood by this transformers version")
    torch.cuda.synchronize()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    log(f"{name}: built in {time.perf_counter() - t0:.1f} s, {nbytes / 1e9:.2f} GB of weights, rope {rope_type}, "
        f"attention {model.config._attn_implementation}")
    return model


def free_all():
    gc.collect()
    torch.cuda.empty_cache()


def kv_bytes_per_token(name):
    s = SHAPES[name]
    return s["num_hidden_layers"] * 2 * s["num_key_value_heads"] * s["head_dim"] * 2


# ---------------------------------------------------------------------------
# SDPA backend seen by the attention call: torch's own dispatcher choice on the same arguments.
_SDPA = torch.nn.functional.scaled_dot_product_attention
_seen_backends = []


def _backend_name(idx):
    try:
        from torch.nn.attention import SDPBackend
        for k, v in SDPBackend.__members__.items():
            if int(getattr(v, "value", v)) == int(idx):
                return k
    except Exception:
        pass
    return f"backend {idx}"


def _sdpa_choice(q, k, v, attn_mask, dropout_p, is_causal, scale, gqa):
    # torch 2.11: _fused_sdp_choice(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
    # enable_gqa=False); older versions lack enable_gqa.
    err = None
    for kw in (dict(scale=scale, enable_gqa=gqa), dict(scale=scale)):
        try:
            return _backend_name(torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal, **kw))
        except TypeError as e:
            err = e
    return f"unknown ({str(err).splitlines()[0][:80]})"


def _sdpa_spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    try:
        _seen_backends.append(_sdpa_choice(q, k, v, attn_mask, dropout_p, is_causal, scale,
                                           bool(kw.get("enable_gqa", False))))
    except Exception as e:  # the spy must never break the call it watches
        _seen_backends.append(f"unknown ({type(e).__name__})")
    return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)


class spy_sdpa:
    def __enter__(self):
        _seen_backends.clear()
        torch.nn.functional.scaled_dot_product_attention = _sdpa_spy
        return _seen_backends

    def __exit__(self, *a):
        torch.nn.functional.scaled_dot_product_attention = _SDPA


# ---------------------------------------------------------------------------
def make_cache(model, batch, max_len):
    kw = dict(config=model.config, max_cache_len=max_len)
    p = API.static_params
    if "max_batch_size" in p:
        kw["max_batch_size"] = batch
    elif "batch_size" in p:
        kw["batch_size"] = batch
    if "device" in p:
        kw["device"] = "cuda"
    if "dtype" in p:
        kw["dtype"] = torch.bfloat16
    return StaticCache(**kw)


def forward_kwargs(ids, cache, pos, keep=1):
    kw = dict(input_ids=ids, past_key_values=cache, use_cache=True)
    if API.logits_kw:
        kw[API.logits_kw] = keep
    if API.cache_position and cache is not None:
        cp = torch.arange(pos, pos + ids.shape[1], device=ids.device)
        kw["cache_position"] = cp
        kw["position_ids"] = cp.unsqueeze(0).expand(ids.shape[0], -1)
    return kw


def prefill_into(model, cache, batch, ctx, chunk_tokens, gen):
    ids = torch.randint(0, VOCAB, (batch, ctx), device="cuda", generator=gen)
    c = max(1, min(ctx, chunk_tokens // batch))
    for a in range(0, ctx, c):
        out = model(**forward_kwargs(ids[:, a:a + c], cache, a))
        del out
    torch.cuda.synchronize()
    seen = cache.get_seq_length()
    seen = int(seen.item() if torch.is_tensor(seen) else seen)
    if seen != ctx:
        raise RuntimeError(f"prefill left the cache at {seen} tokens, expected {ctx}")


def decode_fits(name, batch, max_len, chunk_tokens, free_b):
    s = SHAPES[name]
    kv = batch * max_len * kv_bytes_per_token(name)
    # repeat_kv: one layer's K and V expanded to all query heads, live during that layer's attention.
    expand = kv / s["num_hidden_layers"] * (s["num_attention_heads"] // s["num_key_value_heads"])
    tokens = min(chunk_tokens, batch * max_len)
    act = tokens * (5 * s["intermediate_size"] + 10 * s["hidden_size"]) * 2 + batch * VOCAB * 4 * 2
    mask = tokens * max_len  # bool [B, 1, q, max_len]
    need = kv + expand + act + mask + 2 * GiB  # cuBLAS workspaces, graph pools, fragmentation
    if need > free_b:
        return (f"does not fit: KV {kv / 1e9:.1f} GB + repeat_kv {expand / 1e9:.1f} GB + activations "
                f"{(act + mask) / 1e9:.1f} GB + 2 GiB > {free_b / 1e9:.1f} GB free")
    return None


def weight_bytes(name):
    s = SHAPES[name]
    h, q, kv = s["hidden_size"], s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    layer = h * q * 2 + h * kv * 2 + 3 * h * s["intermediate_size"] + 2 * h
    return 2 * (VOCAB * h * (1 if s["tie_word_embeddings"] else 2) + s["num_hidden_layers"] * layer + h)


def decode_skip(name, ctx, batch, args, model_loaded):
    """Why a decode case cannot run in this GPU's memory, or None."""
    free_all()
    free_b, _ = torch.cuda.mem_get_info()
    if not model_loaded:
        free_b -= weight_bytes(name)
    return decode_fits(name, batch, ctx + args.warmup + args.steps + 8, args.chunk_tokens, free_b)


def run_decode(model, name, ctx, batch, mode, args, gen, notes):
    """One decode case (decode_skip said it fits); returns the JSON record."""
    rec = dict(ctx=ctx, batch=batch, mode=mode)
    max_len = ctx + args.warmup + args.steps + 8
    cache = make_cache(model, batch, max_len)
    t0 = time.perf_counter()
    prefill_into(model, cache, batch, ctx, args.chunk_tokens, gen)
    prefill_s = time.perf_counter() - t0
    n = args.warmup + args.steps
    toks = torch.randint(0, VOCAB, (n, batch, 1), device="cuda", generator=gen)
    compiled = mode == "compile"
    fullgraph = not args.no_fullgraph

    def make_fn():
        if not compiled:
            return model
        return torch.compile(model.forward, mode="reduce-overhead", fullgraph=fullgraph, dynamic=False)

    fn = make_fn()

    def step(i):
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        out = fn(**forward_kwargs(toks[i], cache, ctx + i))
        del out

    warm = []
    for i in range(args.warmup):
        torch.cuda.synchronize()
        a = time.perf_counter()
        if i == 0 and not compiled and batch == 1:
            with spy_sdpa() as seen:
                step(i)
            notes.append(f"{name} decode ctx {ctx} (StaticCache, eager): SDPA picked {sorted(set(seen))}")
        elif i == 0 and compiled and fullgraph:
            # Dynamo and inductor fail before anything runs, so the cache is untouched on failure.
            try:
                step(i)
            except Exception as e:
                msg = f"{name} ctx {ctx} batch {batch}: fullgraph compile failed ({type(e).__name__}: " \
                      f"{str(e).splitlines()[0][:160] if str(e) else ''}); used fullgraph=False"
                log(msg)
                notes.append(msg)
                torch._dynamo.reset()
                fullgraph = False
                fn = make_fn()
                step(i)
        else:
            step(i)
        torch.cuda.synchronize()
        warm.append(time.perf_counter() - a)
    ms = []
    for i in range(args.warmup, n):
        torch.cuda.synchronize()
        a = time.perf_counter()
        step(i)
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - a) * 1e3)
    med = statistics.median(ms)
    rec.update(step_ms=med, tokens_per_s=batch / (med * 1e-3),
               compile_s=(sum(warm) - len(warm) * med * 1e-3) if compiled else None)
    log(f"{name} ctx {ctx} batch {batch} {mode}: prefill {prefill_s:.1f} s, step {med:.3f} ms "
        f"(min {min(ms):.3f}, max {max(ms):.3f}), {rec['tokens_per_s']:.0f} tok/s"
        + (f", compile {rec['compile_s']:.1f} s" if compiled else ""))
    cache = fn = step = None  # drop the KV and the compiled function before the next case
    if compiled:
        torch._dynamo.reset()  # drops the compiled code and its CUDA graph pools
    free_all()
    return rec


def ttft_once(model, ids):
    torch.cuda.synchronize()
    a = time.perf_counter()
    kw = dict(input_ids=ids, use_cache=True)
    if API.logits_kw:
        kw[API.logits_kw] = 1
    out = model(**kw)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - a) * 1e3
    del out
    return dt


def run_prefill(model, name, n, args, gen, extra):
    rec = dict(tokens=n)
    s = SHAPES[name]
    free_all()
    free_b, _ = torch.cuda.mem_get_info()
    need = n * kv_bytes_per_token(name) + n * (5 * s["intermediate_size"] + 12 * s["hidden_size"]) * 2 + 2 * GiB
    if need > free_b:
        rec["skipped"] = f"does not fit: ~{need / 1e9:.1f} GB needed, {free_b / 1e9:.1f} GB free"
        return rec
    ids = torch.randint(0, VOCAB, (1, n), device="cuda", generator=gen)
    reps = 2 if n > 32768 else 3
    with spy_sdpa() as seen:
        first = ttft_once(model, ids)
    backend = ",".join(sorted(set(seen))) or "none seen"
    runs = [first] + [ttft_once(model, ids) for _ in range(reps - 1)]
    rec.update(ttft_ms=min(runs), sdpa_backend=backend)
    forced = {}
    if n <= 32768 and not args.no_forced_backends:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for b in ("FLASH_ATTENTION", "CUDNN_ATTENTION"):
            try:
                with sdpa_kernel([getattr(SDPBackend, b)]):
                    forced[b] = min(ttft_once(model, ids) for _ in range(2))
            except Exception as e:  # a backend that refuses these arguments
                forced[b] = f"refused ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                free_all()
        extra.setdefault(name, {}).setdefault("prefill_forced_backend", []).append(dict(tokens=n, **forced))
    rec["_forced"] = forced
    log(f"{name} prefill {n}: TTFT {rec['ttft_ms']:.1f} ms (runs {', '.join(f'{r:.1f}' for r in runs)}), "
        f"SDPA {backend}" + "".join(f", {k} {v:.1f} ms" if isinstance(v, float) else f", {k} {v}"
                                      for k, v in forced.items()))
    del ids
    free_all()
    return rec


# ---------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="8B,1B")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--compile-models", default="8B",
                    help="models that run compile mode when --modes has it (compile time, see the header)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ctxs", default="512,8192")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--prefill", default="1024,8192,32768,131072")
    ap.add_argument("--chunk-tokens", type=int, default=16384, help="most tokens through one prefill forward")
    ap.add_argument("--time-budget", type=float, default=480.0,
                    help="seconds from start (0 = none): a case is skipped once they are spent, or when the last "
                         "case of the same model and mode took longer than what is left")
    ap.add_argument("--no-fullgraph", action="store_true")
    ap.add_argument("--no-forced-backends", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.warmup < 3:
        ap.error("--warmup must be at least 3 (compile, CUDA graph capture, first replay)")
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in SHAPES:
            ap.error(f"--models: unknown shape {m!r}; known: {', '.join(SHAPES)}")
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("eager", "compile"):
            ap.error(f"--modes: unknown mode {m!r}; known: eager, compile")
    compile_models = set(m for m in args.compile_models.split(",") if m)
    ctxs = [int(x) for x in args.ctxs.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    prefills = [int(x) for x in args.prefill.split(",") if x]
    if not torch.cuda.is_available():
        sys.exit("transformers_peer: no CUDA device")
    torch._dynamo.config.cache_size_limit = max(64, getattr(torch._dynamo.config, "cache_size_limit", 8))
    transformers.logging.set_verbosity_error()

    dev = torch.cuda.get_device_name(0)
    log(f"device {dev}, torch {torch.__version__}, transformers {transformers.__version__}")
    log(f"api: {API.describe()}")
    result = {"device": dev, "torch": torch.__version__, "transformers": transformers.__version__, "models": {}}
    extra, notes = {}, []

    def over_budget(predicted=0.0):
        return args.time_budget > 0 and time.perf_counter() - T_START + predicted > args.time_budget

    def guarded(fn, rec_base, *a):
        try:
            return fn(*a)
        except torch.cuda.OutOfMemoryError as e:
            free_all()
            return dict(rec_base, skipped=f"out of memory: {str(e).splitlines()[0][:160]}")
        except Exception as e:
            traceback.print_exc()
            torch._dynamo.reset()
            free_all()
            return dict(rec_base, skipped=f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")

    gen = torch.Generator(device="cuda")
    decode_order = [(c, b) for c in ctxs for b in batches]
    # Phase 1: everything eager, for every model. Phase 2: compile cases.
    phases = [("eager", m) for m in models] + [("compile", m) for m in models]
    for phase, name in phases:
        jm = result["models"].setdefault(name, {"decode": [], "prefill": []})
        want_compile = "compile" in modes and name in compile_models
        if phase == "eager" and "eager" not in modes and not prefills:
            continue
        if phase == "compile" and not want_compile:
            continue
        if over_budget():
            if phase == "eager":
                for n in prefills:
                    jm["prefill"].append(dict(tokens=n, skipped="time budget"))
            m_list = ["eager"] if phase == "eager" and "eager" in modes else ["compile"] if phase == "compile" else []
            for mode in m_list:
                for c, b in decode_order:
                    why = decode_skip(name, c, b, args, model_loaded=False) or "time budget"
                    jm["decode"].append(dict(ctx=c, batch=b, mode=mode, skipped=why))
            continue
        model = build(name)
        gen.manual_seed(1234)
        if phase == "eager":
            for n in prefills:
                if over_budget():
                    jm["prefill"].append(dict(tokens=n, skipped="time budget"))
                    continue
                jm["prefill"].append(guarded(run_prefill, dict(tokens=n), model, name, n, args, gen, extra))
        mode = phase
        if mode in modes:
            last = 0.0  # wall time of the last case run: compile cases cost about the same each
            for c, b in decode_order:
                # A case that cannot fit says so, whatever the time left.
                why = decode_skip(name, c, b, args, model_loaded=True)
                if why is None and over_budget(last):
                    why = "time budget"
                if why:
                    rec = dict(ctx=c, batch=b, mode=mode, skipped=why)
                else:
                    t_case = time.perf_counter()
                    rec = guarded(run_decode, dict(ctx=c, batch=b, mode=mode), model, name, c, b, mode, args, gen,
                                  notes)
                    if "skipped" not in rec:
                        last = time.perf_counter() - t_case
                if "skipped" in rec:
                    log(f"{name} ctx {c} batch {b} {mode}: skipped, {rec['skipped']}")
                jm["decode"].append(rec)
        del model
        torch._dynamo.reset()
        free_all()

    # Compact tables, as benches/cuda_engine.cpp prints them.
    print(f"\ntransformers {transformers.__version__} (torch {torch.__version__}) on {dev}, random bf16 weights")
    print(f"{'model':<5} {'ctx':>6} {'batch':>5} {'mode':>8} {'step ms':>10} {'tok/s':>10} {'compile s':>10}")
    for name in models:
        for r in sorted(result["models"][name]["decode"], key=lambda r: (r["ctx"], r["batch"], r["mode"] != "eager")):
            if "skipped" in r:
                print(f"{name:<5} {r['ctx']:>6} {r['batch']:>5} {r['mode']:>8}   skipped: {r['skipped']}")
            else:
                cs = f"{r['compile_s']:10.1f}" if r["compile_s"] is not None else f"{'':>10}"
                print(f"{name:<5} {r['ctx']:>6} {r['batch']:>5} {r['mode']:>8} {r['step_ms']:10.3f} "
                      f"{r['tokens_per_s']:10.0f} {cs}")
    print(f"{'model':<5} {'prompt':>8} {'TTFT ms':>10} {'prefill tok/s':>14}  {'SDPA (default)':<16} "
          f"{'flash ms':>9} {'cudnn ms':>9}")
    for name in models:
        for r in result["models"][name]["prefill"]:
            if "skipped" in r:
                print(f"{name:<5} {r['tokens']:>8}   skipped: {r['skipped']}")
                continue
            f = r.get("_forced", {})
            fl = lambda k: f"{f[k]:9.1f}" if isinstance(f.get(k), float) else f"{('n/a' if k in f else ''):>9}"
            print(f"{name:<5} {r['tokens']:>8} {r['ttft_ms']:10.1f} {r['tokens'] / (r['ttft_ms'] * 1e-3):14.0f}  "
                  f"{r['sdpa_backend']:<16} {fl('FLASH_ATTENTION')} {fl('CUDNN_ATTENTION')}")
    for n in notes:
        print("note:", n)
    for name in models:
        for r in result["models"][name]["prefill"]:
            r.pop("_forced", None)
    if extra:
        result["extra"] = extra
    if notes:
        result["notes"] = notes
    print(f"total wall {time.perf_counter() - T_START:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    with torch.no_grad():
        main()
