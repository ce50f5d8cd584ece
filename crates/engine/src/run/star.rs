//! Expert-iteration rounds: sample (with optional B-STaR temperature balancing), curate,
//! fine-tune.

use super::*;

impl Run {
    /// B-STaR balancing: samples the first `controller.probe_problems` pool problems at each
    /// of `controller.temperatures` (the same seeds for each, so temperatures are compared on
    /// common random numbers) and returns the temperature with the highest balance score
    /// (the first of equals), with every probed score.
    pub(super) fn balance_temperature(
        &self,
        policy: &mut dyn TrainablePolicy,
        round: u32,
        obs: &mut dyn Observer,
    ) -> Result<Decision> {
        let (ctl, st) = (&self.plan.config.controller, &self.plan.config.star);
        let pool = &self.problems.unlabeled;
        let probe = &pool[..ctl.probe_problems.min(pool.len())];
        obs.stage_started(
            &format!("r{round} balance"),
            (probe.len() * ctl.temperatures.len()) as u64,
        );
        let mut scores = Vec::new();
        for (i, &t) in ctl.temperatures.iter().enumerate() {
            let groups = sample_groups(
                policy,
                &*self.plan.task,
                probe,
                st.samples,
                &self.plan.sampling(t, st.top_p),
                self.seed(round, "probe"),
                &mut Silent,
            )?;
            let selected: Vec<Vec<bool>> = groups
                .iter()
                .map(|g| kept_mask(g, st.max_per_problem))
                .collect();
            let score = balance_score(&groups, &selected, self.plan.config.monitor.n_star);
            scores.push((t, score.unwrap_or(0.0)));
            obs.stage_progress(((i + 1) * probe.len()) as u64, 0);
        }
        let best = scores
            .iter()
            .copied()
            .reduce(|a, b| if b.1 > a.1 { b } else { a })
            .map(|(t, _)| t);
        obs.stage_finished(&format!(
            "r{round} balance: temperature {} ({})",
            best.map_or("–".into(), |t| t.to_string()),
            scores
                .iter()
                .map(|(t, b)| format!("{t}: {b:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(Decision {
            temperature: best,
            probe: scores,
            ..Decision::default()
        })
    }

    /// The round's `k` graded samples of every unlabeled problem.
    pub(super) fn sample_pool(
        &self,
        policy: &mut dyn TrainablePolicy,
        round: u32,
        k: usize,
        params: &autodidact_core::SamplingParams,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Group>> {
        obs.stage_started(
            &format!("r{round} sample"),
            self.problems.unlabeled.len() as u64,
        );
        sample_groups(
            policy,
            &*self.plan.task,
            &self.problems.unlabeled,
            k,
            params,
            self.seed(round, "sample"),
            obs,
        )
    }

    /// Sample k completions per unlabeled problem, verify, keep the correct ones.
    pub(super) fn sample_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        if self.plan.config.recipe.is_preference() {
            return self.pairs_stage(round, obs);
        }
        let cfg = &self.plan.config.star;
        let mut policy = self.load_policy(parent)?;
        let task = &*self.plan.task;
        let balance = self
            .plan
            .config
            .controller
            .balance
            .then(|| self.balance_temperature(&mut *policy, round, obs))
            .transpose()?;
        let temperature = balance
            .as_ref()
            .and_then(|d| d.temperature)
            .unwrap_or(cfg.temperature);
        let params = self.plan.sampling(temperature, cfg.top_p);
        let groups = self.sample_pool(&mut *policy, round, cfg.samples, &params, obs)?;
        let (mut examples, mut counts) = curate(&groups, cfg.max_per_problem);
        let selected: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| kept_mask(g, cfg.max_per_problem))
            .collect();
        let monitors = round_monitors(&groups, &selected, self.plan.config.monitor.n_star);
        let mut hinted_groups = Vec::new();
        if cfg.rationalize {
            let unsolved: Vec<Problem> = groups
                .iter()
                .filter(|g| !g.verdicts.iter().any(|v| v.is_correct()))
                .map(|g| g.problem.clone())
                .collect();
            let prompts: Vec<String> = unsolved
                .iter()
                .map(|p| task.hinted_prompt(p).unwrap_or_else(|| p.prompt.clone()))
                .collect();
            obs.stage_started(&format!("r{round} rationalize"), unsolved.len() as u64);
            hinted_groups = sample_prompts(
                &mut *policy,
                task,
                &unsolved,
                &prompts,
                cfg.samples,
                &params,
                self.seed(round, "rationalize"),
                obs,
            )?;
            counts.sampled_tokens += hinted_groups
                .iter()
                .flat_map(|g| &g.completions)
                .map(|c| c.tokens.len())
                .sum::<usize>();
            let extra = rationalized(&hinted_groups);
            counts.rationalized = extra.len();
            counts.kept += extra.len();
            examples.extend(extra);
        }
        let rd = RunDir::round_dir(round);
        let records: Vec<SampleRecord> = records(&groups, false)
            .chain(records(&hinted_groups, true))
            .collect();
        self.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &records)?;
        self.dir
            .write_jsonl(&format!("{rd}/train.jsonl"), &examples)?;
        obs.stage_finished(&format!(
            "r{round} sample: {} sampled, {} correct, {} problems solved, {} kept ({} distinct, {} rationalized)",
            counts.sampled, counts.correct, counts.solved, counts.kept, counts.distinct, counts.rationalized
        ));
        let mut m = self.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(json!({"star": cfg}));
        m.counts = Some(counts);
        m.metrics = Some(monitors);
        m.controller = balance;
        self.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        self.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        self.write_manifest(&m)
    }

    /// Fine-tune on the round's curated set.
    pub(super) fn train_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        if self.plan.config.recipe.is_preference() {
            return self.pref_train_stage(round, obs);
        }
        let cfg = &self.plan.config.star;
        let init = match cfg.restart_from {
            RestartFrom::Seed => 0,
            RestartFrom::Previous => parent,
        };
        let mut policy = self.load_policy(init)?;
        let examples: Vec<Example> =
            self.read_recorded(round, &format!("{}/train.jsonl", RunDir::round_dir(round)))?;
        let stats = if examples.is_empty() {
            obs.note(&format!("round {round}: no correct samples to train on; its model is its initial checkpoint"));
            TrainStats::default()
        } else {
            obs.stage_started(
                &format!("r{round} train"),
                steps_for(&cfg.train, examples.len()),
            );
            let stats = fit_sft(
                &mut *policy,
                &examples,
                &cfg.train,
                self.seed(round, "train"),
                obs,
                &mut |_, _, _| Ok(()),
            )?;
            obs.stage_finished(&format!(
                "r{round} train: {} examples, {} steps, loss {:.3} → {:.3}",
                stats.examples, stats.steps, stats.first_loss, stats.last_loss
            ));
            stats
        };
        let mut m = self.manifest(round)?;
        m.init_checkpoint = Some(RunDir::checkpoint_dir(init));
        m.train = Some(stats);
        self.save_checkpoint(&*policy, round, &mut m)?;
        self.write_manifest(&m)
    }
}
