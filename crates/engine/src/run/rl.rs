//! Policy-gradient rounds.

use super::*;

impl Run {
    /// A round of policy-gradient steps on fresh rollouts.
    pub(super) fn rl_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        let cfg = &self.plan.config.rl;
        let mut policy = self.load_policy(parent)?;
        let ref_round = match cfg.reference {
            Reference::Seed => 0,
            Reference::Previous => parent,
        };
        let mut reference = if cfg.beta > 0.0 {
            Some(self.load_policy(ref_round)?)
        } else {
            None
        };
        let previous = self.dir.path(&RunDir::checkpoint_dir(parent));
        let cx = RlContext {
            previous_checkpoint: (parent > 0).then_some(previous.as_path()),
            task: &*self.plan.task,
            pool: &self.problems.unlabeled,
            estimator: self
                .plan
                .config
                .recipe
                .estimator(cfg)
                .expect("a policy-gradient recipe"),
            sampling: self.plan.sampling(cfg.temperature, cfg.top_p),
            seed: self.plan.config.seed,
            round,
            n_star: self.plan.config.monitor.n_star,
        };
        obs.stage_started(
            &format!("r{round} {}", self.plan.config.recipe.name()),
            cfg.steps_per_round as u64,
        );
        let out = rl_round(
            &mut *policy,
            reference
                .as_mut()
                .map(|r| &mut **r as &mut dyn autodidact_core::Policy),
            cfg,
            &cx,
            obs,
        )?;
        let get = |k: &str| out.metrics.get(k).copied().unwrap_or(f64::NAN);
        obs.stage_finished(&format!(
            "r{round} {}: {} steps, reward {:.3}, zero-std groups {:.2}, entropy {:.3}, clip {:.3}",
            self.plan.config.recipe.name(),
            cfg.steps_per_round,
            get("reward"),
            get("frac_reward_zero_std"),
            get("entropy"),
            get("clip_ratio/region_mean"),
        ));
        let rd = RunDir::round_dir(round);
        self.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &out.records)?;
        let mut m = self.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.init_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(
            json!({"rl": cfg, "reference_checkpoint": (cfg.beta > 0.0).then(|| RunDir::checkpoint_dir(ref_round))}),
        );
        m.metrics = Some(out.metrics);
        self.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        self.save_checkpoint(&*policy, round, &mut m)?;
        self.write_manifest(&m)
    }
}
