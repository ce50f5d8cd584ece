//! `a × b` with small operands, traced by partial products.

use crate::addition::{digits_le, draw_operand, verify_integer};
use crate::{check_range, draw_problems};
use autodidact_core::{Problem, Result, Split, Task, Verdict};
use serde::{Deserialize, Serialize};

/// Settings of [`Multiplication`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiplicationConfig {
    /// The multiplicand has up to `digits` digits (1..=12).
    pub digits: usize,
    /// The multiplier has up to `multiplier_digits` digits (1..=6).
    pub multiplier_digits: usize,
}

impl Default for MultiplicationConfig {
    fn default() -> Self {
        Self {
            digits: 2,
            multiplier_digits: 1,
        }
    }
}

impl MultiplicationConfig {
    pub fn build(&self) -> Result<Multiplication> {
        check_range("multiplication", "digits", self.digits, 1..=12)?;
        check_range(
            "multiplication",
            "multiplier_digits",
            self.multiplier_digits,
            1..=6,
        )?;
        Ok(Multiplication {
            digits: self.digits,
            multiplier_digits: self.multiplier_digits,
        })
    }
}

/// Multiplication of two non-negative integers.
#[derive(Clone, Debug)]
pub struct Multiplication {
    digits: usize,
    multiplier_digits: usize,
}

impl Multiplication {
    /// The worked solution: one partial product per multiplier digit (right to left, with its
    /// place value), then `#product`.
    pub fn solution(a: u128, b: u128) -> String {
        let mut place = 1u128;
        let partials: Vec<String> = digits_le(b)
            .into_iter()
            .map(|d| {
                let m = d as u128 * place;
                place *= 10;
                format!("{a}*{m}={}", a * m)
            })
            .collect();
        format!("{}#{}", partials.join(";"), a * b)
    }
}

impl Task for Multiplication {
    fn name(&self) -> &str {
        "multiplication"
    }
    fn alphabet(&self) -> String {
        "0123456789*=;#[]".into()
    }
    fn step_pattern(&self) -> Option<&str> {
        Some(crate::TRACE_STEPS)
    }

    fn max_chars(&self) -> (usize, usize) {
        let (d, m) = (self.digits, self.multiplier_digits);
        // prompt `a*b=`, hinted `[p]a*b=`; solution: m partials `a*x=y` of ≤ 2d + 2m + 2 chars,
        // m − 1 `;`, `#`, ≤ d + m digits.
        (2 * (d + m) + 4, m * (2 * d + 2 * m + 2) + m + d + m)
    }
    fn problems(&self, split: Split, count: usize, seed: u64) -> Result<Vec<Problem>> {
        let (d, m) = (self.digits, self.multiplier_digits);
        draw_problems(
            "multiplication",
            split,
            count,
            seed,
            10f64.powi((d + m) as i32),
            |rng| {
                let a = draw_operand(rng, d);
                let b = draw_operand(rng, m);
                let key = format!("{a}*{b}");
                let problem = Problem {
                    id: format!("multiplication:{key}"),
                    prompt: format!("{key}="),
                    answer: Some((a * b).to_string()),
                    solution: Some(Self::solution(a, b)),
                    meta: None,
                    messages: None,
                };
                (key, problem)
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
    fn solution_writes_partial_products() {
        assert_eq!(
            Multiplication::solution(347, 28),
            "347*8=2776;347*20=6940#9716"
        );
        assert_eq!(Multiplication::solution(12, 3), "12*3=36#36");
        assert_eq!(Multiplication::solution(5, 0), "5*0=0#0");
    }

    #[test]
    fn verifier_on_tricky_outputs() {
        let task = MultiplicationConfig::default().build().unwrap();
        let p = task.problems(Split::Train, 1, 3).unwrap().remove(0);
        let ans = p.answer.clone().unwrap();
        let grade = |s: &str| task.verify(&p, s).grade;
        assert_eq!(grade(p.solution.as_ref().unwrap()), Grade::Correct);
        assert_eq!(grade(&format!("#{ans}#")), Grade::Ungradable);
        assert_eq!(grade(&format!("#{ans} #{ans}1")), Grade::Incorrect);
        assert_eq!(grade(&format!("garbage ✓ #{ans}")), Grade::Correct);
        assert_eq!(grade(""), Grade::Ungradable);
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let bad = MultiplicationConfig {
            digits: 2,
            multiplier_digits: 9,
        };
        let err = bad.build().unwrap_err().to_string();
        assert!(err.contains("task.multiplier_digits"), "{err}");
    }
}
