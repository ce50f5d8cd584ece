//! Exact arithmetic on simple expressions: a parser for the LaTeX-flavoured notation answers
//! are written in, and evaluation in exact rationals.
//!
//! Two expressions are compared by evaluating both at a few fixed rational points, each
//! symbol (`x`, `\pi`) given its own value (polynomial identity testing). Equal rational
//! functions agree everywhere; unequal ones agree at all of the points only on a
//! measure-zero set, and the points are fixed and irregular, so the test is exact in
//! practice and deterministic. (`\pi` as a free symbol is sound: it is transcendental.)
//! Where a value is not rational (`\sqrt{2}`, `x^{1/2}`), that point is compared in floating
//! point with a tight relative tolerance instead.

use std::collections::BTreeMap;

/// An exact rational with `i128` parts, always in lowest terms with a positive denominator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Q {
    n: i128,
    d: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Q {
    pub(crate) fn int(n: i128) -> Self {
        Q { n, d: 1 }
    }

    pub(crate) fn new(n: i128, d: i128) -> Option<Self> {
        if d == 0 {
            return None;
        }
        let g = gcd(n, d).max(1);
        let (n, d) = (n / g, d / g);
        Some(if d < 0 {
            Q {
                n: n.checked_neg()?,
                d: d.checked_neg()?,
            }
        } else {
            Q { n, d }
        })
    }

    /// The exact value of a decimal literal such as `12.50` (digits and at most one point).
    pub(crate) fn decimal(text: &str) -> Option<Self> {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut n: i128 = 0;
        for c in int.chars().chain(frac.chars()) {
            n = n.checked_mul(10)?.checked_add(c.to_digit(10)? as i128)?;
        }
        Q::new(n, 10i128.checked_pow(frac.len() as u32)?)
    }

    fn add(self, o: Q) -> Option<Q> {
        let g = gcd(self.d, o.d);
        let (a, b) = (self.d / g, o.d / g);
        Q::new(
            self.n.checked_mul(b)?.checked_add(o.n.checked_mul(a)?)?,
            self.d.checked_mul(b)?,
        )
    }

    fn neg(self) -> Option<Q> {
        Some(Q {
            n: self.n.checked_neg()?,
            d: self.d,
        })
    }

    fn mul(self, o: Q) -> Option<Q> {
        // Cross-reduce first so products stay small.
        let (g1, g2) = (gcd(self.n, o.d).max(1), gcd(o.n, self.d).max(1));
        Q::new(
            (self.n / g1).checked_mul(o.n / g2)?,
            (self.d / g2).checked_mul(o.d / g1)?,
        )
    }

    fn recip(self) -> Option<Q> {
        Q::new(self.d, self.n)
    }

    fn pow(self, e: i64) -> Option<Q> {
        if e.unsigned_abs() > 256 {
            return None;
        }
        let base = if e < 0 { self.recip()? } else { self };
        let mut out = Q::int(1);
        for _ in 0..e.unsigned_abs() {
            out = out.mul(base)?;
        }
        Some(out)
    }

    /// Numerator and (positive) denominator.
    pub(crate) fn parts(self) -> (i128, i128) {
        (self.n, self.d)
    }

    pub(crate) fn is_integer(self) -> bool {
        self.d == 1
    }

    /// `self / 100`, for percentages.
    pub(crate) fn percent(self) -> Option<Q> {
        self.mul(Q::new(1, 100)?)
    }
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Num(Q),
    /// A variable or named constant (`x`, `\pi`).
    Sym(String),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Sqrt(Box<Expr>),
}

/// Commands that stand for a symbol of their own (Greek letters, constants).
const SYMBOL_COMMANDS: &[&str] = &[
    "pi", "alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "sigma", "phi", "omega",
    "tau", "rho", "epsilon", "infty", "e",
];

/// Parses `text` as one expression; `None` when it is not one (a word, a list, an equation,
/// unbalanced brackets, an unknown command).
/// Answers are short: a longer text is not read as an expression (a left-deep chain such as
/// `1+1+…` makes a tree as deep as it is long, which evaluating and dropping recurse through).
const MAX_CHARS: usize = 2048;

/// Brackets, signs and commands nested deeper than this are not an answer anyone writes; the
/// limit keeps the parser's recursion far from the end of a worker thread's stack.
const MAX_DEPTH: usize = 64;

pub(crate) fn parse(text: &str) -> Option<Expr> {
    if text.len() > MAX_CHARS * 4 {
        return None;
    }
    let mut p = Parser {
        s: text.chars().collect(),
        i: 0,
        depth: 0,
    };
    if p.s.len() > MAX_CHARS {
        return None;
    }
    let e = p.expr()?;
    p.skip_ws();
    (p.i == p.s.len()).then_some(e)
}

struct Parser {
    s: Vec<char>,
    i: usize,
    /// How many of `expr`, `unary` and `atom` are on the stack.
    depth: usize,
}

impl Parser {
    /// `f`, one level deeper; `None` past [`MAX_DEPTH`].
    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Option<Expr>) -> Option<Expr> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let e = f(self);
        self.depth -= 1;
        e
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// The name of the `\command` at the cursor, without consuming it.
    fn command(&mut self) -> Option<String> {
        if self.peek() != Some('\\') {
            return None;
        }
        let name: String = self.s[self.i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        (!name.is_empty()).then_some(name)
    }

    fn expr(&mut self) -> Option<Expr> {
        self.nested(Self::sum)
    }

    fn sum(&mut self) -> Option<Expr> {
        let mut e = self.term()?;
        loop {
            if self.eat('+') {
                e = Expr::Add(Box::new(e), Box::new(self.term()?));
            } else if self.eat('-') {
                e = Expr::Add(Box::new(e), Box::new(Expr::Neg(Box::new(self.term()?))));
            } else {
                return Some(e);
            }
        }
    }

    fn term(&mut self) -> Option<Expr> {
        let mut e = self.unary()?;
        loop {
            // `*`, `\cdot`, `\times`; `/`, `\div`.
            let op = match self.command().as_deref() {
                Some(c @ ("cdot" | "times")) => Some(('*', 1 + c.len())),
                Some("div") => Some(('/', 4)),
                Some(_) => None,
                None => match self.peek() {
                    Some(c @ ('*' | '/')) => Some((c, 1)),
                    _ => None,
                },
            };
            if let Some((op, len)) = op {
                self.i += len;
                let rhs = Box::new(self.unary()?);
                e = if op == '*' {
                    Expr::Mul(Box::new(e), rhs)
                } else {
                    Expr::Div(Box::new(e), rhs)
                };
            } else if self.starts_atom() {
                // Implicit multiplication: `2x`, `3(x+1)`, `(a)(b)`, `2\pi`.
                e = Expr::Mul(Box::new(e), Box::new(self.power()?));
            } else {
                return Some(e);
            }
        }
    }

    fn starts_atom(&mut self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_alphanumeric() || c == '(' || c == '{' || c == '.' => true,
            Some('\\') => !matches!(self.command().as_deref(), Some("cdot" | "times" | "div")),
            _ => false,
        }
    }

    fn unary(&mut self) -> Option<Expr> {
        self.nested(Self::signed)
    }

    fn signed(&mut self) -> Option<Expr> {
        if self.eat('-') {
            return Some(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat('+') {
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Option<Expr> {
        let base = self.atom()?;
        if self.eat('^') {
            // `x^2`, `x^{10}`, `x^-1`, and `2^10` as plain text means it (LaTeX would read
            // `2^1 0`): the exponent is a group, a whole number or a signed atom.
            let neg = self.eat('-');
            let exp = match self.peek()? {
                c if c.is_ascii_digit() => self.atom()?,
                _ => self.group()?,
            };
            let exp = if neg { Expr::Neg(Box::new(exp)) } else { exp };
            return Some(Expr::Pow(Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    /// A `{…}` group, or a single character's atom (LaTeX's `\frac34`, `x^2`).
    fn group(&mut self) -> Option<Expr> {
        match self.peek()? {
            '{' => {
                self.i += 1;
                let e = self.expr()?;
                self.eat('}').then_some(e)
            }
            c if c.is_ascii_digit() => {
                self.i += 1;
                Some(Expr::Num(Q::int(c.to_digit(10)? as i128)))
            }
            c if c.is_ascii_alphabetic() => {
                self.i += 1;
                Some(Expr::Sym(c.to_string()))
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Option<Expr> {
        self.nested(Self::single)
    }

    fn single(&mut self) -> Option<Expr> {
        match self.peek()? {
            '(' => {
                self.i += 1;
                let e = self.expr()?;
                self.eat(')').then_some(e)
            }
            '{' => self.group(),
            c if c.is_ascii_digit() || c == '.' => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_digit() || self.s[self.i] == '.')
                {
                    self.i += 1;
                }
                let text: String = self.s[start..self.i].iter().collect();
                if text.matches('.').count() > 1 {
                    return None;
                }
                Some(Expr::Num(Q::decimal(&text)?))
            }
            c if c.is_ascii_alphabetic() => {
                self.i += 1;
                Some(Expr::Sym(c.to_string()))
            }
            '\\' => {
                let name = self.command()?;
                self.i += 1 + name.len();
                match name.as_str() {
                    "frac" | "dfrac" | "tfrac" => {
                        let num = self.group()?;
                        let den = self.group()?;
                        Some(Expr::Div(Box::new(num), Box::new(den)))
                    }
                    "sqrt" => Some(Expr::Sqrt(Box::new(self.group()?))),
                    n if SYMBOL_COMMANDS.contains(&n) => Some(Expr::Sym(format!("\\{n}"))),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Values given to symbols: trial `t`'s value of the `k`-th symbol (in sorted order).
fn point(t: usize, k: usize) -> Q {
    const P: [i128; 12] = [7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47];
    const D: [i128; 5] = [3, 5, 2, 9, 4];
    Q::new(
        P[(k * 5 + t * 7) % P.len()] + t as i128,
        D[(k + t) % D.len()],
    )
    .unwrap()
}

impl Expr {
    fn symbols(&self, out: &mut Vec<String>) {
        match self {
            Expr::Sym(s) => {
                if !out.contains(s) {
                    out.push(s.clone())
                }
            }
            Expr::Num(_) => {}
            Expr::Neg(a) | Expr::Sqrt(a) => a.symbols(out),
            Expr::Add(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) | Expr::Pow(a, b) => {
                a.symbols(out);
                b.symbols(out)
            }
        }
    }

    /// The exact value; `None` on overflow, division by zero, a non-integer power or an
    /// irrational root.
    fn eval(&self, env: &BTreeMap<String, Q>) -> Option<Q> {
        Some(match self {
            Expr::Num(q) => *q,
            Expr::Sym(s) => *env.get(s)?,
            Expr::Neg(a) => a.eval(env)?.neg()?,
            Expr::Add(a, b) => a.eval(env)?.add(b.eval(env)?)?,
            Expr::Mul(a, b) => a.eval(env)?.mul(b.eval(env)?)?,
            Expr::Div(a, b) => a.eval(env)?.mul(b.eval(env)?.recip()?)?,
            Expr::Pow(a, b) => {
                let e = b.eval(env)?;
                if !e.is_integer() {
                    return None;
                }
                a.eval(env)?.pow(i64::try_from(e.n).ok()?)?
            }
            Expr::Sqrt(a) => {
                let v = a.eval(env)?;
                let (n, d) = (isqrt(v.n)?, isqrt(v.d)?);
                Q::new(n, d)?
            }
        })
    }

    /// The value in floating point, for what exact evaluation cannot do (roots, fractional
    /// powers).
    fn approx(&self, env: &BTreeMap<String, Q>) -> f64 {
        match self {
            Expr::Num(q) => q.n as f64 / q.d as f64,
            Expr::Sym(s) => env.get(s).map_or(f64::NAN, |q| q.n as f64 / q.d as f64),
            Expr::Neg(a) => -a.approx(env),
            Expr::Add(a, b) => a.approx(env) + b.approx(env),
            Expr::Mul(a, b) => a.approx(env) * b.approx(env),
            Expr::Div(a, b) => a.approx(env) / b.approx(env),
            Expr::Pow(a, b) => a.approx(env).powf(b.approx(env)),
            Expr::Sqrt(a) => a.approx(env).sqrt(),
        }
    }

    /// The exact value of a constant expression (no symbols).
    pub(crate) fn constant(&self) -> Option<Q> {
        self.eval(&BTreeMap::new())
    }
}

/// The exact square root of a non-negative integer that is a perfect square.
fn isqrt(x: i128) -> Option<i128> {
    if x < 0 {
        return None;
    }
    let mut r = (x as f64).sqrt() as i128;
    while r * r > x {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1)? <= x {
        r += 1;
    }
    (r * r == x).then_some(r)
}

/// Relative tolerance of the floating-point fallback: far below any decimal approximation a
/// person writes (`1.41421356237` is 2·10⁻¹² from √2), far above f64 rounding of a short
/// expression.
const APPROX_TOL: f64 = 1e-13;

/// Whether `a` and `b` are the same function of their symbols: equal at every test point
/// where both evaluate, with at least two such points. Values are compared exactly when both
/// are rational there, and in floating point within [`APPROX_TOL`] otherwise (roots). `None`
/// when they cannot be compared.
pub(crate) fn same_value(a: &Expr, b: &Expr) -> Option<bool> {
    let mut syms = Vec::new();
    a.symbols(&mut syms);
    b.symbols(&mut syms);
    syms.sort();
    let trials = if syms.is_empty() { 1 } else { 6 };
    let mut agreed = 0;
    for t in 0..trials {
        let env: BTreeMap<String, Q> = syms
            .iter()
            .enumerate()
            .map(|(k, s)| (s.clone(), point(t, k)))
            .collect();
        let equal = match (a.eval(&env), b.eval(&env)) {
            (Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (a.approx(&env), b.approx(&env));
                if !x.is_finite() || !y.is_finite() {
                    continue;
                }
                (x - y).abs() <= APPROX_TOL * x.abs().max(y.abs()).max(1.0)
            }
        };
        if !equal {
            return Some(false);
        }
        agreed += 1;
    }
    (agreed >= trials.min(2)).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rationals_stay_in_lowest_terms_and_refuse_overflow() {
        assert_eq!(Q::new(6, -4), Some(Q { n: -3, d: 2 }));
        assert_eq!(Q::decimal("12.50"), Q::new(25, 2));
        assert!(Q::decimal(".").is_none());
        assert!(Q::int(i128::MAX).add(Q::int(1)).is_none());
        assert_eq!(isqrt(1_000_003 * 1_000_003), Some(1_000_003));
        assert_eq!(isqrt(8), None);
    }

    #[test]
    fn issue17_deep_nesting_is_refused_not_a_stack_overflow() {
        // Run on a thread with a worker-sized stack, as verification runs.
        let deep = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let mut answers = Vec::new();
                for open in ["(", "{", "-", "\\sqrt", "2^{"] {
                    let text = format!("{}1", open.repeat(100_000));
                    answers.push(parse(&text).is_none());
                }
                let chain = "1+".repeat(1_000) + "1";
                answers.push(parse(&chain).is_some());
                answers.push(parse(&"1+".repeat(5_000)).is_none());
                answers
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(deep, vec![true; 7]);
        // Nesting an answer might hold still parses.
        assert!(parse(&format!("{}1{}", "(".repeat(20), ")".repeat(20))).is_some());
    }

    #[test]
    fn parses_latex_flavoured_arithmetic() {
        let v = |s: &str| parse(s).and_then(|e| e.constant());
        assert_eq!(v("\\frac34"), Q::new(3, 4));
        assert_eq!(v("\\dfrac{3}{4}+1"), Q::new(7, 4));
        assert_eq!(v("2^{10}"), Some(Q::int(1024)));
        assert_eq!(v("2^-1"), Q::new(1, 2));
        assert_eq!(v("-3^2"), Some(Q::int(-9)));
        assert_eq!(v("(1+2)(3+4)"), Some(Q::int(21)));
        assert_eq!(v("6\\div 4"), Q::new(3, 2));
        assert_eq!(v("1.5\\times10^3"), Some(Q::int(1500)));
        assert_eq!(v("\\sqrt{16}"), Some(Q::int(4)));
        assert_eq!(v("1/0"), None);
        assert!(parse("1..2").is_none());
        assert!(parse("(1+2").is_none());
        assert!(parse("\\unknown{3}").is_none());
    }

    #[test]
    fn symbolic_identities_hold_and_differences_show() {
        let same = |a: &str, b: &str| same_value(&parse(a).unwrap(), &parse(b).unwrap());
        assert_eq!(same("2(x+1)", "2x+2"), Some(true));
        assert_eq!(same("x^2-1", "(x-1)(x+1)"), Some(true));
        assert_eq!(same("\\frac{x}{2}", "0.5x"), Some(true));
        assert_eq!(same("2\\sqrt{2}", "\\sqrt{8}"), Some(true));
        assert_eq!(
            same("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
            Some(true)
        );
        assert_eq!(same("2\\pi", "\\pi\\cdot 2"), Some(true));
        assert_eq!(same("x+1", "x+2"), Some(false));
        assert_eq!(same("x", "y"), Some(false));
        assert_eq!(same("x^{1/2}", "\\sqrt{x}"), Some(true));
        assert_eq!(same("\\sqrt{2}", "1.41421356237"), Some(false));
    }
}
