"""Any autodidact training job with TRL: `sft` jobs with SFTTrainer (sft.py), `dpo` jobs with
DPOTrainer (dpo.py), `pg` jobs (a policy-gradient round's rollout steps) with the clipped
surrogate on TRL's utilities (pg.py). One command serves a whole run, whose seed stage is
SFT and whose rounds may be DPO or policy gradient:

    [train]
    backend = "external"
    command = ["accelerate", "launch", "integrations/trl/train.py", "--config", "{config}"]
"""

import sys

import dpo
import pg
import sft
from common import read_job


def main():
    job = read_job(sys.argv)
    trainers = {"sft": sft.train, "dpo": dpo.train, "pg": pg.train}
    if job["objective"] not in trainers:
        sys.exit(f"no TRL trainer here for {job['objective']} jobs (only {', '.join(trainers)})")
    trainers[job["objective"]](job)


if __name__ == "__main__":
    main()
