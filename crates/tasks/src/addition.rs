//! `a + b`, traced column by column from the right with carries.

use crate::answer::integer_answer;
use crate::{check_range, draw_problems};
use autodidact_core::{Problem, Result, Rng, Split, Task, Verdict};
use serde::{Deserialize, Serialize};

/// Settings of [`Addition`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdditionConfig {
    /// Operands are drawn uniformly from 0 ..= 10^digits − 1 (1..=30).
    pub digits: usize,
    /// Also require the trace to be the correct worked solution: a right answer reached
    /// through a wrong column is `incorrect` (default: only the final answer is checked).
    pub check_trace: bool,
}

impl Default for AdditionConfig {
    fn default() -> Self {
        Self {
            digits: 3,
            check_trace: false,
        }
    }
}

impl AdditionConfig {
    pub fn build(&self) -> Result<Addition> {
        check_range("addition", "digits", self.digits, 1..=30)?;
        Ok(Addition {
            digits: self.digits,
            check_trace: self.check_trace,
        })
    }
}

/// Addition of two non-negative integers.
#[derive(Clone, Debug)]
pub struct Addition {
    digits: usize,
    check_trace: bool,
}

/// Digits of `n`, least significant first.
pub(crate) fn digits_le(mut n: u128) -> Vec<u8> {
    let mut d = vec![(n % 10) as u8];
    n /= 10;
    while n > 0 {
        d.push((n % 10) as u8);
        n /= 10;
    }
    d
}

/// Uniform in 0 ..= 10^digits − 1.
pub(crate) fn draw_operand(rng: &mut Rng, digits: usize) -> u128 {
    let mut n = 0u128;
    for _ in 0..digits {
        n = n * 10 + rng.below(10) as u128;
    }
    n
}

impl Addition {
    /// The worked solution: one `a+b+carry=sum` per column, right to left, then `#answer`.
    pub fn solution(a: u128, b: u128) -> String {
        let (da, db) = (digits_le(a), digits_le(b));
        let mut carry = 0;
        let mut cols = Vec::new();
        for i in 0..da.len().max(db.len()) {
            let x = da.get(i).copied().unwrap_or(0);
            let y = db.get(i).copied().unwrap_or(0);
            let s = x + y + carry;
            cols.push(format!("{x}+{y}+{carry}={s:02}"));
            carry = s / 10;
        }
        format!("{}#{}", cols.join(";"), a + b)
    }

    fn problem(a: u128, b: u128) -> (String, Problem) {
        let key = format!("{a}+{b}");
        let problem = Problem {
            id: format!("addition:{key}"),
            prompt: format!("{key}="),
            answer: Some((a + b).to_string()),
            solution: Some(Self::solution(a, b)),
            meta: None,
            messages: None,
        };
        (key, problem)
    }
}

impl Task for Addition {
    fn name(&self) -> &str {
        "addition"
    }
    fn alphabet(&self) -> String {
        "0123456789+=;#[]".into()
    }
    fn step_pattern(&self) -> Option<&str> {
        Some(crate::TRACE_STEPS)
    }

    fn max_chars(&self) -> (usize, usize) {
        let n = self.digits;
        // prompt `a+b=`, hinted `[sum]a+b=`; solution: n columns of 8 chars, n − 1 `;`, `#`, n + 1 digits.
        (3 * n + 5, 10 * n + 1)
    }
    fn problems(&self, split: Split, count: usize, seed: u64) -> Result<Vec<Problem>> {
        let digits = self.digits;
        draw_problems(
            "addition",
            split,
            count,
            seed,
            10f64.powi(2 * digits as i32),
            |rng| {
                let a = draw_operand(rng, digits);
                let b = draw_operand(rng, digits);
                Self::problem(a, b)
            },
        )
    }
    fn verify(&self, problem: &Problem, completion: &str) -> Verdict {
        let verdict = verify_integer(problem, completion);
        if !(self.check_trace && verdict.is_correct()) {
            return verdict;
        }
        // The text before the answer marker must be the worked solution's trace.
        let trace = |s: &str| s.rfind('#').map(|i| s[..i].trim().to_string());
        match problem.solution.as_deref().and_then(trace) {
            Some(reference) if trace(completion).as_deref() == Some(reference.as_str()) => verdict,
            Some(_) => Verdict::incorrect(verdict.answer.unwrap_or_default()),
            None => Verdict::ungradable(),
        }
    }
}

/// Exact match of the integer after the last `#` with the problem's reference answer.
pub(crate) fn verify_integer(problem: &Problem, completion: &str) -> Verdict {
    let (Some(reference), Some(answer)) = (&problem.answer, integer_answer(completion)) else {
        return Verdict::ungradable();
    };
    if &answer == reference {
        Verdict::correct(answer)
    } else {
        Verdict::incorrect(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_core::Grade;

    #[test]
    fn solution_writes_every_carry() {
        assert_eq!(
            Addition::solution(347, 285),
            "7+5+0=12;4+8+1=13;3+2+1=06#632"
        );
        assert_eq!(
            Addition::solution(999, 1),
            "9+1+0=10;9+0+1=10;9+0+1=10#1000"
        );
        assert_eq!(Addition::solution(0, 0), "0+0+0=00#0");
    }

    #[test]
    fn verifier_on_tricky_outputs() {
        let (_, p) = Addition::problem(347, 285);
        let task = AdditionConfig::default().build().unwrap();
        let grade = |s: &str| task.verify(&p, s).grade;
        assert_eq!(grade("7+5+0=12;4+8+1=13;3+2+1=06#632"), Grade::Correct);
        assert_eq!(grade("#632 and some more text"), Grade::Correct);
        assert_eq!(grade("#0632"), Grade::Correct);
        assert_eq!(grade("#631 no wait #632"), Grade::Correct);
        assert_eq!(grade("#632 no wait #631"), Grade::Incorrect);
        assert_eq!(grade("632"), Grade::Ungradable);
        assert_eq!(grade("#+632"), Grade::Ungradable);
        assert_eq!(grade("7+5+0=12;4+8+1=13;3+2+1=06#"), Grade::Ungradable);
        assert_eq!(grade("#６３２"), Grade::Ungradable);
        assert_eq!(grade("ü#632ü"), Grade::Correct);
        assert_eq!(grade(&format!("#{}", "9".repeat(500))), Grade::Incorrect);
        assert_eq!(task.verify(&p, "#632").answer.as_deref(), Some("632"));
    }

    #[test]
    fn check_trace_rejects_right_answers_reached_by_wrong_steps() {
        let (_, p) = Addition::problem(491, 583);
        let strict = AdditionConfig {
            digits: 3,
            check_trace: true,
        }
        .build()
        .unwrap();
        let loose = AdditionConfig::default().build().unwrap();
        let lucky = "1+3+0=04;9+8+0=16;4+5+1=10#1074"; // 9+8 is 17
        assert_eq!(loose.verify(&p, lucky).grade, Grade::Correct);
        let v = strict.verify(&p, lucky);
        assert_eq!(
            (v.grade, v.answer.as_deref()),
            (Grade::Incorrect, Some("1074"))
        );
        let right = p.solution.clone().unwrap();
        assert_eq!(strict.verify(&p, &right).grade, Grade::Correct);
        assert_eq!(
            strict.verify(&p, &format!("  {right}")).grade,
            Grade::Correct
        );
        assert_eq!(
            strict.verify(&p, "#1074").grade,
            Grade::Incorrect,
            "no trace at all"
        );
        assert_eq!(strict.verify(&p, "#1075").grade, Grade::Incorrect);
        assert_eq!(strict.verify(&p, "nothing").grade, Grade::Ungradable);
    }

    #[test]
    fn bad_digits_is_a_clear_error() {
        let err = AdditionConfig {
            digits: 0,
            ..Default::default()
        }
        .build()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("task.digits") && err.contains("1..=30"),
            "{err}"
        );
    }
}
