#!/usr/bin/env python3
"""Trains troupe's embedded demo model: a small Llama on the English text of
Debian's `fortunes` package, with its own byte-level BPE tokenizer.

Run on the lent GPU machine (torch, transformers, tokenizers are there):
    python3 models/train_demo.py FORTUNES_DIR OUT_DIR
FORTUNES_DIR is /usr/share/games/fortunes of the `fortunes` package (carried
there); OUT_DIR receives config.json, generation_config.json, tokenizer.json,
tokenizer_config.json, model.safetensors (bf16, <= 12 MB), and report.json with
held-out perplexity against a unigram baseline, plus golden.json: transformers'
float32 logits summary and greedy continuation for an engine check.

Choices: fortunes are documents separated by <|endoftext|>; a quarter of the
training documents are also wrapped in the ChatML chat template so that chat
requests get a fortune back. 5% of the fortunes (chosen by a hash of their
text, so the split is stable) are held out and never trained on; the best
checkpoint by held-out loss is kept.
"""
import hashlib, json, math, os, random, re, sys, time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

SKIP = {"ascii-art", "art"}  # pictures, not English text
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
                 " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\\n' }}{% endif %}")
ASKS = ["Tell me a fortune.", "What does the future hold?", "Say something wise.", "Give me a quote.",
        "Cheer me up.", "Any advice for today?", "Tell me a joke.", "What is my fortune?"]
VOCAB = 4096
SEQ = 256


def read_fortunes(root):
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if "." in name or name in SKIP or os.path.islink(path) or not os.path.isfile(path):
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        text = re.sub(r".\x08", "", text)  # overstriking (bold/underline) in a few files
        for f in text.split("\n%\n"):
            f = f.strip("\n").rstrip()
            if f and f != "%":
                out.append(f)
    return out


def held_out(text):
    return hashlib.sha1(text.encode()).digest()[0] < 13  # ~5%


def chatml(user, assistant):
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


def main(root, out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    random.seed(0)
    fortunes = read_fortunes(root)
    train = [f for f in fortunes if not held_out(f)]
    valid = [f for f in fortunes if held_out(f)]
    print(f"{len(fortunes)} fortunes ({sum(map(len, fortunes)) / 1e6:.2f} MB), train {len(train)}, held out {len(valid)}")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train, trainer=trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    eot, im_start, im_end = (tok.token_to_id(s) for s in SPECIALS)

    docs = []
    for f in train:
        docs.append(f)
        if random.random() < 0.25:
            docs.append(chatml(random.choice(ASKS), f))
    random.shuffle(docs)
    ids = []
    for d in docs:
        ids.extend(tok.encode(d).ids)
        ids.append(eot)
    valid_ids = []
    for f in valid:
        valid_ids.extend(tok.encode(f).ids)
        valid_ids.append(eot)
    data = torch.tensor(ids, dtype=torch.long)
    vdata = torch.tensor(valid_ids, dtype=torch.long)
    print(f"train tokens {len(data)}, held-out tokens {len(vdata)}")

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=1024,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=eot, eos_token_id=[eot, im_end],
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = LlamaForCausalLM(cfg).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters {n_params / 1e6:.2f} M")
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.1)
    steps, batch, warmup = 800, 64, 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    def eval_loss():
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(0, len(vdata) - 1, SEQ * 32):
                chunk = vdata[i:i + SEQ * 32 + 1]
                n = (len(chunk) - 1) // SEQ
                if n == 0:
                    break
                x = chunk[:n * SEQ].view(n, SEQ).cuda()
                y = chunk[1:n * SEQ + 1].view(n, SEQ).cuda()
                logits = model(x).logits.float()
                total += torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), y.view(-1), reduction="sum").item()
                count += y.numel()
        model.train()
        return total / count

    best, best_state, t0 = float("inf"), None, time.time()
    for step in range(steps):
        starts = torch.randint(0, len(data) - SEQ - 1, (batch,))
        x = torch.stack([data[s:s + SEQ] for s in starts]).cuda()
        y = torch.stack([data[s + 1:s + SEQ + 1] for s in starts]).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).logits.float().view(-1, VOCAB), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 49 or step == steps - 1:
            v = eval_loss()
            print(f"step {step + 1} train {loss.item():.3f} held-out {v:.3f} ppl {math.exp(v):.1f} ({time.time() - t0:.0f}s)")
            if v < best:
                best = v
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)

    # Unigram baseline: token frequencies of the training data, add-one smoothed.
    counts = torch.bincount(data, minlength=VOCAB).double() + 1.0
    logp = torch.log(counts / counts.sum())
    unigram = -logp[vdata[1:]].mean().item()
    report = {"held_out_loss": best, "held_out_perplexity": math.exp(best), "unigram_loss": unigram,
              "unigram_perplexity": math.exp(unigram), "parameters": n_params, "train_tokens": len(data),
              "held_out_tokens": len(vdata) - 1, "fortunes": len(fortunes), "steps": steps}
    print(json.dumps(report))

    model = model.to(torch.bfloat16).cpu()
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.8
    model.generation_config.top_p = 0.95
    model.generation_config.bos_token_id = eot
    model.generation_config.eos_token_id = [eot, im_end]
    model.save_pretrained(out, safe_serialization=True)
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
            "add_bos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": 1024,
            "chat_template": CHAT_TEMPLATE}
    json.dump(tcfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    json.dump(report, open(os.path.join(out, "report.json"), "w"), indent=1)

    # Golden data for troupe's engine on this model: float32 logits of a prompt, greedy continuation.
    ref = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = tok.encode("A day for firm decisions").ids
    seq = list(prompt)
    with torch.no_grad():
        logits = ref(torch.tensor([prompt])).logits[0].float().contiguous()
        for _ in range(32):  # greedy, ignoring eos, one full forward per token
            seq.append(int(ref(torch.tensor([seq])).logits[0, -1].argmax()))
    greedy = seq[len(prompt):]
    logits.numpy().astype("<f4").tofile(os.path.join(out, "golden_logits.f32"))
    json.dump({"prompt": prompt, "greedy": greedy, "max_abs_logit": float(logits.abs().max())},
              open(os.path.join(out, "golden.json"), "w"))
    print("greedy:", repr(tok.decode(greedy)))
    torch.manual_seed(1)
    for text in ["A day for", "<|im_start|>user\nTell me a fortune.<|im_end|>\n<|im_start|>assistant\n"]:
        out_ids = ref.generate(torch.tensor([tok.encode(text).ids]), max_new_tokens=60, do_sample=True,
                               temperature=0.8, top_p=0.95, pad_token_id=eot)[0].tolist()
        print("sample:", repr(tok.decode(out_ids)))
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))}
    print(sizes)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
