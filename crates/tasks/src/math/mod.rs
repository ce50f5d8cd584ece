//! Whether two math answers are the same: `\frac{3}{4}` and `0.75`, `1,000` and `1000`,
//! `50\%` and `50`, `2(x+1)` and `2x+2`, `\$5` and `5 dollars`.
//!
//! Both answers are first normalized as text ([`normalize`]): LaTeX delimiters, spacing,
//! sizing and `\text{…}` wrappers, currency signs, degrees, units after a number and a
//! leading `x =` go; unicode operators become their ASCII or LaTeX forms. What is left is
//! split into a list at top-level commas (a tuple, an interval, a set or a bare list of
//! solutions) and each element is parsed as an expression ([`expr`]) and compared exactly:
//! constants in rational arithmetic, expressions with symbols by polynomial identity
//! testing. Elements that are not expressions (words, names) compare as text, ignoring case
//! and spaces.
//!
//! Conventions, as the usual MATH and GSM8K graders have them:
//! - a percentage equals its number (`50\%` = `50`) and its fraction (`50\%` = `0.5`);
//! - decimals are exact (`0.333` ≠ `\frac13`); there is no tolerance except where a value is
//!   irrational (see [`expr`]);
//! - a bare list is a list of solutions, compared in any order (`1, 2` = `2, 1`); tuples and
//!   intervals compare in order and with their brackets (`[1, 2)` ≠ `(1, 2)`); `\{…\}` is a
//!   set, compared in any order;
//! - `2\frac12` is a product, not the mixed number 2½ (LaTeX's reading).

mod expr;

pub(crate) use expr::Q;
use expr::{parse, same_value, Expr};
use regex::Regex;
use std::sync::LazyLock;

/// Whether `a` and `b` denote the same answer (see the module's documentation).
pub fn equivalent(a: &str, b: &str) -> bool {
    // Plain integers, the common case, need no normalizing.
    if let (Some(x), Some(y)) = (integer_text(a.trim()), integer_text(b.trim())) {
        return x == y;
    }
    let (a, b) = (normalize(a), normalize(b));
    if a == b {
        return true;
    }
    let (la, lb) = (List::of(&a), List::of(&b));
    if la.items.len() != lb.items.len() || la.kind != lb.kind {
        return false;
    }
    if la.items.len() == 1 {
        return scalar_equal(&la.items[0], &lb.items[0]);
    }
    if la.ordered() {
        return la
            .items
            .iter()
            .zip(&lb.items)
            .all(|(x, y)| scalar_equal(x, y));
    }
    // Unordered: match each element of `a` to a distinct equal element of `b`.
    let mut used = vec![false; lb.items.len()];
    la.items.iter().all(|x| {
        let hit = (0..lb.items.len()).find(|&j| !used[j] && scalar_equal(x, &lb.items[j]));
        hit.map(|j| used[j] = true).is_some()
    })
}

/// A canonical text for `answer`, so that equivalent constants vote together: a rational
/// constant as `n` or `n/d` (`0.75`, `\frac34` and `75\%`… → `3/4` and `75`), anything else
/// as its normalized text.
pub fn canonical(answer: &str) -> String {
    if let Some(i) = integer_text(answer.trim()) {
        return i;
    }
    let n = normalize(answer);
    let (body, _) = strip_percent(&n);
    if !is_text(body) {
        if let Some(q) = parse(body).and_then(|e| e.constant()) {
            return q.to_string();
        }
    }
    n
}

/// Normalizes the text of an answer (see the module's documentation).
pub fn normalize(answer: &str) -> String {
    // Degrees Celsius or Fahrenheit, before the degree sign goes.
    static DEGREES: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?:\^\{?\\circ\}?|°)\s*[CF]\b").unwrap());
    // `√16` is the root of 16, not √1 · 6.
    static ROOT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"√\s*([0-9.]+)").unwrap());
    let answer = DEGREES.replace_all(answer, "");
    let answer = ROOT.replace_all(&answer, "\\sqrt{$1}");
    let mut s: String = answer
        .chars()
        .map(|c| match c {
            '−' | '–' | '—' | '‐' => '-',
            '\u{a0}' | '\u{2009}' | '\u{202f}' => ' ',
            c => c,
        })
        .collect();
    for (from, to) in [
        ("×", "\\times "),
        ("÷", "\\div "),
        ("·", "\\cdot "),
        ("π", "\\pi "),
        ("√", "\\sqrt "),
        ("∞", "\\infty "),
        ("{,}", ","),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\$", ""),
        ("$", ""),
        ("\\%", "%"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("~", " "),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\degree", ""),
        ("°", ""),
        ("\\{", "\u{1}"),
        ("\\}", "\u{2}"),
    ] {
        s = s.replace(from, to);
    }
    // Math delimiters `\( \)` `\[ \]`, sizing commands.
    static DELIMS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\\[()\[\]]|\\(?:big|Big|bigg|Bigg)[lr]?").unwrap());
    s = DELIMS.replace_all(&s, "").into_owned();
    // `\text{…}`, `\boxed{…}` and friends: keep the content, set off by spaces (units are
    // dropped below).
    let s = unwrap_commands(&s);
    let mut s = s.trim().to_string();
    // Trailing sentence punctuation and markdown emphasis.
    loop {
        let t = s
            .trim_end_matches(['.', ',', ';', '!', '?', ' '])
            .trim_matches('*')
            .trim();
        if t.len() == s.len() {
            break;
        }
        s = t.to_string();
    }
    s = strip_lhs(&s);
    // Units after a number: known unit words (with or without a space), or any words set off
    // by a space after a number (`5 apples`).
    static UNITS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?x)^(.*[0-9}).%])(?:
                (?: \s*(?:cm|mm|km|kg|mg|ml|mL|sec|min|hr|ft|in|yd|mi|lbs?|oz|mph|kph|cents?|dollars?|
                        units?|degrees?|inches|feet|meters?|hours?|minutes?|seconds?|days?|years?)
                  | \s+[mgsh] )
                (?:\^\{?[0-9]\}?|[0-9])?
              | \s+[A-Za-z][A-Za-z\s]*[A-Za-z]
            )$",
        )
        .unwrap()
    });
    if let Some(body) = s.strip_suffix("percent") {
        s = format!("{}%", body.trim());
    }
    if let Some(c) = UNITS.captures(&s) {
        s = c[1].trim().to_string();
    }
    // Scientific notation `1.5e3`.
    static SCI: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^([-+]?[0-9]+(?:\.[0-9]+)?)[eE]([-+]?[0-9]+)$").unwrap());
    s = SCI.replace(&s, "${1}\\times10^{$2}").into_owned();
    // Thousands separators, when the whole answer is one such number.
    static THOUSANDS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[-+]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?%?$").unwrap());
    if THOUSANDS.is_match(&s) {
        s = s.replace(',', "");
    }
    // One space at most, none inside brackets or before a comma.
    static SPACES: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\s*([,)\]\x02])|([(\[\x01])\s*").unwrap());
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    SPACES.replace_all(&s, "$1$2").into_owned()
}

/// `\text{…}`, `\boxed{…}` and the like replaced by their content (braces balanced).
fn unwrap_commands(s: &str) -> String {
    const WRAPPERS: &[&str] = &[
        "boxed",
        "fbox",
        "text",
        "textbf",
        "textit",
        "textrm",
        "mathrm",
        "mathbf",
        "mbox",
        "operatorname",
    ];
    let mut s = s.to_string();
    'outer: loop {
        for name in WRAPPERS {
            let pat = format!("\\{name}");
            let mut from = 0;
            while let Some(at) = s[from..].find(&pat).map(|i| i + from) {
                let after = at + pat.len();
                let rest = &s[after..];
                let open = after + rest.len() - rest.trim_start().len();
                // `\textbf` is not `\text` followed by `bf`.
                if s[after..].starts_with(|c: char| c.is_ascii_alphabetic())
                    || !s[open..].starts_with('{')
                {
                    from = after;
                    continue;
                }
                let Some(close) = matching_brace(&s, open) else {
                    break;
                };
                s = format!("{} {} {}", &s[..at], &s[open + 1..close], &s[close + 1..]);
                continue 'outer;
            }
        }
        return s;
    }
}

/// The byte index of the `}` closing the `{` at byte `open` of `s`, braces nested.
pub(crate) fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Drops a leading `x =` (or `f(x) =`); `a = b = c` keeps its last side.
fn strip_lhs(s: &str) -> String {
    static LHS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^(?:[A-Za-z](?:\([A-Za-z]\))?\s*=\s*)+").unwrap());
    LHS.replace(s, "").into_owned()
}

/// The top-level structure of a normalized answer.
struct List {
    /// Opening and closing bracket of a tuple, interval or set; `None` for a bare list.
    kind: Option<(char, char)>,
    items: Vec<String>,
}

impl List {
    fn of(s: &str) -> Self {
        let chars: Vec<char> = s.chars().collect();
        let wrapped = chars.len() >= 2
            && matches!(chars[0], '(' | '[' | '\u{1}')
            && matches!(chars[chars.len() - 1], ')' | ']' | '\u{2}')
            && closes_at_end(&chars);
        let (kind, inner) = if wrapped {
            (
                Some((chars[0], chars[chars.len() - 1])),
                &chars[1..chars.len() - 1],
            )
        } else {
            (None, &chars[..])
        };
        let items: Vec<String> = split_top(inner).iter().map(|i| strip_lhs(i)).collect();
        if items.len() == 1 && kind.is_some_and(|k| k.0 != '\u{1}') {
            // `(x+1)` is one parenthesized value, not a 1-tuple.
            return List {
                kind: None,
                items: vec![s.to_string()],
            };
        }
        List { kind, items }
    }

    /// Tuples and intervals are ordered; sets and bare lists of solutions are not.
    fn ordered(&self) -> bool {
        self.kind.is_some_and(|k| k.0 != '\u{1}')
    }
}

/// Whether the bracket opening `chars` is closed only by its last character.
fn closes_at_end(chars: &[char]) -> bool {
    let mut depth = 0i32;
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '(' | '[' | '{' | '\u{1}' => depth += 1,
            ')' | ']' | '}' | '\u{2}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && i + 1 < chars.len() {
            return false;
        }
    }
    depth == 0
}

/// Splits at commas outside brackets.
fn split_top(chars: &[char]) -> Vec<String> {
    let (mut items, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for &c in chars {
        match c {
            '(' | '[' | '{' | '\u{1}' => depth += 1,
            ')' | ']' | '}' | '\u{2}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    items.push(cur.trim().to_string());
    items
}

/// An integer literal without leading zeros (`-0` as `0`), for integers too long to compute with.
pub(crate) fn integer_text(s: &str) -> Option<String> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d.trim_start()),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let d = digits.trim_start_matches('0');
    Some(match (neg, d.is_empty()) {
        (_, true) => "0".to_string(),
        (true, false) => format!("-{d}"),
        (false, false) => d.to_string(),
    })
}

fn strip_percent(s: &str) -> (&str, bool) {
    match s.strip_suffix('%') {
        Some(body) => (body.trim(), true),
        None => (s, false),
    }
}

/// An answer with a word in it (two letters in a row outside a `\command`) and no digit or
/// operator is text, not a product of variables: `yes`, `Tuesday`.
fn is_text(s: &str) -> bool {
    let mut prev_letter = false;
    let mut in_command = false;
    let mut word = false;
    for c in s.chars() {
        if c == '\\' {
            in_command = true;
            prev_letter = false;
            continue;
        }
        if c.is_alphabetic() {
            if !in_command && prev_letter {
                word = true;
            }
            prev_letter = !in_command;
        } else {
            in_command = false;
            prev_letter = false;
        }
    }
    word && !s
        .chars()
        .any(|c| c.is_ascii_digit() || "+-*/^=".contains(c))
}

/// Parses an element, or `None` for text.
fn value(s: &str) -> Option<Expr> {
    if is_text(s) {
        return None;
    }
    parse(s)
}

fn scalar_equal(a: &str, b: &str) -> bool {
    let text = |s: &str| s.replace(' ', "").to_lowercase();
    if a == b || (is_text(a) && text(a) == text(b)) {
        return true;
    }
    let ((ba, pa), (bb, pb)) = (strip_percent(a), strip_percent(b));
    // Integers of any length compare digit by digit.
    if let (Some(x), Some(y)) = (integer_text(ba), integer_text(bb)) {
        if x == y && pa == pb {
            return true;
        }
    }
    let (Some(ea), Some(eb)) = (value(ba), value(bb)) else {
        return text(ba) == text(bb) && is_text(ba);
    };
    if same_value(&ea, &eb) == Some(true) {
        return true;
    }
    // `50%` is also `0.5`.
    let scaled = |e: &Expr| e.constant().and_then(Q::percent);
    match (pa, pb) {
        (true, false) => scaled(&ea).is_some_and(|x| Some(x) == eb.constant()),
        (false, true) => scaled(&eb).is_some_and(|x| Some(x) == ea.constant()),
        _ => false,
    }
}

impl std::fmt::Display for Q {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, d) = self.parts();
        if d == 1 {
            write!(f, "{n}")
        } else {
            write!(f, "{n}/{d}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_wrappers_units_and_signs() {
        for (raw, want) in [
            ("$\\$1{,}000$", "1000"),
            ("\\text{5 cm}", "5"),
            ("5\\text{ dollars}.", "5"),
            ("x = −3", "-3"),
            ("30^\\circ", "30"),
            ("\\left( 1, 2 \\right)", "(1, 2)"),
            ("**42**", "42"),
            ("\\dfrac{3}{4}", "\\frac{3}{4}"),
            ("1.5e3", "1.5\\times10^{3}"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }

    #[test]
    fn canonical_forms_vote_together() {
        assert_eq!(canonical("0.75"), "3/4");
        assert_eq!(canonical("\\frac{6}{8}"), "3/4");
        assert_eq!(canonical("1,000"), "1000");
        assert_eq!(canonical("Tuesday"), "Tuesday");
    }
}
