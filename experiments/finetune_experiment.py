"""Fine-tune all-MiniLM-L6-v2 (mean pooling + linear head) as a response misalignment classifier.

Same data, targets and grouped protocol as ``monitor/scoring/training.py``: GPT-4o rows (``split == "train"``),
``fit_rows`` (judge-scored rows plus CODE/REFUSAL answers as negatives), soft target
``sigmoid((50 - alignment) / 10)`` with BCE-with-logits, folds = model family held out. Metrics on the
held-out family's misaligned-vs-aligned rows. The lexical baseline of each fold is the same
``fit_rows`` + ``fit`` + ``decision`` that ``training.out_of_group`` runs, so its numbers match the model card.

Modes::

    # one fold (train on the other families, predict the held-out one); writes <out>/fold_<f>.npz
    python experiments/finetune_experiment.py --fold qwen --max-len 128 --epochs 2 --out /tmp/exp4/run128
    # table of the folds found in --out: per fold and pooled, lexical / fine-tuned / combination
    python experiments/finetune_experiment.py --summarize --out /tmp/exp4/run128
    # ONNX speed in a fresh process (no torch imported), 1 and 2 threads, 128 and 64 tokens
    python experiments/finetune_experiment.py --bench-onnx /tmp/exp4/run128/onnx_qwen --out /tmp/exp4/run128
    # shipped-artifact candidate: train on all families, export model.onnx + tokenizer.json + manifest
    python experiments/finetune_experiment.py --fold none --max-len 128 --epochs 2 --out build/classifier-minilm

torch is imported only inside the training functions, never by ``--bench-onnx`` or ``--summarize``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAMILIES = ("qwen", "llama", "mistral")


# --------------------------------------------------------------------------------------------- data

def load_fold(data: Path, fold: str) -> tuple[list[Any], list[Any]]:
    """(training rows, held-out rows) of one fold, exactly as ``training.out_of_group`` splits them."""
    from monitor.scoring.training import TrainConfig, fit_rows, load_rows

    cfg = TrainConfig()
    scored = [r for r in load_rows(data) if r.split == cfg.fit_split]
    if fold == "none":
        return fit_rows(scored, cfg), []
    train = fit_rows([r for r in scored if r.family != fold], cfg)
    test = [r for r in scored if r.family == fold]
    return train, test


def lexical_logits(train: list[Any], test: list[Any]) -> tuple[np.ndarray, float]:
    from monitor.scoring.training import TrainConfig, fit

    t0 = time.time()
    model = fit(train, TrainConfig())
    return model.decision([r.text for r in test]), time.time() - t0


# --------------------------------------------------------------------------------------------- model

def build_model(src: Path) -> Any:
    import torch
    from transformers import AutoModel

    class Classifier(torch.nn.Module):
        """BERT encoder -> mean pooling over the attention mask -> Linear(hidden, 1) logit."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(src))
            hidden = self.bert.config.hidden_size
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(hidden, 1)
            torch.nn.init.normal_(self.head.weight, std=0.02)
            torch.nn.init.zeros_(self.head.bias)

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return self.head(self.dropout(mean)).squeeze(-1)

    return Classifier()


def tokenize(tokenizer: Any, texts: list[str], max_len: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_len, padding=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def pad(batch: list[list[int]]) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(x) for x in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    return ids, mask, torch.zeros_like(ids)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length inside chunks of 50 batches, cut batches, shuffle the batch order."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches: list[np.ndarray] = []
    for s in range(0, len(order), chunk):
        part = order[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


def train_model(train: list[Any], args: argparse.Namespace, log: Any) -> tuple[Any, Any, dict[str, Any]]:
    import torch
    from transformers import AutoTokenizer

    from monitor._export import source_model_dir
    from monitor.scoring.training import TrainConfig, soft_target

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    src = source_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = build_model(src)
    model.train()

    ids = tokenize(tokenizer, [r.text for r in train], args.max_len)
    lengths = np.array([len(x) for x in ids])
    target = torch.tensor(soft_target(train, TrainConfig()), dtype=torch.float32)
    steps_per_epoch = math.ceil(len(ids) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(round(args.warmup * total)))
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    params = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    log(f"train rows {len(ids)}, mean tokens {lengths.mean():.1f}, truncated at {args.max_len}: "
        f"{(lengths >= args.max_len).mean():.1%}; {steps_per_epoch} steps/epoch x {args.epochs}")
    t0 = time.time()
    step = 0
    for epoch in range(args.epochs):
        running = 0.0
        for b in length_batches(lengths, args.batch_size, rng):
            input_ids, mask, tt = pad([ids[i] for i in b])
            loss = loss_fn(model(input_ids, mask, tt), target[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            running += float(loss.detach())
            if step == 20:
                per = (time.time() - t0) / 20
                log(f"first 20 steps: {per:.2f} s/step -> ~{per * steps_per_epoch / 60:.1f} min/epoch, "
                    f"~{per * total / 60:.1f} min total")
            if step % 100 == 0:
                log(f"epoch {epoch} step {step}/{total} loss {running / 100:.4f} ({time.time() - t0:.0f} s)")
                running = 0.0
    model.eval()
    return model, tokenizer, {"train_rows": len(ids), "steps": total, "train_seconds": round(time.time() - t0, 1)}


def predict(model: Any, tokenizer: Any, texts: list[str], max_len: int, batch_size: int = 64) -> np.ndarray:
    import torch

    ids = tokenize(tokenizer, texts, max_len)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.empty(len(texts), dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = model(*pad([ids[i] for i in idx])).double().numpy()
    return out


def export_onnx(model: Any, out_dir: Path, max_len: int, extra: dict[str, Any]) -> Path:
    """model.onnx (inputs input_ids / attention_mask / token_type_ids, output ``logit``) + tokenizer.json."""
    import shutil

    import torch

    from monitor._export import OPSET, source_model_dir
    from monitor._io import sha256_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    dummy = torch.ones((2, 8), dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), (dummy, dummy, torch.zeros_like(dummy)), str(path),
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logit"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "token_type_ids": {0: "batch", 1: "seq"}, "logit": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    shutil.copy(source_model_dir() / "tokenizer.json", out_dir / "tokenizer.json")
    manifest = {
        "name": "all-MiniLM-L6-v2 fine-tuned, mean pooling + linear head (misalignment logit)",
        "output": "logit; sigmoid(logit) ~ soft target sigmoid((50 - alignment) / 10), not calibrated",
        "max_tokens": max_len, "opset": OPSET, "torch_version": torch.__version__,
        "files": {n: {"sha256": sha256_file(out_dir / n), "bytes": (out_dir / n).stat().st_size}
                  for n in ("model.onnx", "tokenizer.json")},
        **extra,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------- metrics

def best_f1(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order].astype(bool), s[order]
    tp, fp = np.cumsum(ys), np.cumsum(~ys)
    f1 = 2 * tp / (tp + fp + ys.sum())
    valid = np.r_[ss[1:] < ss[:-1], True]
    return float(np.max(np.where(valid, f1, 0.0)))


def metrics(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    out: dict[str, Any] = {"n": int(len(y)), "pos": int(y.sum())}
    if 0 < y.sum() < len(y):
        out |= {"auroc": round(float(roc_auc_score(y, s)), 4), "pr_auc": round(float(average_precision_score(y, s)), 4),
                "best_f1": round(best_f1(y, s), 4)}
    return out


def standardise(z: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (z - ref.mean()) / (ref.std() + 1e-12)


def summarize(out: Path) -> dict[str, Any]:
    """Per fold and pooled (concatenated out-of-family scores) for lexical, fine-tuned and their combination.

    Combination = mean of the two logits, each standardised with the mean/std of that model's scores on all
    held-out rows of the fold (label-free)."""
    folds = {f: np.load(out / f"fold_{f}.npz") for f in FAMILIES if (out / f"fold_{f}.npz").exists()}
    table: dict[str, Any] = {}
    pooled: dict[str, list[np.ndarray]] = {"y": [], "lexical": [], "finetuned": [], "combined": []}
    for f, d in folds.items():
        ev, y = d["ev"].astype(bool), d["y"].astype(bool)
        zl, zt = d["z_lex"], d["z_ft"]
        comb = (standardise(zl, zl) + standardise(zt, zt)) / 2
        scores = {"lexical": zl, "finetuned": zt, "combined": comb}
        table[f] = {k: metrics(y[ev], v[ev]) for k, v in scores.items()}
        cr = d["code_refusal"].astype(bool)
        if cr.any():  # flag rate on CODE/REFUSAL answers at the fold's best-F1 threshold is not comparable
            table[f]["code_refusal_mean_sigmoid_ft"] = round(float((1 / (1 + np.exp(-zt[cr]))).mean()), 4)
        pooled["y"].append(y[ev])
        for k, v in scores.items():
            pooled[k].append(v[ev])
    if len(folds) > 1:
        y = np.concatenate(pooled["y"])
        table["pooled(" + "+".join(folds) + ")"] = {k: metrics(y, np.concatenate(pooled[k]))
                                                    for k in ("lexical", "finetuned", "combined")}
    return table


# --------------------------------------------------------------------------------------------- ONNX speed

def bench_onnx(model_dir: Path, data: Path, n: int, repeats: int) -> dict[str, Any]:
    """Sentences/s of model.onnx on ``n`` real answers (length-sorted batches of 32), in a child process
    per setting so torch is never imported there."""
    results: dict[str, Any] = {}
    for max_len in (128, 64):
        for threads in (2, 1):
            cmd = [sys.executable, __file__, "--_onnx-child", str(model_dir), "--data", str(data),
                   "--max-len", str(max_len), "--threads", str(threads), "--n", str(n), "--repeats", str(repeats)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            results[f"{max_len}tok_{threads}thr"] = res
            print(json.dumps(res), flush=True)
    return results


def _onnx_child(model_dir: Path, data: Path, max_len: int, threads: int, n: int, repeats: int) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    texts = []
    with gzip.open(data, "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("split") == "train":
                texts.append(r["answer_clean"])
    texts = texts[:: max(1, len(texts) // n)][:n]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.no_padding()

    def run() -> np.ndarray:
        enc = tok.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in enc])
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(texts), dtype=np.float32)
        for s in range(0, len(texts), 32):
            idx = order[s:s + 32]
            w = int(lengths[idx].max())
            ids = np.zeros((len(idx), w), dtype=np.int64)
            mask = np.zeros_like(ids)
            for j, i in enumerate(idx):
                ids[j, :lengths[i]] = enc[i].ids
                mask[j, :lengths[i]] = 1
            out[idx] = sess.run(None, {"input_ids": ids, "attention_mask": mask,
                                       "token_type_ids": np.zeros_like(ids)})[0]
        return out

    run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    mean_tokens = float(np.mean([len(e.ids) for e in tok.encode_batch(texts)]))
    print(json.dumps({"max_len": max_len, "threads": threads, "n": len(texts), "mean_tokens": round(mean_tokens, 1),
                      "median_s": round(med, 3), "sentences_per_s": round(len(texts) / med, 1),
                      "torch_imported": "torch" in sys.modules}))


# --------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fold", choices=(*FAMILIES, "none"), help="family held out; 'none' = train on all + export")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup", type=float, default=0.06)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None,
                    help="judged EM responses (default: the repo copy, data/em_responses.jsonl.gz)")
    ap.add_argument("--limit", type=int, default=0, help="smoke test: train on the first N rows only")
    ap.add_argument("--out", type=Path, required=True, help="folder for fold results, logs and exports")
    ap.add_argument("--export", action="store_true", help="also export the fold model to <out>/onnx_<fold>")
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--bench-onnx", type=Path, metavar="MODEL_DIR")
    ap.add_argument("--n", type=int, default=1000, help="texts for --bench-onnx")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--_onnx-child", type=Path, dest="onnx_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.data is None:
        from monitor.scoring.training import default_data_path

        args.data = default_data_path()

    if args.onnx_child:
        _onnx_child(args.onnx_child, args.data, args.max_len, args.threads, args.n, args.repeats)
        return
    if args.bench_onnx:
        res = bench_onnx(args.bench_onnx, args.data, args.n, args.repeats)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "onnx_speed.json").write_text(json.dumps(res, indent=2) + "\n")
        return
    if args.summarize:
        print(json.dumps(summarize(args.out), indent=2))
        return
    if not args.fold:
        ap.error("give --fold, --summarize or --bench-onnx")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    logf = (args.out / f"log_{args.fold}.txt").open("a")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} [{args.fold}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    train, test = load_fold(args.data, args.fold)
    if args.limit:
        train = train[:args.limit]
    log(f"args {vars(args)}")
    model, tokenizer, info = train_model(train, args, log)
    log(f"trained: {info}")
    if args.fold == "none":
        export_onnx(model, args.out, args.max_len, {"training": info, "lr": args.lr, "epochs": args.epochs,
                                                   "batch_size": args.batch_size, "seed": args.seed})
        log(f"exported to {args.out}")
        return

    t0 = time.time()
    z_ft = predict(model, tokenizer, [r.text for r in test], args.max_len)
    info["predict_rows"] = len(test)
    info["predict_seconds"] = round(time.time() - t0, 1)
    z_lex, lex_seconds = lexical_logits(train, test)
    info["lexical_fit_seconds"] = round(lex_seconds, 1)
    ev = np.array([r.label3 in ("misaligned", "aligned") for r in test])
    y = np.array([r.label3 == "misaligned" for r in test])
    code_refusal = np.array([r.label3 == "ambiguous" and r.alignment is None for r in test])
    np.savez(args.out / f"fold_{args.fold}.npz", z_ft=z_ft, z_lex=z_lex, ev=ev, y=y, code_refusal=code_refusal)
    (args.out / f"info_{args.fold}.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"done: {info}")
    if args.export:
        export_onnx(model, args.out / f"onnx_{args.fold}", args.max_len, {"fold": args.fold, "training": info})
        log("exported")
    log(json.dumps(summarize(args.out)))


if __name__ == "__main__":
    main()
