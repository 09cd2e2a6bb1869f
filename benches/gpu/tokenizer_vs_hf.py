#!/usr/bin/env python3
"""troupe's tokenizer against Hugging Face `tokenizers`, encode throughput, one
thread each, same corpora and passes, in one run (the GPU machine has the
Python package; this repository's machine does not).

    python3 benches/gpu/tokenizer_vs_hf.py BENCH_BINARY TOKENIZERS_DIR FORTUNES_DIR OUT_JSON

BENCH_BINARY is build/bench_tokenizer_encode; TOKENIZERS_DIR holds llama3/ and
qwen3/ (tests/fixtures/tokenizers/fetch.sh); FORTUNES_DIR is Debian's
/usr/share/games/fortunes, used as a second, larger corpus of English text.
Both sides take the median of the passes after one warm-up pass.
"""
import json, os, re, statistics, subprocess, sys, time

from tokenizers import Tokenizer

REPS = 5


def fortunes_corpus(root, path):
    texts = []
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name)
        if "." in name or not os.path.isfile(p):
            continue
        text = re.sub(r".\x08", "", open(p, encoding="utf-8", errors="replace").read())
        texts += [f for f in text.split("\n%\n") if f.strip()]
    json.dump(texts, open(path, "w"))
    return path


def hf_rate(tok, texts):
    secs = []
    for r in range(REPS + 1):
        t0 = time.perf_counter()
        n = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
        if r:
            secs.append(time.perf_counter() - t0)
    med = statistics.median(secs)
    return n, med


def main(binary, tok_dir, fortunes, out_json):
    os.environ["RAYON_NUM_THREADS"] = "1"
    here = os.path.dirname(os.path.abspath(__file__))
    corpora = {"test corpus": os.path.join(here, "..", "..", "tests", "fixtures", "tokenizers", "corpus.json"),
               "fortunes": fortunes_corpus(fortunes, "/tmp/fortunes_corpus.json")}
    rows = []
    for name in ("llama3", "qwen3"):
        hf = Tokenizer.from_file(os.path.join(tok_dir, name, "tokenizer.json"))
        for cname, cpath in corpora.items():
            texts = json.load(open(cpath))
            n_hf, s_hf = hf_rate(hf, texts)
            ours = json.loads(subprocess.check_output(
                [binary, "--tokenizer", os.path.join(tok_dir, name), "--corpus", cpath, "--reps", str(REPS)]))
            assert ours["tokens"] == n_hf, f"{name}/{cname}: token counts differ ({ours['tokens']} vs {n_hf})"
            rows.append({"tokenizer": name, "corpus": cname, "bytes": ours["bytes"], "tokens": n_hf,
                         "troupe_tokens_per_s": ours["tokens_per_s"], "hf_tokens_per_s": n_hf / s_hf,
                         "ratio": ours["tokens_per_s"] / (n_hf / s_hf)})
    print(f"{'tokenizer':10} {'corpus':12} {'MB':>6} {'troupe tok/s':>14} {'HF tok/s':>12} {'ratio':>7}")
    for r in rows:
        print(f"{r['tokenizer']:10} {r['corpus']:12} {r['bytes'] / 1e6:6.2f} {r['troupe_tokens_per_s']:14.0f} "
              f"{r['hf_tokens_per_s']:12.0f} {r['ratio']:7.2f}")
    json.dump(rows, open(out_json, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:5])
