//! The held-out evaluation of every round, the drift monitors, and the controller's decision.

use super::*;

impl Run {
    /// `drift/*` of the round's model on its evaluation samples of the first
    /// `monitor.drift_problems` held-out problems: KL to M0 and to the previous round (k3,
    /// summed over each completion's tokens, see [`crate::monitor::mean_kl`]), mean completion
    /// length and mean token entropy.
    pub(super) fn drift(
        &self,
        round: u32,
        policy: &mut dyn TrainablePolicy,
        sampled: &[Group],
    ) -> Result<BTreeMap<String, f64>> {
        let mut m = BTreeMap::new();
        let n = self.plan.config.monitor.drift_problems.min(sampled.len());
        // A served model's log-probs of given text are not available.
        if n == 0 || !self.plan.model.trains() {
            return Ok(m);
        }
        let examples: Vec<Example> = sampled[..n]
            .iter()
            .flat_map(|g| {
                g.completions.iter().map(|c| Example {
                    prompt: g.problem.prompt.clone(),
                    completion: c.text.clone(),
                    completion_tokens: Some(c.tokens.clone()),
                })
            })
            .collect();
        let (mut own, mut tokens, mut entropy) = (Vec::new(), 0usize, 0.0f64);
        let rows = self.plan.score_rows.min(256);
        for chunk in examples.chunks(rows) {
            let scores = policy.forward(chunk, true)?;
            for row in scores.entropies.iter().flatten() {
                tokens += row.len();
                entropy += row.iter().map(|&h| h as f64).sum::<f64>();
            }
            own.extend(scores.logprobs);
        }
        m.insert(
            "drift/mean_length".into(),
            tokens as f64 / examples.len() as f64,
        );
        m.insert("drift/token_entropy".into(), entropy / tokens.max(1) as f64);
        let mut kl_to = |key: &str, r: u32| -> Result<()> {
            let theirs =
                crate::trainer::chunked_logprobs(&mut *self.load_policy(r)?, &examples, rows)?;
            m.insert(key.into(), mean_kl(&own, &theirs));
            Ok(())
        };
        if round > 0 {
            kl_to("drift/kl_to_seed", 0)?;
            kl_to("drift/kl_to_previous", self.parent(round)?)?;
        }
        Ok(m)
    }

    /// Held-out evaluation of the round's model; appends the round's metrics line.
    pub(super) fn eval_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let e = &self.plan.config.eval;
        let mut policy = self.load_policy(round)?;
        let settings = EvalSettings::of_run(e, self.plan.config.seed, self.plan.greedy());
        obs.stage_started(
            &format!("r{round} eval"),
            2 * self.problems.eval.len() as u64,
        );
        let (report, sampled) = evaluate_with_samples(
            &mut *policy,
            &*self.plan.task,
            &self.problems.eval,
            &settings,
            obs,
        )?;
        let drift = self.drift(round, &mut *policy, &sampled.sampled)?;
        let proxy = match &self.plan.reward {
            Some(r) => r.eval_metrics(&sampled.sampled)?,
            None => BTreeMap::new(),
        };
        let serving = policy.take_serving_stats();
        obs.stage_finished(&format!(
            "r{round} eval: pass@1 {:.3}  pass@{k} {:.3}  maj@{k} {:.3}",
            report.pass_at_1,
            report.pass_at_k,
            report.maj_at_k,
            k = report.k
        ));
        let rel = format!("{}/eval.json", RunDir::round_dir(round));
        self.dir.write_json(&rel, &report)?;
        let mut m = self.manifest(round)?;
        m.eval = Some(summary(&report));
        let recipe = self.plan.recipe.clone();
        recipe.evaluate(self, round, &mut *policy, &sampled, &mut m, obs)?;
        let metrics = m.metrics.get_or_insert_with(BTreeMap::new);
        metrics.extend(drift);
        metrics.extend(proxy);
        metrics.extend(serving);
        metrics.insert(
            "gap/maj_minus_pass1".into(),
            report.maj_at_k - report.pass_at_1,
        );
        self.hash_into(&mut m, &rel)?;
        let mut line = json!({
            "round": round,
            "eval/pass@1": report.pass_at_1,
            "eval/pass@k": report.pass_at_k,
            "eval/maj@k": report.maj_at_k,
            "eval/k": report.k,
            "eval/mean_sample_accuracy": report.mean_sample_accuracy,
        });
        let obj = line.as_object_mut().expect("an object");
        self.plan.recipe.eval_line(&m, obj);
        for (k, v) in m.metrics.iter().flatten().filter(|(_, v)| v.is_finite()) {
            obj.insert(k.clone(), json!(v));
        }
        if let Some(t) = &m.train {
            obj.insert("train/steps".into(), json!(t.steps));
            obj.insert("train/tokens".into(), json!(t.tokens));
            obj.insert("train/first_loss".into(), json!(t.first_loss));
            obj.insert("train/last_loss".into(), json!(t.last_loss));
        }
        if let Some(t) = m.controller.as_ref().and_then(|c| c.temperature) {
            obj.insert("controller/temperature".into(), json!(t));
        }
        // The controller reads every round so far, this one included, and decides.
        if round > 0 {
            let mut history: Vec<BTreeMap<String, f64>> = self
                .dir
                .metrics()?
                .iter()
                .filter(|l| l.get("round").is_some())
                .map(numbers)
                .collect();
            history.push(numbers(&line));
            if let Some(v) = alarm_value(AlarmKind::ProxyGoldDivergence, &history) {
                // The proxy–gold divergence as a series of its own.
                line.as_object_mut()
                    .expect("an object")
                    .insert("proxy/divergence".into(), json!(v));
            }
            let ctl = &self.plan.config.controller;
            let d = decide(&history, &ctl.alarms, ctl.patience);
            for a in &d.alarms {
                obs.note(&format!(
                    "round {round}: alarm {} (action: {:?})",
                    a.message, a.action
                ));
            }
            if let Some(p) = d.next_parent {
                obs.note(&format!(
                    "round {}: starts from round {p}, the best so far (rollback)",
                    round + 1
                ));
            }
            line.as_object_mut()
                .expect("an object")
                .insert("controller/alarms".into(), json!(d.alarms.len()));
            let c = m.controller.get_or_insert_with(Decision::default);
            c.alarms = d.alarms;
            c.stop = d.stop;
            c.next_parent = d.next_parent;
        }
        self.write_manifest(&m)?;
        self.dir.append_metrics(&line)
    }
}
