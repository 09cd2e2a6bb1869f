#!/usr/bin/env python3
"""Decode tokens/s against the roofline: troupe's engine (bench_cuda_engine
--json) and transformers (transformers_peer.py --json), measured in the same
device call, one panel per model shape, one line style per context.

Usage: plot_decode.py ENGINE_JSON PEER_JSON OUT_PNG   (PEER_JSON may be '-')
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(doc, model, key):
    return [r for r in doc.get("models", {}).get(model, {}).get(key, []) if "skipped" not in r]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    engine = json.load(open(sys.argv[1]))
    peer = json.load(open(sys.argv[2])) if sys.argv[2] != "-" else {}
    models = list(engine.get("models", {}))
    if not models:
        sys.exit(f"{sys.argv[1]}: no models in the engine results")
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5), squeeze=False)
    styles = {512: "-", 8192: "--"}
    for ax, model in zip(axes[0], models):
        dec = rows(engine, model, "decode")
        for ctx in sorted({r["ctx"] for r in dec}):
            ls = styles.get(ctx, ":")
            pts = sorted((r["batch"], r) for r in dec if r["ctx"] == ctx)
            b = [p[0] for p in pts]
            ax.plot(b, [p[1]["roofline_tokens_per_s"] for p in pts], ls, color="black", lw=1,
                    label=f"roofline, ctx {ctx}")
            ax.plot(b, [p[1]["tokens_per_s"] for p in pts], ls, color="tab:red", marker="o",
                    label=f"troupe, ctx {ctx}")
            for mode, color in (("compile", "tab:blue"), ("eager", "tab:gray")):
                pr = sorted((r["batch"], r["tokens_per_s"]) for r in rows(peer, model, "decode")
                            if r["ctx"] == ctx and r.get("mode") == mode)
                if pr:
                    ax.plot([p[0] for p in pr], [p[1] for p in pr], ls, color=color, marker="s", ms=4,
                            label=f"transformers {mode}, ctx {ctx}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sequences per decode step)")
        ax.set_ylabel("output tokens/s")
        ax.set_title(f"{model} decode on {engine.get('device', '?')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sys.argv[3], dpi=110)


if __name__ == "__main__":
    main()
