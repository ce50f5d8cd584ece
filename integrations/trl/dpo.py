"""The DPO family on an autodidact training job with TRL's DPOTrainer.

    accelerate launch integrations/trl/dpo.py --config {config}

The job's dataset has `prompt`/`chosen`/`rejected` lines. As in autodidact's own trainer:
the job's loss (`sigmoid`, `ipo`, `hinge`, `robust`, ... under TRL's names), `beta` and
`label_smoothing`; an NLL term on the chosen completions weighted `sft_coef` (TRL's
`loss_type = [loss, "sft"]`); the reference model the job names (the starting checkpoint
itself when it names that); the job's AdamW and learning-rate schedule. What differs: TRL
has no per-pair weights (ScPO's vote margins; `dpo-verified` pairs all weigh 1), and no
judge demonstrations beside the pairs (`self-rewarding`): this script refuses such jobs.
"""

import sys

from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from common import arguments, batched_as_autodidact, examples, finish, load, optimizer, read_job, scratch


def main():
    train(read_job(sys.argv))


def train(job):
    if job["objective"] != "dpo":
        sys.exit(f"dpo.py trains dpo jobs; this one is {job['objective']} (use sft.py)")
    if job.get("judge"):
        sys.exit("dpo.py does not train judge demonstrations beside the pairs (self-rewarding); train that recipe natively")
    pairs = examples(job["data"])
    if any(abs(p.get("weight", 1.0) - 1.0) > 1e-6 for p in pairs):
        sys.exit("these pairs carry weights other than 1 (scpo's vote margins), which TRL's DPO loss has no place for; train natively, or set pref.weight_by_margin = false")
    model, tok = load(job)
    ref = None
    if job["reference"] != job["model"]:
        ref = AutoModelForCausalLM.from_pretrained(job["reference"], dtype=model.dtype)
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    losses = [job["loss"]] + (["sft"] if job["sft_coef"] > 0 else [])
    weights = [1.0] + ([job["sft_coef"]] if job["sft_coef"] > 0 else [])
    args = DPOConfig(
        output_dir=scratch(),
        beta=job["beta"],
        label_smoothing=job["label_smoothing"],
        loss_type=losses,
        loss_weights=weights,
        max_length=model.config.max_position_embeddings,
        **arguments(job, len(rows)),
    )
    trainer = batched_as_autodidact(DPOTrainer, job, len(rows))(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        optimizers=optimizer(job, model, len(rows)),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    metrics = {
        k: sum(h[k] for h in logged) / len(logged)
        for k in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
        if logged and k in logged[0]
    }
    finish(job, trainer, tok, len(rows), metrics)


if __name__ == "__main__":
    main()
