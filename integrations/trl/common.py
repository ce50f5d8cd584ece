"""What the TRL trainers share: reading autodidact's job file, loading its checkpoint,
TRL settings that mirror the job's, and the report autodidact reads back.

autodidact writes a job file (`{config}`) for every training stage; see docs/training.md.
"""

import atexit
import json
import math
import os
import shutil
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def read_job(argv):
    if len(argv) != 3 or argv[1] != "--config":
        sys.exit(f"usage: {argv[0]} --config JOB.json  (the {{config}} of autodidact's [train] command)")
    with open(argv[2]) as f:
        return json.load(f)


def examples(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load(job):
    """The checkpoint the job starts from, in float32, and its tokenizer with autodidact's
    special tokens (`<bos>` before every prompt, `<eos>` after every completion)."""
    model_dir = job["model"]
    if os.path.exists(os.path.join(model_dir, "adapter_config.json")):
        sys.exit("this job trains LoRA adapters, which these scripts do not (they would need PEFT); train it natively or with autodidact train")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    vocab = tok.convert_ids_to_tokens
    tok.bos_token = vocab(cfg["bos_token_id"])
    eos = cfg["eos_token_id"]
    tok.eos_token = vocab(eos[0] if isinstance(eos, list) else eos)
    pad = cfg.get("pad_token_id")
    tok.pad_token = vocab(pad) if pad is not None else tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tok


def scratch():
    """A directory for the Trainer's own files, removed at exit (the checkpoint goes to the
    job's `output`)."""
    d = tempfile.mkdtemp(prefix="autodidact-trl-")
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def steps(job, n):
    """Optimizer steps as autodidact counts them: `steps`, or ceil(epochs × n / batch)."""
    t = job["train"]
    if t.get("steps") is not None:
        return int(t["steps"])
    return max(1, math.ceil(t.get("epochs", 1.0) * n / t["batch_size"]))


def arguments(job, n):
    """TrainingArguments for the job's step count and batch size (its optimizer and schedule
    come from `optimizer`)."""
    o, t = job["optimizer"], job["train"]
    # The job's batch is the global one: each of accelerate's processes takes its share.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return dict(
        max_steps=steps(job, n),
        per_device_train_batch_size=max(1, min(t["batch_size"], n) // world),
        max_grad_norm=o["max_grad_norm"] if o["max_grad_norm"] > 0 else 1e9,
        seed=job["seed"] % 2**32,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
    )


class ChainedEpochs(torch.utils.data.Sampler):
    """autodidact's order of examples: a fresh permutation every epoch, and batches that run
    on into the next epoch's (never a short last batch)."""

    def __init__(self, n, total, seed):
        self.n, self.total, self.seed = n, total, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        left = self.total
        while left > 0:
            perm = torch.randperm(self.n, generator=g).tolist()[:left]
            left -= len(perm)
            yield from perm

    def __len__(self):
        return self.total


def batched_as_autodidact(trainer_class, job, n):
    """`trainer_class` drawing its batches in [`ChainedEpochs`] order."""

    class Trainer(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            rows = len(train_dataset if train_dataset is not None else self.train_dataset)
            batch = min(job["train"]["batch_size"], rows)
            return ChainedEpochs(rows, steps(job, n) * batch, job["seed"] % 2**32)

    return Trainer


def adamw(job, model):
    """autodidact's AdamW: PyTorch's betas and eps, weight decay on matrices and embeddings
    only."""
    o = job["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": o["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=o["lr"], betas=(0.9, 0.999), eps=1e-8)


def schedule(job, total):
    """autodidact's learning-rate schedule over `total` updates, as a factor of lr for update
    s (0-based): (s+1)/W during W warm-up updates, then a cosine from 1 to min_lr_ratio at
    the last update."""
    o = job["optimizer"]
    warm, floor = min(o["warmup_steps"], total), o["min_lr_ratio"]

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        span = total - warm
        if span == 0 or s >= total:
            return floor
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warm) / span))

    return factor


def optimizer(job, model, n):
    """autodidact's AdamW and its schedule over the job's steps, exactly."""
    opt = adamw(job, model)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule(job, steps(job, n)))


def finish(job, trainer, tok, n, metrics=None):
    """Saves the checkpoint where autodidact takes it and writes the report it reads."""
    trainer.save_model(job["output"])
    tok.save_pretrained(job["output"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tenth = max(1, len(losses) // 10)
    report = {
        "losses": losses,
        "stats": {
            "examples": n,
            "steps": trainer.state.global_step,
            "tokens": 0,
            "first_loss": sum(losses[:tenth]) / tenth if losses else 0.0,
            "last_loss": sum(losses[-tenth:]) / tenth if losses else 0.0,
        },
        "metrics": metrics or {},
    }
    if job.get("stats"):
        with open(job["stats"], "w") as f:
            json.dump(report, f, indent=2)
    print(f"{len(losses)} steps, loss {report['stats']['first_loss']:.4f} -> {report['stats']['last_loss']:.4f}")
