//! Countdown: reach a target from given numbers with + − × ÷, each number at most once.
//!
//! The verifier parses the expression after the last `#` (`+ - * /`, also `×` `÷`,
//! parentheses, spaces) and evaluates it exactly in rationals; intermediate values may be
//! fractions. It is `Ungradable` when the expression does not parse, `Incorrect` when it uses
//! a number not given (or more often than given), divides by zero, or misses the target.

use crate::answer::after_marker;
use crate::{check_range, draw_problems};
use autodidact_core::{Problem, Result, Rng, Split, Task, Verdict};
use serde::{Deserialize, Serialize};

/// Settings of [`Countdown`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountdownConfig {
    /// How many numbers are given (2..=6).
    pub numbers: usize,
    /// Numbers are drawn from 1..=max_number (2..=1000).
    pub max_number: u32,
    /// Targets lie in 1..=max_target (1..=1_000_000).
    pub max_target: u32,
}

impl Default for CountdownConfig {
    fn default() -> Self {
        Self {
            numbers: 3,
            max_number: 20,
            max_target: 200,
        }
    }
}

impl CountdownConfig {
    pub fn build(&self) -> Result<Countdown> {
        check_range("countdown", "numbers", self.numbers, 2..=6)?;
        check_range("countdown", "max_number", self.max_number, 2..=1000)?;
        check_range("countdown", "max_target", self.max_target, 1..=1_000_000)?;
        Ok(Countdown { cfg: self.clone() })
    }
}

/// The Countdown numbers game.
#[derive(Clone, Debug)]
pub struct Countdown {
    cfg: CountdownConfig,
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}

impl Countdown {
    /// Draws numbers and combines them left to right in a random order with random valid
    /// operations (results stay positive integers ≤ max_target). Returns the key, the numbers
    /// (sorted), the target, the trace steps and the answer expression.
    fn draw(&self, rng: &mut Rng) -> Option<(Vec<u64>, u64, Vec<String>, String)> {
        let c = &self.cfg;
        let mut nums: Vec<u64> = (0..c.numbers)
            .map(|_| 1 + rng.below(c.max_number as u64))
            .collect();
        let mut order = nums.clone();
        rng.shuffle(&mut order);
        let max = c.max_target as u64;
        let mut value = order[0];
        let mut expr = order[0].to_string();
        let mut additive = false; // whether `expr` has a + or − at its top level
        let mut steps = Vec::new();
        for &n in &order[1..] {
            let mut ops = vec!['+'];
            if value > n {
                ops.push('-');
            }
            if value * n <= max && n > 1 && value > 1 {
                ops.push('*');
            }
            if n > 1 && value.is_multiple_of(n) {
                ops.push('/');
            }
            let op = ops[rng.below(ops.len() as u64) as usize];
            let next = match op {
                '+' => value + n,
                '-' => value - n,
                '*' => value * n,
                _ => value / n,
            };
            steps.push(format!("{value}{op}{n}={next}"));
            expr = match op {
                '+' | '-' => {
                    additive = true;
                    format!("{expr}{op}{n}")
                }
                _ if additive => {
                    additive = false;
                    format!("({expr}){op}{n}")
                }
                _ => format!("{expr}{op}{n}"),
            };
            value = next;
        }
        if value == 0 || value > max {
            return None;
        }
        nums.sort_unstable();
        Some((nums, value, steps, expr))
    }

    fn prompt(nums: &[u64], target: u64) -> String {
        let list: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
        format!("{}:{target}=", list.join(","))
    }

    /// The given numbers and target, read back from a prompt.
    fn parse_prompt(prompt: &str) -> Option<(Vec<u64>, u64)> {
        let (list, target) = prompt.strip_suffix('=')?.split_once(':')?;
        let nums = list
            .split(',')
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        Some((nums, target.parse().ok()?))
    }
}

impl Task for Countdown {
    fn name(&self) -> &str {
        "countdown"
    }
    fn alphabet(&self) -> String {
        "0123456789+-*/()=,:;#[]".into()
    }
    fn step_pattern(&self) -> Option<&str> {
        Some(crate::TRACE_STEPS)
    }

    fn max_chars(&self) -> (usize, usize) {
        let c = &self.cfg;
        let (n, dn, dt) = (
            c.numbers,
            digits(c.max_number as u64),
            digits(c.max_target as u64),
        );
        // Intermediate values never exceed max(max_target, max_number) + max_number.
        let dv = digits(c.max_target.max(c.max_number) as u64 + c.max_number as u64);
        // Expression: n numbers, n − 1 operators, at most 2 parentheses per operator.
        let expr = n * dn + 3 * (n - 1);
        let prompt = n * dn + (n - 1) + 1 + dt + 1;
        let steps = (n - 1) * (dv + 1 + dn + 1 + dv) + (n - 2);
        (prompt + expr + 2, steps + 1 + expr)
    }
    fn problems(&self, split: Split, count: usize, seed: u64) -> Result<Vec<Problem>> {
        // At most: every multiset of numbers (the key sorts them) with every target.
        let c = &self.cfg;
        let multisets: f64 = (0..c.numbers)
            .map(|i| (c.max_number as f64 + i as f64) / (i as f64 + 1.0))
            .product();
        let space = multisets * c.max_target as f64;
        draw_problems("countdown", split, count, seed, space, |rng| loop {
            if let Some((nums, target, steps, expr)) = self.draw(rng) {
                let prompt = Self::prompt(&nums, target);
                let key = prompt.trim_end_matches('=').to_string();
                let problem = Problem {
                    id: format!("countdown:{key}"),
                    prompt,
                    answer: Some(expr.clone()),
                    solution: Some(format!("{}#{expr}", steps.join(";"))),
                    meta: None,
                    messages: None,
                };
                return (key, problem);
            }
        })
    }
    fn verify(&self, problem: &Problem, completion: &str) -> Verdict {
        let Some((nums, target)) = Self::parse_prompt(&problem.prompt) else {
            return Verdict::ungradable();
        };
        let Some(text) = after_marker(completion) else {
            return Verdict::ungradable();
        };
        let text = text.lines().next().unwrap_or("");
        let Some(expr) = parse(text) else {
            return Verdict::ungradable();
        };
        let answer: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        // Each given number at most once.
        let mut available = nums.clone();
        for lit in expr.literals() {
            match lit.and_then(|v| available.iter().position(|&n| n == v)) {
                Some(i) => {
                    available.swap_remove(i);
                }
                None => return Verdict::incorrect(answer),
            }
        }
        match expr.eval() {
            Some(v) if v == Rational::int(target as i128) => Verdict::correct(answer),
            _ => Verdict::incorrect(answer),
        }
    }
}

/// An exact fraction with a positive denominator, in lowest terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Rational {
    fn int(n: i128) -> Self {
        Self { num: n, den: 1 }
    }
    fn new(num: i128, den: i128) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let s = if den < 0 { -1 } else { 1 };
        Some(Self {
            num: s * num / g,
            den: s * den / g,
        })
    }
    fn apply(self, op: char, o: Self) -> Option<Self> {
        let (a, b, c, d) = (self.num, self.den, o.num, o.den);
        match op {
            '+' => Self::new(
                a.checked_mul(d)?.checked_add(c.checked_mul(b)?)?,
                b.checked_mul(d)?,
            ),
            '-' => Self::new(
                a.checked_mul(d)?.checked_sub(c.checked_mul(b)?)?,
                b.checked_mul(d)?,
            ),
            '*' => Self::new(a.checked_mul(c)?, b.checked_mul(d)?),
            _ => Self::new(a.checked_mul(d)?, b.checked_mul(c)?),
        }
    }
}

/// A parsed arithmetic expression.
#[derive(Debug)]
enum Expr {
    /// A literal; `None` when it does not fit in a u64 (so it cannot be a given number).
    Num(Option<u64>),
    Bin(char, Box<Expr>, Box<Expr>),
}

impl Expr {
    fn literals(&self) -> Vec<Option<u64>> {
        match self {
            Expr::Num(v) => vec![*v],
            Expr::Bin(_, l, r) => {
                let mut v = l.literals();
                v.extend(r.literals());
                v
            }
        }
    }
    /// `None` on division by zero or overflow.
    fn eval(&self) -> Option<Rational> {
        match self {
            Expr::Num(v) => Some(Rational::int((*v)? as i128)),
            Expr::Bin(op, l, r) => l.eval()?.apply(*op, r.eval()?),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Num(Option<u64>),
    Op(char),
    Open,
    Close,
}

fn lex(text: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            _ if c.is_whitespace() => {
                chars.next();
            }
            '0'..='9' => {
                let mut s = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    s.push(d);
                    chars.next();
                }
                out.push(Tok::Num(s.parse().ok()));
            }
            '+' | '-' | '*' | '/' | '×' | '÷' => {
                chars.next();
                out.push(Tok::Op(match c {
                    '×' => '*',
                    '÷' => '/',
                    c => c,
                }));
            }
            '(' => {
                chars.next();
                out.push(Tok::Open);
            }
            ')' => {
                chars.next();
                out.push(Tok::Close);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Recursive descent over `expr := term (('+'|'-') term)*`, `term := atom (('*'|'/') atom)*`,
/// `atom := number | '(' expr ')'`. No unary minus. Nesting depth is bounded so hostile input
/// cannot overflow the stack.
fn parse(text: &str) -> Option<Expr> {
    struct P {
        toks: Vec<Tok>,
        pos: usize,
        depth: usize,
    }
    impl P {
        fn peek(&self) -> Option<Tok> {
            self.toks.get(self.pos).copied()
        }
        fn expr(&mut self, ops: [char; 2], next: fn(&mut P) -> Option<Expr>) -> Option<Expr> {
            let mut lhs = next(self)?;
            while let Some(Tok::Op(op)) = self
                .peek()
                .filter(|t| matches!(t, Tok::Op(o) if ops.contains(o)))
            {
                self.pos += 1;
                lhs = Expr::Bin(op, Box::new(lhs), Box::new(next(self)?));
            }
            Some(lhs)
        }
        fn sum(&mut self) -> Option<Expr> {
            self.expr(['+', '-'], P::product)
        }
        fn product(&mut self) -> Option<Expr> {
            self.expr(['*', '/'], P::atom)
        }
        fn atom(&mut self) -> Option<Expr> {
            match self.peek()? {
                Tok::Num(v) => {
                    self.pos += 1;
                    Some(Expr::Num(v))
                }
                Tok::Open => {
                    self.depth += 1;
                    if self.depth > 64 {
                        return None;
                    }
                    self.pos += 1;
                    let e = self.sum()?;
                    (self.peek()? == Tok::Close).then_some(())?;
                    self.pos += 1;
                    self.depth -= 1;
                    Some(e)
                }
                _ => None,
            }
        }
    }
    let mut p = P {
        toks: lex(text)?,
        pos: 0,
        depth: 0,
    };
    let e = p.sum()?;
    (p.pos == p.toks.len()).then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_core::Grade;

    fn problem(nums: &[u64], target: u64) -> Problem {
        Problem {
            id: "t".into(),
            prompt: Countdown::prompt(nums, target),
            answer: None,
            solution: None,
            meta: None,
            messages: None,
        }
    }

    #[test]
    fn verifier_on_tricky_outputs() {
        let task = CountdownConfig {
            numbers: 4,
            max_number: 100,
            max_target: 1000,
        }
        .build()
        .unwrap();
        let p = problem(&[3, 7, 25, 50], 165);
        let grade = |s: &str| task.verify(&p, s).grade;
        assert_eq!(grade("#25*7-10"), Grade::Incorrect, "10 is not given");
        assert_eq!(grade("#(50+3)*3"), Grade::Incorrect, "3 used twice");
        assert_eq!(grade("#(25-3)*7+50-39"), Grade::Incorrect, "39 not given");
        // 165 = 3*50+25-7-3 needs 3 twice; a target with a known answer:
        let q = problem(&[3, 7, 25, 50], 182);
        let g = |s: &str| task.verify(&q, s).grade;
        assert_eq!(g("#3*50+7+25"), Grade::Correct);
        assert_eq!(
            g("steps 3*50=150;150+7=157;157+25=182#3 * 50 + 7 + 25"),
            Grade::Correct
        );
        assert_eq!(g("#3×50+7+25"), Grade::Correct);
        assert_eq!(g("#182"), Grade::Incorrect, "182 is not a given number");
        assert_eq!(
            g("#3*50+7+25 = 182"),
            Grade::Ungradable,
            "trailing text after the expression"
        );
        assert_eq!(
            g("#3*50+7+25\nthat is it"),
            Grade::Correct,
            "only the answer line counts"
        );
        assert_eq!(g("#3*(50+7"), Grade::Ungradable);
        assert_eq!(g("#-3+185"), Grade::Ungradable);
        assert_eq!(g("#3**50"), Grade::Ungradable);
        assert_eq!(g("#"), Grade::Ungradable);
        assert_eq!(g("3*50+7+25"), Grade::Ungradable, "no answer marker");
        assert_eq!(g("#3*50+7+25 é"), Grade::Ungradable);
        assert_eq!(g("#99999999999999999999999999999*0+182"), Grade::Incorrect);
        assert_eq!(
            g(&format!("#{}3{}", "(".repeat(10_000), ")".repeat(10_000))),
            Grade::Ungradable
        );
        // Fractions in the middle are fine; division by zero is not.
        let r = problem(&[1, 3, 4, 6], 24);
        assert_eq!(task.verify(&r, "#6/(1-3/4)").grade, Grade::Correct);
        assert_eq!(task.verify(&r, "#6/(3-3)").grade, Grade::Incorrect);
        assert_eq!(task.verify(&r, "#6/(4-4)").grade, Grade::Incorrect);
        assert_eq!(task.verify(&r, "#4/(1-1)").grade, Grade::Incorrect);
        assert_eq!(
            task.verify(&r, "#6/(4-1-3)*1").grade,
            Grade::Incorrect,
            "division by zero"
        );
    }

    #[test]
    fn parser_respects_precedence() {
        let v = |s: &str| parse(s).unwrap().eval().unwrap();
        assert_eq!(v("2+3*4"), Rational::int(14));
        assert_eq!(v("(2+3)*4"), Rational::int(20));
        assert_eq!(v("8-3-2"), Rational::int(3));
        assert_eq!(v("8/4/2"), Rational::int(1));
        assert_eq!(v("1/3+1/6"), Rational::new(1, 2).unwrap());
    }

    #[test]
    fn generated_expressions_match_their_traces() {
        let task = CountdownConfig::default().build().unwrap();
        for p in task.problems(Split::Train, 300, 1).unwrap() {
            assert!(
                task.verify(&p, p.solution.as_ref().unwrap()).is_correct(),
                "{p:?}"
            );
        }
    }
}
