"""Supervised fine-tuning of an autodidact training job with TRL's SFTTrainer.

    accelerate launch integrations/trl/sft.py --config {config}

The job's dataset has `prompt`/`completion` lines. As in autodidact's own trainer, the loss
is the token mean over the batch of the completion's tokens and the `<eos>` after it (the
prompt, after `<bos>`, gets none), with the job's AdamW and learning-rate schedule, and batches drawn in autodidact's way
(permutations chained across epochs, every batch full). What differs: the permutations
come from PyTorch's generator, not autodidact's, so the batches hold other examples.
"""

import sys

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from common import arguments, batched_as_autodidact, examples, finish, load, optimizer, read_job, scratch


def main():
    train(read_job(sys.argv))


def train(job):
    if job["objective"] != "sft":
        sys.exit(f"sft.py trains sft jobs; this one is {job['objective']} (use dpo.py)")
    model, tok = load(job)
    rows = [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples(job["data"])]
    args = SFTConfig(
        output_dir=scratch(),
        completion_only_loss=True,
        max_length=model.config.max_position_embeddings,
        **arguments(job, len(rows)),
    )
    trainer = batched_as_autodidact(SFTTrainer, job, len(rows))(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        optimizers=optimizer(job, model, len(rows)),
    )
    trainer.train()
    finish(job, trainer, tok, len(rows))


if __name__ == "__main__":
    main()
