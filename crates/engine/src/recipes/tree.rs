//! Value-guided tree search over steps (`tree-search`): traces found by a search whose nodes
//! are step prefixes, valued by continuations, then fine-tuned on as star does.
//!
//! Each round searches a tree for every unlabeled problem. A node is a prefix of whole steps
//! (the root is the empty prefix). Expanding a node samples `rollouts` continuations of it to
//! the end, which costs `rollouts` samples and does two things:
//! - each continuation is a complete trace, and the verifier grades it; the right ones are
//!   the round's training traces;
//! - each continuation's first step is a child of the node, and the continuation counts
//!   toward that child's value: the share of the continuations through it that were right.
//!
//! The search takes `expansions` steps per problem. Each step expands the unexpanded node of
//! highest value (a deeper node first among equals, then the earlier found); while no node
//! has value above 0, it expands the root again with fresh samples, which is sampling as star
//! does. A problem stops once it has `max_per_problem` distinct right traces (0: never).
//! With `expansions = 1` the recipe is star with `samples = rollouts`.
//!
//! How this differs from ReST-MCTS* (Zhang et al., 2024): there, a process reward model
//! trained on the search's own values guides an MCTS with UCT selection, and the value model
//! trains alongside the policy. Here the values are Monte Carlo estimates from the
//! continuations alone (no value model), the selection is greedy best-first, and only the
//! policy trains, on the distinct right traces (SFT).

use super::star::{curate, kept_mask};
use super::{resolve, section, Column, Family, Format, Recipe, Sections};
use crate::config::{
    check_train, Budget, Checkpoint, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig,
};
use crate::monitor::round_monitors;
use crate::progress::{Observer, Offset};
use crate::run::{records, Run, SampleRecord};
use crate::sampling::{add_graded, derive_seed, empty_groups, sample_rows, Row};
use crate::steps::StepPattern;
use crate::store::RunDir;
use crate::{Error, Result};
use autodidact_core::rng::fnv1a;
use autodidact_core::{Group, Policy, Problem, SamplingParams, Task};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Value-guided tree search (`[tree]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TreeConfig {
    /// Rounds after the seed stage.
    pub rounds: u32,
    /// Unlabeled training problems searched every round.
    pub problems: usize,
    /// Node expansions per problem and round.
    pub expansions: usize,
    /// Continuations per expansion (its cost in samples). `sampling.samples` is not read.
    pub rollouts: usize,
    /// The continuations' temperature and nucleus.
    pub sampling: SamplingConfig,
    /// A regular expression after each match of which a step ends (default: the task's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_pattern: Option<String>,
    /// Distinct right traces per problem at which its search stops, and the most trained on
    /// (0: search every expansion, train on every distinct right trace).
    pub max_per_problem: usize,
    pub restart_from: Checkpoint,
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            expansions: 4,
            rollouts: 4,
            sampling: SamplingConfig::default(),
            step_pattern: None,
            max_per_problem: 0,
            restart_from: Checkpoint::Previous,
            train: TrainConfig {
                epochs: Some(4.0),
                ..TrainConfig::default()
            },
            optimizer: OptimizerConfig::default(),
        }
    }
}

/// The tree-search family: recipe `tree-search`, section `[tree]`.
pub struct TreeSearch;

impl Family for TreeSearch {
    fn recipes(&self) -> &'static [&'static str] {
        &["tree-search"]
    }
    fn sections(&self) -> &'static [&'static str] {
        &["tree"]
    }
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value> {
        resolve::<TreeConfig>(name, value)
    }
    fn build(&self, _recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>> {
        let cfg: TreeConfig = section(sections, "tree")?;
        for (key, v) in [
            ("tree.problems", cfg.problems),
            ("tree.expansions", cfg.expansions),
            ("tree.rollouts", cfg.rollouts),
        ] {
            if v == 0 {
                return Err(Error::config(key, "must be at least 1"));
            }
        }
        if let Some(p) = &cfg.step_pattern {
            StepPattern::new("tree.step_pattern", p)?;
        }
        cfg.sampling.check("tree")?;
        check_train("tree.train", &cfg.train)?;
        cfg.optimizer.check("tree")?;
        Ok(Arc::new(Tree { cfg }))
    }
}

/// The tree search with its settings.
pub struct Tree {
    cfg: TreeConfig,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "solved",
        key: "tree/solved",
        format: Format::Count,
    },
    Column {
        header: "kept",
        key: "tree/kept",
        format: Format::Count,
    },
];

impl Recipe for Tree {
    fn name(&self) -> &'static str {
        "tree-search"
    }
    fn rounds(&self) -> u32 {
        self.cfg.rounds
    }
    fn pool(&self) -> (usize, String) {
        (self.cfg.problems, "tree.problems".into())
    }
    fn round_stages(&self) -> &'static [&'static str] {
        &["sample", "train"]
    }
    fn run_stage(
        &self,
        stage: &str,
        round: u32,
        run: &mut Run,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        match stage {
            "sample" => self.sample_stage(run, round, obs),
            _ => {
                let init = self.cfg.restart_from.round(run.parent(round)?);
                run.sft_stage(round, init, &self.cfg.train, &self.cfg.optimizer, obs)
            }
        }
    }
    fn check(&self, _config: &RunConfig, task: &dyn Task, budget: &Budget) -> Result<()> {
        let c = &self.cfg;
        StepPattern::for_task("tree.step_pattern", c.step_pattern.as_deref(), task)?;
        budget.batch("tree.train.batch_size", c.train.batch_size)?;
        budget.held(
            "tree.problems",
            c.problems,
            "tree.expansions × tree.rollouts",
            (c.expansions * c.rollouts) as u64,
        )
    }
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }
}

impl Tree {
    /// Searches every pool problem's tree and writes the distinct right traces found as the
    /// round's training set, with every continuation sampled as its samples.
    fn sample_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let cfg = &self.cfg;
        let parent = run.parent(round)?;
        let mut policy = run.load_policy(parent)?;
        let task = &*run.plan.task;
        let pattern =
            StepPattern::for_task("tree.step_pattern", cfg.step_pattern.as_deref(), task)?;
        let params = run.plan.sampling(&cfg.sampling);
        let problems = run.problems.unlabeled.clone();
        obs.stage_started(
            &format!("r{round} tree search"),
            (problems.len() * cfg.expansions) as u64,
        );
        let search = Search {
            pattern: &pattern,
            rollouts: cfg.rollouts,
            expansions: cfg.expansions,
            max_per_problem: cfg.max_per_problem,
            params: &params,
            seed: run.seed(round, "tree"),
        };
        let found = search.run(&mut *policy, task, &problems, obs)?;
        // The distinct right traces, kept as star keeps its samples.
        let (examples, counts) = curate(&found.groups, cfg.max_per_problem, None);
        let selected: Vec<Vec<bool>> = found
            .groups
            .iter()
            .map(|g| kept_mask(g, cfg.max_per_problem, None))
            .collect();
        let solved = counts.solved;
        let mut metrics = round_monitors(&found.groups, &selected, run.plan.config.monitor.n_star);
        metrics.extend(found.metrics());
        metrics.extend([
            ("tree/solved".to_string(), solved as f64),
            ("tree/kept".to_string(), examples.len() as f64),
            (
                "rollout/sampled_tokens".to_string(),
                counts.sampled_tokens as f64,
            ),
        ]);
        let rd = RunDir::round_dir(round);
        let samples: Vec<SampleRecord> = records(&found.groups, false).collect();
        run.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &samples)?;
        run.dir
            .write_jsonl(&format!("{rd}/train.jsonl"), &examples)?;
        obs.stage_finished(&format!(
            "r{round} tree search: {solved} of {} problems solved, {} traces kept, {:.1} expansions and {:.2} mean depth per problem",
            problems.len(),
            examples.len(),
            metrics["tree/expansions"],
            metrics["tree/mean_depth"],
        ));
        let mut m = run.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(json!({"tree": cfg}));
        m.counts = Some(json!({"solved": solved, "kept": examples.len()}));
        m.metrics = Some(metrics);
        run.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        run.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        run.write_manifest(&m)
    }
}

/// A node of a problem's tree: a prefix of whole steps, with the continuations through it.
#[derive(Clone, Debug, PartialEq)]
struct Node {
    prefix: String,
    /// Continuations through it, and the right ones among them.
    seen: u32,
    right: u32,
    /// Steps in the prefix.
    depth: usize,
    expanded: bool,
}

impl Node {
    fn value(&self) -> f64 {
        self.right as f64 / self.seen.max(1) as f64
    }
}

/// One problem's tree (node 0 is the root, the empty prefix).
#[derive(Clone, Debug, PartialEq)]
struct ProblemTree {
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    expansions: usize,
}

impl ProblemTree {
    fn new() -> Self {
        Self {
            nodes: vec![Node {
                prefix: String::new(),
                seen: 0,
                right: 0,
                depth: 0,
                expanded: false,
            }],
            index: HashMap::from([(String::new(), 0)]),
            expansions: 0,
        }
    }

    /// The node to expand next: the unexpanded node of highest value (deeper first among
    /// equals, then the earlier found), or the root again while no node has value above 0.
    fn select(&self) -> usize {
        if !self.nodes[0].expanded {
            return 0;
        }
        let best = (1..self.nodes.len())
            .filter(|&i| !self.nodes[i].expanded && self.nodes[i].right > 0)
            .max_by(|&a, &b| {
                let (x, y) = (&self.nodes[a], &self.nodes[b]);
                x.value()
                    .total_cmp(&y.value())
                    .then(x.depth.cmp(&y.depth))
                    .then(b.cmp(&a))
            });
        best.unwrap_or(0)
    }

    /// Records a continuation `text` of node `at` and whether its trace was right: it counts
    /// toward the node and toward the child its first step makes (when more steps follow).
    fn record(&mut self, at: usize, text: &str, right: bool, pattern: &StepPattern) {
        let ends = pattern.ends(text);
        let node = &mut self.nodes[at];
        node.seen += 1;
        node.right += right as u32;
        if ends.len() < 2 {
            return;
        }
        let prefix = format!("{}{}", node.prefix, &text[..ends[0]]);
        let depth = node.depth + 1;
        let child = match self.index.get(&prefix) {
            Some(&c) => c,
            None => {
                self.nodes.push(Node {
                    prefix: prefix.clone(),
                    seen: 0,
                    right: 0,
                    depth,
                    expanded: false,
                });
                self.index.insert(prefix, self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        let c = &mut self.nodes[child];
        c.seen += 1;
        c.right += right as u32;
    }
}

/// A search's settings.
struct Search<'a> {
    pattern: &'a StepPattern,
    rollouts: usize,
    expansions: usize,
    max_per_problem: usize,
    params: &'a SamplingParams,
    seed: u64,
}

/// What a search found: per problem, every continuation as a whole trace (its group) and
/// the tree.
struct Found {
    groups: Vec<Group>,
    trees: Vec<ProblemTree>,
}

impl Found {
    /// `tree/expansions` and `tree/mean_depth` (of the expanded nodes), per problem.
    fn metrics(&self) -> BTreeMap<String, f64> {
        let n = self.trees.len().max(1) as f64;
        let (mut depth, mut expanded) = (0usize, 0usize);
        for t in &self.trees {
            for node in t.nodes.iter().filter(|n| n.expanded) {
                depth += node.depth;
                expanded += 1;
            }
        }
        BTreeMap::from([
            (
                "tree/expansions".to_string(),
                self.trees.iter().map(|t| t.expansions).sum::<usize>() as f64 / n,
            ),
            (
                "tree/mean_depth".to_string(),
                depth as f64 / expanded.max(1) as f64,
            ),
            (
                "tree/nodes".to_string(),
                self.trees.iter().map(|t| t.nodes.len()).sum::<usize>() as f64 / n,
            ),
        ])
    }
}

impl Search<'_> {
    /// Searches every problem's tree, all problems' expansions of one step sampled together.
    /// Continuation j of expansion e of a problem is seeded by `(seed, problem id, e, j)`.
    fn run(
        &self,
        policy: &mut dyn Policy,
        task: &dyn Task,
        problems: &[Problem],
        obs: &mut dyn Observer,
    ) -> Result<Found> {
        let mut trees: Vec<ProblemTree> = problems.iter().map(|_| ProblemTree::new()).collect();
        let mut groups = empty_groups(problems);
        let (mut done, mut tokens) = (0u64, 0u64);
        for e in 0..self.expansions {
            let mut rows = Vec::new();
            let mut at = Vec::new();
            for (i, (p, t)) in problems.iter().zip(&mut trees).enumerate() {
                let g = &groups[i];
                if self.max_per_problem > 0 && g.distinct_correct().len() >= self.max_per_problem {
                    continue;
                }
                let node = t.select();
                t.nodes[node].expanded = true;
                t.expansions += 1;
                let prefix = t.nodes[node].prefix.clone();
                let used = policy.tokenizer().encode(&prefix)?.len();
                for j in 0..self.rollouts as u64 {
                    rows.push(Row {
                        problem: i,
                        prompt: format!("{}{prefix}", p.prompt),
                        prefix: prefix.clone(),
                        seed: derive_seed(
                            self.seed ^ fnv1a(p.id.as_bytes()),
                            0,
                            "tree",
                            ((e as u64) << 20) ^ j,
                        ),
                        max_new_tokens: self.params.max_new_tokens.saturating_sub(used).max(1),
                    });
                }
                at.push(node);
            }
            if rows.is_empty() {
                break;
            }
            let mut offset = Offset {
                inner: &mut *obs,
                done,
                tokens,
            };
            let graded = sample_rows(
                policy,
                task,
                problems,
                &rows,
                self.params,
                self.rollouts as u64,
                &mut offset,
            )?;
            done += at.len() as u64;
            tokens += graded
                .iter()
                .map(|(c, _)| c.tokens.len() as u64)
                .sum::<u64>();
            // Row r continued the node expanded by its problem in this step.
            for (r, (row, (c, v))) in rows.iter().zip(&graded).enumerate() {
                let node = at[r / self.rollouts];
                trees[row.problem].record(node, &c.text, v.is_correct(), self.pattern);
            }
            add_graded(&mut groups, &rows, graded);
        }
        Ok(Found { groups, trees })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: a continuation counts toward its node and toward the child its first step
    /// makes; the search expands the unexpanded node of highest value, deeper first among
    /// equals, and the root again while no node has value above 0.
    #[test]
    fn issue20_the_search_expands_the_most_valuable_prefix() {
        let pattern = StepPattern::new("p", autodidact_tasks::TRACE_STEPS).unwrap();
        let mut t = ProblemTree::new();
        assert_eq!(t.select(), 0, "the root first");
        t.nodes[0].expanded = true;
        // From the root: all wrong so far: the root again.
        t.record(0, "d;#no", false, &pattern);
        assert_eq!(t.select(), 0);
        t.record(0, "a;b;#ok", true, &pattern);
        t.record(0, "a;c;#no", false, &pattern);
        t.record(0, "ok", true, &pattern);
        let names: Vec<&str> = t.nodes.iter().map(|n| n.prefix.as_str()).collect();
        assert_eq!(names, ["", "d;", "a;"], "a single step makes no child");
        let a = t.index["a;"];
        assert_eq!((t.nodes[0].seen, t.nodes[0].right), (4, 2));
        assert_eq!(
            (t.nodes[a].seen, t.nodes[a].right, t.nodes[a].depth),
            (2, 1, 1)
        );
        assert_eq!(t.select(), a);
        t.nodes[a].expanded = true;
        // From `a;`: its children are two steps deep.
        t.record(a, "b;#ok", true, &pattern);
        t.record(a, "e;#no", false, &pattern);
        let ab = t.index["a;b;"];
        assert_eq!((t.nodes[ab].depth, t.nodes[ab].value()), (2, 1.0));
        assert_eq!((t.nodes[a].seen, t.nodes[a].right), (4, 2));
        assert_eq!(t.select(), ab);
        // Equal values: the deeper node first.
        t.nodes[ab].expanded = true;
        t.record(0, "f;g;#ok", true, &pattern);
        t.record(t.index["a;b;"], "h;#ok", true, &pattern);
        let (f, abh) = (t.index["f;"], t.index["a;b;h;"]);
        assert_eq!(t.nodes[f].value(), t.nodes[abh].value());
        assert_eq!(t.select(), abh);
    }
}
