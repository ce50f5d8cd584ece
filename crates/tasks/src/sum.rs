//! `a + b + c + …`, traced as running sums in one of several orders.
//!
//! Unlike `addition`, whose trace is unique, a sum of `terms` numbers can be worked in any
//! order: `12+34+56=` → `12+34=46;46+56=102#102` or `34+56=90;90+12=102#102`. Each problem's
//! reference solution uses an order fixed by a hash of the problem, so the labeled set shows
//! every order and a model trained on it samples different paths to the same answer — the
//! structure self-consistency (majority voting, ScPO) relies on. Each step adds two numbers
//! in one go (no column scratchpad), so a small model's errors are spread over steps and
//! orders rather than fixed per problem.

use crate::addition::{draw_operand, verify_integer};
use crate::{check_range, draw_problems};
use autodidact_core::{Problem, Result, Rng, Split, Task, Verdict};
use serde::{Deserialize, Serialize};

/// Settings of [`Sum`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SumConfig {
    /// Numbers to add (2..=6).
    pub terms: usize,
    /// Each is drawn uniformly from 0 ..= 10^digits − 1 (1..=6).
    pub digits: usize,
}

impl Default for SumConfig {
    fn default() -> Self {
        Self {
            terms: 3,
            digits: 2,
        }
    }
}

impl SumConfig {
    pub fn build(&self) -> Result<Sum> {
        check_range("sum", "terms", self.terms, 2..=6)?;
        check_range("sum", "digits", self.digits, 1..=6)?;
        Ok(Sum {
            terms: self.terms,
            digits: self.digits,
        })
    }
}

/// The sum of `terms` non-negative integers.
#[derive(Clone, Debug)]
pub struct Sum {
    terms: usize,
    digits: usize,
}

impl Sum {
    /// The running-sum trace of `xs` taken in `order` (indices into `xs`), then `#answer`.
    pub fn solution(xs: &[u128], order: &[usize]) -> String {
        let mut acc = xs[order[0]];
        let steps: Vec<String> = order[1..]
            .iter()
            .map(|&i| {
                let s = format!("{acc}+{}={}", xs[i], acc + xs[i]);
                acc += xs[i];
                s
            })
            .collect();
        format!("{}#{acc}", steps.join(";"))
    }

    fn problem(xs: &[u128]) -> (String, Problem) {
        let key = xs
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("+");
        // The reference order: a permutation fixed by the problem's key.
        let mut rng = Rng::new(autodidact_core::rng::fnv1a(key.as_bytes()));
        let mut order: Vec<usize> = (0..xs.len()).collect();
        rng.shuffle(&mut order);
        let problem = Problem {
            id: format!("sum:{key}"),
            prompt: format!("{key}="),
            answer: Some(xs.iter().sum::<u128>().to_string()),
            solution: Some(Self::solution(xs, &order)),
            meta: None,
            messages: None,
        };
        (key, problem)
    }
}

impl Task for Sum {
    fn name(&self) -> &str {
        "sum"
    }
    fn alphabet(&self) -> String {
        "0123456789+=;#[]".into()
    }
    fn step_pattern(&self) -> Option<&str> {
        Some(crate::TRACE_STEPS)
    }

    fn max_chars(&self) -> (usize, usize) {
        let (t, d) = (self.terms, self.digits);
        // A partial sum of up to 6 terms has at most d + 1 digits.
        let wide = d + 1;
        // prompt: t numbers, t − 1 `+`, `=`; hinted adds `[answer]`.
        let prompt = t * d + t + wide + 2;
        // each step `acc+x=sum;`, then `#answer`.
        let solution = (t - 1) * (2 * wide + d + 3) + 1 + wide;
        (prompt, solution)
    }
    fn problems(&self, split: Split, count: usize, seed: u64) -> Result<Vec<Problem>> {
        let (terms, digits) = (self.terms, self.digits);
        draw_problems(
            "sum",
            split,
            count,
            seed,
            10f64.powi((terms * digits) as i32),
            |rng| {
                let xs: Vec<u128> = (0..terms).map(|_| draw_operand(rng, digits)).collect();
                Self::problem(&xs)
            },
        )
    }
    fn verify(&self, problem: &Problem, completion: &str) -> Verdict {
        verify_integer(problem, completion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_core::Grade;

    #[test]
    fn traces_in_any_order_reach_the_answer() {
        assert_eq!(
            Sum::solution(&[12, 34, 56], &[0, 1, 2]),
            "12+34=46;46+56=102#102"
        );
        assert_eq!(
            Sum::solution(&[12, 34, 56], &[1, 2, 0]),
            "34+56=90;90+12=102#102"
        );
        let (_, p) = Sum::problem(&[12, 34, 56]);
        assert_eq!(p.prompt, "12+34+56=");
        assert_eq!(p.answer.as_deref(), Some("102"));
        let task = SumConfig::default().build().unwrap();
        assert_eq!(
            task.verify(&p, p.solution.as_deref().unwrap()).grade,
            Grade::Correct
        );
        assert_eq!(
            task.verify(&p, "34+56=90;90+12=102#102").grade,
            Grade::Correct
        );
        assert_eq!(
            task.verify(&p, "34+56=91;91+12=103#103").grade,
            Grade::Incorrect
        );
    }

    #[test]
    fn reference_orders_vary_across_problems_and_fit_the_budget() {
        let task = SumConfig::default().build().unwrap();
        let problems = task.problems(Split::Train, 60, 0).unwrap();
        let firsts: std::collections::HashSet<String> = problems
            .iter()
            .map(|p| {
                p.solution
                    .as_ref()
                    .unwrap()
                    .split('+')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        // Not always the first term first.
        let first_terms: std::collections::HashSet<String> = problems
            .iter()
            .map(|p| p.prompt.split('+').next().unwrap().to_string())
            .collect();
        assert!(firsts.len() > 1 && firsts != first_terms);
        let big = SumConfig {
            terms: 6,
            digits: 6,
        }
        .build()
        .unwrap();
        let (max_prompt, max_solution) = big.max_chars();
        for p in big.problems(Split::Train, 50, 1).unwrap() {
            assert!(p.prompt.len() + 2 + p.answer.as_ref().unwrap().len() <= max_prompt);
            assert!(p.solution.as_ref().unwrap().len() <= max_solution);
        }
        assert!(SumConfig {
            terms: 1,
            digits: 2
        }
        .build()
        .is_err());
    }
}
