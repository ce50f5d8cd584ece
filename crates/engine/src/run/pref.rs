//! Preference rounds: sample, score with the recipe's reward source, build pairs with the gold
//! truth beside them, train the DPO family.

use super::*;

impl Run {
    /// Sample k completions per problem, score them with the recipe's reward source, and
    /// build preference pairs; record the gold truth beside the proxy.
    pub(super) fn pairs_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        let c = &self.plan.config;
        let cfg = &c.pref;
        let mut policy = self.load_policy(parent)?;
        let task = &*self.plan.task;
        let params = self.plan.sampling(cfg.temperature, cfg.top_p);
        let mut groups = self.sample_pool(&mut *policy, round, cfg.samples, &params, obs)?;
        let mut metrics = BTreeMap::new();
        let scores = if c.recipe == Recipe::SelfRewarding {
            Some(self.self_judge(&mut *policy, round, &groups, &mut metrics, obs)?)
        } else {
            None
        };
        let (pairs, counts, proxy) = build_pairs(c.recipe, cfg, &groups, scores.as_deref());
        if let Some(proxy) = &proxy {
            for (g, p) in groups.iter_mut().zip(proxy) {
                g.rewards = p.clone();
            }
        }
        metrics.extend(truth_metrics(&groups, proxy.as_deref(), &pairs, &counts));
        let chosen: std::collections::HashSet<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.problem_id.as_str(), p.chosen.as_str()))
            .collect();
        let selected: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| {
                g.completions
                    .iter()
                    .map(|x| chosen.contains(&(g.problem.id.as_str(), x.text.as_str())))
                    .collect()
            })
            .collect();
        metrics.extend(round_monitors(&groups, &selected, c.monitor.n_star));
        if let (Recipe::Scpo, Some(shares)) = (c.recipe, &proxy) {
            metrics.extend(vote_metrics(&groups, shares));
        }
        let sampled_tokens: usize = groups
            .iter()
            .flat_map(|g| &g.completions)
            .map(|x| x.tokens.len())
            .sum();
        metrics.insert("rollout/sampled_tokens".into(), sampled_tokens as f64);
        let rd = RunDir::round_dir(round);
        // Judge examples for this round: the current model's samples of the labeled problems
        // and fresh corruptions of their solutions, labeled by the verifier, balanced.
        if c.recipe == Recipe::SelfRewarding && c.judge.samples_per_labeled > 0 {
            let labeled = sample_groups(
                &mut *policy,
                task,
                &self.problems.labeled,
                c.judge.samples_per_labeled,
                &params,
                self.seed(round, "judge-samples"),
                &mut Silent,
            )?;
            let judge = round_judge_examples(
                task,
                &labeled,
                c.judge.seed_negatives,
                self.seed(round, "judge"),
            )?;
            metrics.insert("judge/train_examples".into(), judge.len() as f64);
            self.dir.write_jsonl(&format!("{rd}/judge.jsonl"), &judge)?;
        }
        self.dir.write_jsonl(
            &format!("{rd}/samples.jsonl"),
            &records(&groups, false).collect::<Vec<_>>(),
        )?;
        self.dir.write_jsonl(&format!("{rd}/train.jsonl"), &pairs)?;
        obs.stage_finished(&format!(
            "r{round} pairs: {} pairs from {} problems ({} without a pair), chosen correct {:.2}, rejected correct {:.2}",
            counts.pairs,
            counts.groups,
            counts.groups_without_pair(),
            metrics["pairs/chosen_gold_accuracy"],
            metrics["pairs/rejected_gold_accuracy"],
        ));
        let mut m = self.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(
            json!({"pref": cfg, "judge": (c.recipe == Recipe::SelfRewarding).then_some(&c.judge)}),
        );
        m.metrics = Some(metrics);
        self.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        self.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        if self.dir.path(&format!("{rd}/judge.jsonl")).exists() {
            self.hash_into(&mut m, &format!("{rd}/judge.jsonl"))?;
        }
        self.write_manifest(&m)
    }

    /// DPO-family training on the round's pairs, from the previous round's model.
    pub(super) fn pref_train_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        let c = &self.plan.config;
        let cfg = &c.pref;
        let rd = RunDir::round_dir(round);
        let pairs: Vec<Pair> = self.read_recorded(round, &format!("{rd}/train.jsonl"))?;
        let judge_rel = format!("{rd}/judge.jsonl");
        let judge: Vec<Example> = if self.dir.path(&judge_rel).exists() {
            self.read_recorded(round, &judge_rel)?
        } else {
            Vec::new()
        };
        let mut policy = self.load_policy(parent)?;
        let ref_round = match cfg.reference {
            Reference::Seed => 0,
            Reference::Previous => parent,
        };
        let mut m = self.manifest(round)?;
        let mut metrics = m.metrics.take().unwrap_or_default();
        let stats = if pairs.is_empty() {
            obs.note(&format!(
                "round {round}: no preference pairs to train on; its model is its initial checkpoint"
            ));
            TrainStats::default()
        } else {
            let refs = if ref_round == parent {
                reference_logps(&mut *policy, &pairs)?
            } else {
                reference_logps(&mut *self.load_policy(ref_round)?, &pairs)?
            };
            obs.stage_started(
                &format!("r{round} {}", cfg.loss.name()),
                steps_for(&cfg.train, pairs.len()),
            );
            let fit = fit_dpo(
                &mut *policy,
                &pairs,
                &refs,
                &judge,
                c.judge.coef,
                cfg,
                self.seed(round, "train"),
                obs,
            )?;
            obs.stage_finished(&format!(
                "r{round} {}: {} pairs, {} steps, loss {:.3} → {:.3}, reward accuracy {:.2}",
                cfg.loss.name(),
                pairs.len(),
                fit.stats.steps,
                fit.stats.first_loss,
                fit.stats.last_loss,
                fit.metrics["rewards/accuracies"],
            ));
            metrics.extend(fit.metrics);
            fit.stats
        };
        m.init_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings
            .get_or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("settings are an object")
            .insert(
                "reference_checkpoint".into(),
                json!(RunDir::checkpoint_dir(ref_round)),
            );
        m.metrics = Some(metrics);
        m.train = Some(stats);
        self.save_checkpoint(&*policy, round, &mut m)?;
        self.write_manifest(&m)
    }

    /// The self-judge's score of every sample (one row per group), with its agreement with
    /// the verifier in `metrics` (`judge/*`) and the diagnostic length bias applied.
    fn self_judge(
        &self,
        policy: &mut dyn TrainablePolicy,
        round: u32,
        groups: &[Group],
        metrics: &mut BTreeMap<String, f64>,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Vec<f32>>> {
        let items: Vec<(&str, &str)> = groups
            .iter()
            .flat_map(|g| {
                g.completions
                    .iter()
                    .map(|x| (g.problem.prompt.as_str(), x.text.as_str()))
            })
            .collect();
        obs.stage_started(&format!("r{round} judge"), items.len() as u64);
        let flat = judge_scores(policy, &items)?;
        obs.stage_progress(items.len() as u64, 0);
        let truth: Vec<bool> = groups
            .iter()
            .flat_map(|g| g.verdicts.iter().map(|v| v.is_correct()))
            .collect();
        let js = JudgeStats::of(&flat, &truth);
        for (k, v) in [
            ("judge/accuracy", js.accuracy()),
            ("judge/precision", js.precision()),
            ("judge/recall", js.recall()),
            ("judge/mean_score", js.mean_score),
        ] {
            // Precision with nothing judged correct (or recall with nothing correct) is
            // undefined: left out rather than written as NaN.
            if v.is_finite() {
                metrics.insert(k.to_string(), v);
            }
        }
        // The injected length bias (a diagnostic, `judge.length_weight`).
        let w = self.plan.config.judge.length_weight;
        let max_len = self.plan.max_new_tokens.max(1) as f32;
        let lengths = groups
            .iter()
            .flat_map(|g| g.completions.iter().map(|x| x.tokens.len() as f32));
        let flat: Vec<f32> = flat
            .iter()
            .zip(lengths)
            .map(|(&s, len)| (1.0 - w) * s + w * len / max_len)
            .collect();
        Ok(flat
            .chunks(self.plan.config.pref.samples)
            .map(|s| s.to_vec())
            .collect())
    }
}
