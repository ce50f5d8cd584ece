//! Finding the final answer in a completion: rules tried in order (`[task] extract`).
//!
//! Fenced code blocks (```` ``` ````) are masked first, so that a `print(42)` or a `#### 3`
//! inside code is never taken for the answer. Each rule finds its *last* occurrence (a model
//! that revises states its final answer last). What a rule finds is cleaned of math
//! delimiters, markdown emphasis and trailing sentence punctuation; an empty result counts
//! as not found, and the next rule is tried.

use autodidact_core::{Error, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// One way of finding the final answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractRule {
    /// The content of the last `\boxed{…}` (or `\fbox{…}`), nested braces balanced.
    Boxed,
    /// The rest of the line after the last `####` (GSM8K).
    Gsm8k,
    /// What follows the last "the answer is" or "answer:" (any case), to the end of its
    /// sentence or line.
    AnswerIs,
    /// The last number: a sign, thousands separators, decimals, or a fraction `a/b`.
    LastNumber,
    /// The rest of the line after the last `#` (the built-in tasks' convention).
    Marker,
    /// The last match of a regular expression: its first capture group, or the whole match.
    Regex(String),
    /// The last fenced code block (```` ```python … ``` ````, any language tag), or the whole
    /// completion when it has none: a program, for `compare = "python_tests"`. Code fences
    /// are not masked for this rule, and its result is only trimmed.
    CodeBlock,
}

impl ExtractRule {
    /// The rules tried when a task names none: the explicit forms first, the last number last.
    pub fn defaults() -> Vec<ExtractRule> {
        vec![
            ExtractRule::Boxed,
            ExtractRule::Gsm8k,
            ExtractRule::AnswerIs,
            ExtractRule::Marker,
            ExtractRule::LastNumber,
        ]
    }

    /// How a completion gives its answer so that this rule finds it, as an instruction (a
    /// two-attempt episode's review asks for it); `None` when the rule says nothing a model
    /// could be told (the last number, a regular expression).
    pub fn answer_form(&self) -> Option<&'static str> {
        match self {
            ExtractRule::Boxed => Some("Put the final answer in \\boxed{}."),
            ExtractRule::Gsm8k => Some("Write the final answer on its own line after `####`."),
            ExtractRule::AnswerIs => Some("End with \"The answer is\" and the final answer."),
            ExtractRule::Marker => Some("Write the final answer after a `#`."),
            ExtractRule::CodeBlock => {
                Some("Give the whole corrected program in one fenced code block.")
            }
            ExtractRule::LastNumber | ExtractRule::Regex(_) => None,
        }
    }

    /// What the rule looks for, for the reason an answer was not found.
    fn looks_for(&self) -> String {
        match self {
            ExtractRule::Boxed => "no \\boxed{…}".into(),
            ExtractRule::Gsm8k => "no `####` line".into(),
            ExtractRule::AnswerIs => "no \"the answer is\"".into(),
            ExtractRule::LastNumber => "no number".into(),
            ExtractRule::Marker => "no `#`".into(),
            ExtractRule::Regex(r) => format!("no match of /{r}/"),
            ExtractRule::CodeBlock => "no code".into(),
        }
    }
}

/// Compiled extraction rules.
#[derive(Clone, Debug)]
pub struct Extractor {
    rules: Vec<(ExtractRule, Option<Regex>)>,
}

impl Extractor {
    /// The answer form of its rule ([`ExtractRule::answer_form`]) when it has one rule; with
    /// several, any of their forms is read and none is asked for.
    pub fn answer_form(&self) -> Option<&'static str> {
        match &self.rules[..] {
            [(rule, _)] => rule.answer_form(),
            _ => None,
        }
    }

    /// Checks and compiles `rules`; `key` names the setting in errors (`task.extract`).
    pub fn new(rules: &[ExtractRule], key: &str) -> Result<Self> {
        if rules.is_empty() {
            return Err(Error::invalid(
                key,
                "is empty; list at least one rule: \"boxed\", \"gsm8k\", \"answer_is\", \"last_number\", \"marker\" or {regex = \"...\"}",
            ));
        }
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let re = match r {
                    ExtractRule::Regex(p) => Some(Regex::new(p).map_err(|e| {
                        Error::invalid(format!("{key}[{i}]"), format!("regex {p:?}: {e}"))
                    })?),
                    _ => None,
                };
                Ok((r.clone(), re))
            })
            .collect::<Result<_>>()?;
        Ok(Self { rules })
    }

    /// The answer the first rule that finds one finds, or why none did.
    pub fn extract(&self, completion: &str) -> std::result::Result<String, String> {
        let text = mask_code(completion);
        for (rule, re) in &self.rules {
            if *rule == ExtractRule::CodeBlock {
                let code = code_block(completion).trim();
                if !code.is_empty() {
                    return Ok(code.to_string());
                }
                continue;
            }
            let found = match rule {
                ExtractRule::Boxed => boxed(&text),
                ExtractRule::Gsm8k => text.rfind("####").map(|i| line_after(&text[i + 4..])),
                ExtractRule::AnswerIs => answer_is(&text),
                ExtractRule::LastNumber => last_number(&text),
                ExtractRule::Marker => text.rfind('#').map(|i| line_after(&text[i + 1..])),
                ExtractRule::Regex(_) => {
                    let re = re.as_ref().expect("compiled in new");
                    re.captures_iter(&text)
                        .last()
                        .and_then(|c| c.get(1).or_else(|| c.get(0)))
                        .map(|m| m.as_str())
                }
                ExtractRule::CodeBlock => unreachable!("handled above"),
            };
            if let Some(answer) = found.map(clean).filter(|a| !a.is_empty()) {
                return Ok(answer);
            }
        }
        let tried: Vec<String> = self.rules.iter().map(|(r, _)| r.looks_for()).collect();
        Err(format!("no answer found: {}", tried.join(", ")))
    }
}

/// `text` with the contents of fenced code blocks (and their fences) blanked out; an
/// unclosed fence runs to the end.
fn mask_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after.find("```").map_or(after.len(), |e| e + 3);
        out.extend(std::iter::repeat_n(' ', 3 + end));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The content of the last closed fenced block (without its language tag), or `text`.
fn code_block(text: &str) -> &str {
    let mut last = None;
    let mut rest = 0;
    while let Some(open) = text[rest..].find("```").map(|i| i + rest) {
        let body = open + 3;
        let Some(close) = text[body..].find("```").map(|i| i + body) else {
            break;
        };
        // Drop the language tag: the rest of the opening line.
        let start = text[body..close].find('\n').map_or(body, |i| body + i + 1);
        last = Some(&text[start..close]);
        rest = close + 3;
    }
    last.unwrap_or(text)
}

/// The rest of the line.
fn line_after(s: &str) -> &str {
    s.split('\n').next().unwrap_or("")
}

fn boxed(text: &str) -> Option<&str> {
    let mut end = text.len();
    // From the last occurrence backwards, the first that is well formed.
    while let Some(at) = text[..end].rfind(['\\']) {
        end = at;
        let rest = &text[at + 1..];
        let Some(name) = ["boxed", "fbox"].into_iter().find(|n| rest.starts_with(n)) else {
            continue;
        };
        let body = &rest[name.len()..];
        let trimmed = body.trim_start();
        if trimmed.starts_with('{') {
            let open = text.len() - trimmed.len();
            if let Some(close) = crate::math::matching_brace(text, open) {
                return Some(&text[open + 1..close]);
            }
        } else if body.starts_with(' ') {
            // `\boxed 5`
            let token = trimmed
                .split(|c: char| c.is_whitespace() || c == '$')
                .next()?;
            if !token.is_empty() {
                return Some(token);
            }
        }
    }
    None
}

fn answer_is(text: &str) -> Option<&str> {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)answer\s*(?:is|:|=)\s*[:=]?").unwrap());
    let m = RE.find_iter(text).last()?;
    let rest = line_after(&text[m.end()..]);
    // To the end of the sentence: a period followed by a space (not a decimal point).
    let end = rest
        .char_indices()
        .find(|&(i, c)| c == '.' && rest[i + 1..].starts_with(char::is_whitespace))
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

fn last_number(text: &str) -> Option<&str> {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"[-−]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:/[0-9]+)?").unwrap()
    });
    let m = RE.find_iter(text).last()?;
    let s = m.as_str();
    // A minus right after a digit, a letter or a bracket is subtraction, not a sign.
    let before = text[..m.start()].chars().next_back();
    if s.starts_with(['-', '−']) && before.is_some_and(|c| c.is_alphanumeric() || c == ')') {
        return Some(s.trim_start_matches(['-', '−']));
    }
    Some(s)
}

/// Strips delimiters, emphasis and trailing punctuation; unicode minus becomes `-`.
fn clean(found: &str) -> String {
    let mut s = found.trim().replace('−', "-");
    loop {
        let t = s
            .trim()
            .trim_start_matches([':', '='])
            .trim_matches(['*', '$'])
            .trim_end_matches(['.', ',', ';', ':', '!', '?'])
            .trim();
        if t.len() == s.len() {
            return s;
        }
        s = t.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(rule: ExtractRule, text: &str) -> Option<String> {
        Extractor::new(&[rule], "task.extract")
            .unwrap()
            .extract(text)
            .ok()
    }

    #[test]
    fn boxed_takes_the_last_well_formed_box_with_nested_braces() {
        let b = |t| one(ExtractRule::Boxed, t);
        assert_eq!(b("so \\boxed{3} or rather \\boxed{4}."), Some("4".into()));
        assert_eq!(b("$\\boxed{\\frac{1}{2}}$"), Some("\\frac{1}{2}".into()));
        assert_eq!(b("\\boxed{\\{1, 2\\}}"), Some("\\{1, 2\\}".into()));
        assert_eq!(b("\\boxed{5} then \\boxed{6"), Some("5".into()));
        assert_eq!(b("\\boxed 7$"), Some("7".into()));
        assert_eq!(b("\\fbox{8}"), Some("8".into()));
        assert_eq!(b("\\boxed{}"), None);
        assert_eq!(b("```\n\\boxed{1}\n```\nno box outside"), None);
        assert_eq!(b("\\boxed{−3}"), Some("-3".into()));
    }

    #[test]
    fn gsm8k_and_marker_read_the_last_line() {
        let g = |t| one(ExtractRule::Gsm8k, t);
        assert_eq!(g("a\n#### 1,000.\nthanks"), Some("1,000".into()));
        assert_eq!(g("#### 3\n#### 4"), Some("4".into()));
        assert_eq!(
            g("```python\nprint('#### 9')\n```\n#### 7"),
            Some("7".into())
        );
        assert_eq!(g("####"), None);
        assert_eq!(g("#### −12"), Some("-12".into()));
        let m = |t| one(ExtractRule::Marker, t);
        assert_eq!(m("7+5=12#632"), Some("632".into()));
        assert_eq!(m("#### 42"), Some("42".into()));
    }

    #[test]
    fn answer_is_stops_at_the_sentence_end_not_at_a_decimal_point() {
        let a = |t| one(ExtractRule::AnswerIs, t);
        assert_eq!(a("So the answer is 3.5. Done."), Some("3.5".into()));
        assert_eq!(
            a("The final answer is $\\frac{1}{2}$."),
            Some("\\frac{1}{2}".into())
        );
        assert_eq!(a("ANSWER: **42**"), Some("42".into()));
        assert_eq!(
            a("the answer is 3, wait, the answer is 4!"),
            Some("4".into())
        );
        assert_eq!(a("Answer = −2"), Some("-2".into()));
        assert_eq!(a("no conclusion"), None);
    }

    #[test]
    fn last_number_skips_code_and_reads_signs_separators_and_fractions() {
        let n = |t| one(ExtractRule::LastNumber, t);
        assert_eq!(n("I have 3 apples and 12."), Some("12".into()));
        assert_eq!(n("it costs $1,250.50!"), Some("1,250.50".into()));
        assert_eq!(n("so x = −7"), Some("-7".into()));
        assert_eq!(n("5-3"), Some("3".into()));
        assert_eq!(n("a half: 1/2"), Some("1/2".into()));
        assert_eq!(n("12.\n```\nx = 99\n```\n"), Some("12".into()));
        assert_eq!(n("unclosed ``` 99"), None);
        assert_eq!(n("none"), None);
    }

    #[test]
    fn regex_uses_its_first_group_and_rules_fall_through_in_order() {
        let r = |t| one(ExtractRule::Regex(r"Final: (\w+)".into()), t);
        assert_eq!(r("Final: a. Final: b"), Some("b".into()));
        let whole = one(ExtractRule::Regex(r"[A-E]\)".into()), "pick B) or C)");
        assert_eq!(whole, Some("C)".into()));
        let ex = Extractor::new(&ExtractRule::defaults(), "task.extract").unwrap();
        assert_eq!(ex.extract("\\boxed{1} #### 2").unwrap(), "1");
        assert_eq!(ex.extract("#### 2 and 3").unwrap(), "2 and 3");
        assert_eq!(ex.extract("maybe 4 or 5").unwrap(), "5");
        let why = ex.extract("no idea").unwrap_err();
        assert!(
            why.contains("no \\boxed{…}") && why.contains("no number"),
            "{why}"
        );
    }

    #[test]
    fn code_block_takes_the_last_fence_or_the_whole_text() {
        let c = |t| one(ExtractRule::CodeBlock, t);
        assert_eq!(
            c("Here:\n```python\ndef f():\n    return 1\n```\nDone."),
            Some("def f():\n    return 1".into())
        );
        assert_eq!(
            c("```\na = 1\n```\nthen\n```py\nb = 2\n```"),
            Some("b = 2".into())
        );
        assert_eq!(c("def g(): pass"), Some("def g(): pass".into()));
        assert_eq!(c("```python\nunclosed"), Some("```python\nunclosed".into()));
    }

    #[test]
    fn bad_rules_are_named() {
        let err = Extractor::new(
            &[ExtractRule::Boxed, ExtractRule::Regex("(".into())],
            "task.extract",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("task.extract[1]: regex \"(\""), "{err}");
        let err = Extractor::new(&[], "task.extract").unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        #[derive(Deserialize)]
        struct T {
            extract: Vec<ExtractRule>,
        }
        let parsed: T =
            toml::from_str(r#"extract = ["boxed", "last_number", {regex = 'x=(\d+)'}]"#).unwrap();
        assert_eq!(parsed.extract[2], ExtractRule::Regex(r"x=(\d+)".into()));
    }
}
