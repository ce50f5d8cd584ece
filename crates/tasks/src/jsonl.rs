//! Tasks from JSONL files: one problem per line, graded by extracting the final answer and
//! comparing it with the reference (`[task] name = "jsonl"`).
//!
//! A line is a JSON object:
//!
//! ```json
//! {"id": "gsm-17", "prompt": "Tom has 3 apples...", "answer": "7", "solution": "3+4=7#7", "meta": {...}}
//! ```
//!
//! - `id` (string, required): unique across the task's files.
//! - `prompt` (string) or `messages` (a list of `{"role", "content"}`, TRL's conversational
//!   form): exactly one of them. A pretrained model renders messages with its own chat
//!   template when the run draws the problem; for a model trained from scratch they are
//!   rendered in a simple built-in format, `role: content` per line, ending with
//!   `assistant:`, which it learns in the seed stage.
//! - `answer` (any JSON, usually a string): the reference answer; a non-string value is
//!   compared as its JSON text.
//! - `solution` (string, optional): a worked reference completion; the seed stage learns
//!   from problems that have one.
//! - `meta` (any JSON, optional): carried with the problem untouched.
//!
//! Any other field is an error (put extra data under `meta`). Errors name the file, the line
//! and the field. Train and held-out problems come from two files, or from one file split by
//! a hash of each id (about one in five held out; [`crate::split_of`]).

use crate::extract::{ExtractRule, Extractor};
use crate::sandbox::{Outcome, Sandbox, SandboxConfig};
use crate::verifier::{Item, VerifierConfig, VerifierPool};
use crate::{math, split_of};
use autodidact_core::{
    plain_chat_prompt, ChatMessage, Error, Problem, Result, Rng, Split, Task, Verdict,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// How an extracted answer is compared with the reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// Math equivalence ([`crate::math::equivalent`]): `0.75` = `\frac34`, `1,000` = `1000`.
    #[default]
    Math,
    /// The same text, ignoring surrounding whitespace.
    Exact,
    /// The answer is Python unit tests (asserts): the extracted code followed by them runs in
    /// the sandbox (`[task.sandbox]`), and passes when it exits normally. Use with
    /// `extract = ["code_block"]`.
    PythonTests,
}

/// Settings of a JSONL task (`[task] name = "jsonl"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The problems to train on. Without `eval`, this one file holds both splits, divided by
    /// a hash of each id. A relative path is read from the working directory.
    pub train: PathBuf,
    /// The held-out problems, if they come in their own file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<PathBuf>,
    /// How to find the answer in a completion: rules tried in order ("boxed", "gsm8k",
    /// "answer_is", "last_number", "marker", or {regex = "..."}).
    #[serde(default = "ExtractRule::defaults")]
    pub extract: Vec<ExtractRule>,
    /// How the extracted answer is compared with the reference: "math" or "exact".
    #[serde(default)]
    pub compare: Compare,
    /// Grade with an external verifier process instead (`extract` and `compare` are then
    /// unused): `[task.verifier] command = ["python3", "verify.py"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<VerifierConfig>,
    /// Limits of the sandbox that runs code for `compare = "python_tests"`.
    #[serde(default)]
    pub sandbox: SandboxConfig,
}

impl JsonlConfig {
    /// Problems from `train` alone (both splits, by a hash of each id), graded by the default
    /// extraction rules and math comparison.
    pub fn new(train: impl Into<PathBuf>) -> Self {
        Self {
            train: train.into(),
            eval: None,
            extract: ExtractRule::defaults(),
            compare: Compare::Math,
            verifier: None,
            sandbox: SandboxConfig::default(),
        }
    }

    /// Checks the settings and reads the files.
    pub fn build(&self) -> Result<Jsonl> {
        let extractor = Extractor::new(&self.extract, "task.extract")?;
        let verifier = self
            .verifier
            .as_ref()
            .map(VerifierConfig::build)
            .transpose()?;
        let sandbox = match self.compare {
            Compare::PythonTests if self.verifier.is_none() => Some(self.sandbox.build()?),
            _ => None,
        };
        let (mut seen, mut raw_answers) = (HashMap::new(), HashMap::new());
        let (train, eval) = match &self.eval {
            Some(eval) => (
                read(&self.train, &mut seen, &mut raw_answers)?,
                read(eval, &mut seen, &mut raw_answers)?,
            ),
            None => read(&self.train, &mut seen, &mut raw_answers)?
                .into_iter()
                .partition(|p| split_of(&p.id) == Split::Train),
        };
        for (split, problems) in [("train", &train), ("held-out", &eval)] {
            if problems.is_empty() {
                return Err(Error::invalid(
                    "task",
                    format!(
                        "the {split} split of {} has no problems",
                        self.train.display()
                    ),
                ));
            }
        }
        let mut alphabet: Vec<char> = train
            .iter()
            .chain(&eval)
            .flat_map(|p| {
                [Some(&p.prompt), p.answer.as_ref(), p.solution.as_ref()]
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s.chars())
            })
            .chain(HINT_CHARS.chars())
            .collect();
        alphabet.sort_unstable();
        alphabet.dedup();
        let max_prompt = train
            .iter()
            .chain(&eval)
            .map(|p| p.prompt.chars().count() + hint_len(p))
            .max()
            .unwrap_or(0);
        let max_solution = train
            .iter()
            .chain(&eval)
            .filter_map(|p| p.solution.as_ref())
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0);
        Ok(Jsonl {
            train,
            eval,
            alphabet: alphabet.into_iter().collect(),
            max_chars: (max_prompt, max_solution),
            extractor,
            compare: self.compare,
            verifier,
            raw_answers,
            sandbox,
            ran: Default::default(),
        })
    }
}

/// The characters the default hint format (`[answer]prompt`) adds, and the one every
/// character the files do not have is read as (`autodidact sample` of new text).
const HINT_CHARS: &str = "[]\u{FFFD}";

fn hint_len(p: &Problem) -> usize {
    p.answer.as_ref().map_or(0, |a| a.chars().count() + 2)
}

/// A line of a JSONL task file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    answer: Option<serde_json::Value>,
    #[serde(default)]
    solution: Option<String>,
    #[serde(default)]
    meta: Option<serde_json::Value>,
}

/// Reads the problems of `path`, line by line; `seen` maps each id to where it was first seen,
/// and `raw_answers` keeps each answer that is not a string as the JSON value it was.
fn read(
    path: &Path,
    seen: &mut HashMap<String, (PathBuf, usize)>,
    raw_answers: &mut HashMap<String, serde_json::Value>,
) -> Result<Vec<Problem>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening task file", path, e))?;
    let at = |line: usize| format!("{}:{line}", path.display());
    let mut out = Vec::new();
    for (i, text) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let text = text.map_err(|e| Error::io("reading task file", path, e))?;
        if text.trim().is_empty() {
            continue;
        }
        let de = &mut serde_json::Deserializer::from_str(&text);
        let line: Line = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let why = e.into_inner();
            let hint = if why.to_string().contains("unknown field") {
                "; put extra data under `meta`"
            } else {
                ""
            };
            match field.as_str() {
                "." | "?" => Error::invalid(at(n), format!("{why}{hint}")),
                f => Error::invalid(format!("{}, field `{f}`", at(n)), format!("{why}{hint}")),
            }
        })?;
        let field_err = |f: &str, msg: &str| Error::invalid(format!("{}, field `{f}`", at(n)), msg);
        if line.id.trim().is_empty() {
            return Err(field_err("id", "is empty"));
        }
        let messages = line.messages;
        let prompt = match (line.prompt, &messages) {
            (Some(p), None) => p,
            (None, Some(m)) => {
                if m.is_empty() {
                    return Err(field_err("messages", "is empty"));
                }
                plain_chat_prompt(m)
            }
            (Some(_), Some(_)) => {
                return Err(field_err(
                    "prompt",
                    "and `messages` are both given; give one",
                ))
            }
            (None, None) => {
                return Err(field_err(
                    "prompt",
                    "is missing (give `prompt` or `messages`)",
                ))
            }
        };
        if prompt.is_empty() {
            return Err(field_err("prompt", "is empty"));
        }
        let answer = match line.answer {
            None | Some(serde_json::Value::Null) => {
                return Err(field_err(
                    "answer",
                    "is missing; every problem needs a reference answer to be graded",
                ))
            }
            Some(serde_json::Value::String(s)) => s,
            // Compared as its JSON text; a verifier process receives the value.
            Some(v) => {
                raw_answers.insert(line.id.clone(), v.clone());
                v.to_string()
            }
        };
        if let Some((file, first)) = seen.get(&line.id) {
            return Err(field_err(
                "id",
                &format!("{:?} is a duplicate of {}:{first}", line.id, file.display()),
            ));
        }
        seen.insert(line.id.clone(), (path.to_path_buf(), n));
        out.push(Problem {
            id: line.id,
            prompt,
            answer: Some(answer),
            solution: line.solution,
            meta: line.meta,
            messages,
        });
    }
    Ok(out)
}

/// A task read from JSONL files.
pub struct Jsonl {
    train: Vec<Problem>,
    eval: Vec<Problem>,
    alphabet: String,
    max_chars: (usize, usize),
    extractor: Extractor,
    compare: Compare,
    verifier: Option<VerifierPool>,
    /// Answers that were not strings in the file, by problem id, as they were.
    raw_answers: HashMap<String, serde_json::Value>,
    sandbox: Option<Sandbox>,
    /// Verdicts of programs already run, by (problem id, code).
    ran: std::sync::Mutex<HashMap<(String, String), Verdict>>,
}

/// Programs whose verdicts are kept; the cache starts over past this.
const MAX_CACHED: usize = 100_000;

impl Jsonl {
    /// The reference answer as the file gave it.
    fn answer_json(&self, p: &Problem) -> serde_json::Value {
        match (self.raw_answers.get(&p.id), &p.answer) {
            (Some(v), _) => v.clone(),
            (None, Some(a)) => serde_json::Value::String(a.clone()),
            (None, None) => serde_json::Value::Null,
        }
    }

    fn verify_builtin(&self, problem: &Problem, completion: &str) -> Verdict {
        let reference = problem.answer.as_deref().unwrap_or_default();
        let found = match self.extractor.extract(completion) {
            Ok(found) => found,
            Err(why) => return Verdict::ungradable_because(why),
        };
        let (same, answer) = match self.compare {
            Compare::Math => (math::equivalent(&found, reference), math::canonical(&found)),
            Compare::Exact => (found.trim() == reference.trim(), found.trim().to_string()),
            Compare::PythonTests => return self.run_tests(problem, &found, reference),
        };
        if same {
            Verdict::correct(answer)
        } else {
            Verdict::incorrect(answer)
        }
    }
}

impl Jsonl {
    /// Runs `code` followed by the problem's tests in the sandbox (or takes the verdict of an
    /// identical earlier run).
    fn run_tests(&self, problem: &Problem, code: &str, tests: &str) -> Verdict {
        let key = (problem.id.clone(), code.to_string());
        if let Some(v) = self.ran.lock().expect("cache lock").get(&key) {
            return v.clone();
        }
        let sandbox = self.sandbox.as_ref().expect("built for python_tests");
        let verdict = match sandbox.run_python(&format!("{code}\n\n{tests}\n")) {
            Ok(Outcome::Passed) => Verdict::correct(code.to_string()),
            Ok(failed) => {
                let mut v = Verdict::incorrect(code.to_string());
                v.reason = Some(match failed {
                    Outcome::Failed { why } => format!("tests failed: {why}"),
                    Outcome::Limit { which } => format!("stopped at the {which} limit"),
                    Outcome::Passed => unreachable!(),
                });
                v
            }
            Err(e) => return Verdict::ungradable_because(format!("sandbox error: {e}")),
        };
        let mut ran = self.ran.lock().expect("cache lock");
        if ran.len() >= MAX_CACHED {
            ran.clear();
        }
        ran.insert(key, verdict.clone());
        verdict
    }
}

impl Task for Jsonl {
    fn name(&self) -> &str {
        "jsonl"
    }

    /// Every character of the files' prompts, answers and solutions (sorted), the hint
    /// format's brackets, and [`autodidact_core::UNKNOWN_CHAR`] for characters the files do
    /// not have.
    fn alphabet(&self) -> String {
        self.alphabet.clone()
    }

    fn max_chars(&self) -> (usize, usize) {
        self.max_chars
    }

    /// The generic review, with the answer form the first extraction rule reads.
    fn review_instruction(&self) -> String {
        match self.extractor.answer_form() {
            Some(form) => format!("{} {form}", autodidact_core::REVIEW_INSTRUCTION),
            None => autodidact_core::REVIEW_INSTRUCTION.to_string(),
        }
    }

    /// `count` problems of `split` in an order fixed by `seed`: those with a worked solution
    /// first (the seed stage learns from the first ones), each group shuffled.
    fn problems(&self, split: Split, count: usize, seed: u64) -> Result<Vec<Problem>> {
        let (all, name) = match split {
            Split::Train => (&self.train, "train"),
            Split::Eval => (&self.eval, "held-out"),
        };
        if count > all.len() {
            return Err(Error::invalid(
                "jsonl problems",
                format!(
                    "{count} {name} problems were asked for, but the task has {}; ask for fewer",
                    all.len()
                ),
            ));
        }
        let mut order: Vec<usize> = (0..all.len()).collect();
        Rng::derived(seed, matches!(split, Split::Eval) as u64).shuffle(&mut order);
        order.sort_by_key(|&i| all[i].solution.is_none());
        Ok(order[..count].iter().map(|&i| all[i].clone()).collect())
    }

    fn verify(&self, problem: &Problem, completion: &str) -> Verdict {
        match self.verify_batch(&[(problem, completion)]) {
            Ok(mut v) => v.remove(0),
            Err(e) => Verdict::ungradable_because(format!("verifier error: {e}")),
        }
    }

    fn verify_batch(&self, items: &[(&Problem, &str)]) -> Result<Vec<Verdict>> {
        let Some(pool) = &self.verifier else {
            return Ok(items
                .iter()
                .map(|(p, c)| self.verify_builtin(p, c))
                .collect());
        };
        let answers: Vec<serde_json::Value> =
            items.iter().map(|(p, _)| self.answer_json(p)).collect();
        let items: Vec<Item> = items
            .iter()
            .zip(&answers)
            .map(|(&(problem, completion), answer)| Item {
                problem,
                answer,
                completion,
            })
            .collect();
        pool.verify_batch(&items)
    }

    fn set_log_dir(&self, dir: &Path) -> Result<()> {
        match &self.verifier {
            Some(pool) => pool.set_log_dir(dir),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    fn config(train: &Path, eval: Option<&Path>) -> JsonlConfig {
        JsonlConfig {
            eval: eval.map(Path::to_path_buf),
            ..JsonlConfig::new(train)
        }
    }

    fn err(lines: &[&str]) -> String {
        let f = file(lines);
        match config(f.path(), None).build() {
            Ok(_) => panic!("accepted {lines:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_prompts_messages_and_any_json_answer() {
        let train = file(&[
            r#"{"id": "a", "prompt": "1+1=", "answer": "2", "solution": "1+1=2#2"}"#,
            "",
            r#"{"id": "b", "messages": [{"role": "user", "content": "2+2?"}], "answer": 4, "meta": {"k": [1]}}"#,
        ]);
        let eval = file(&[r#"{"id": "c", "prompt": "3+3=", "answer": "6"}"#]);
        let task = config(train.path(), Some(eval.path())).build().unwrap();
        let ps = task.problems(Split::Train, 2, 0).unwrap();
        assert_eq!(ps[0].id, "a", "problems with solutions come first");
        assert_eq!(ps[1].prompt, "user: 2+2?\nassistant:");
        assert_eq!(ps[1].answer.as_deref(), Some("4"));
        assert_eq!(task.answer_json(&ps[1]), serde_json::json!(4));
        assert_eq!(task.answer_json(&ps[0]), serde_json::json!("2"));
        assert_eq!(ps[1].meta, Some(serde_json::json!({"k": [1]})));
        assert_eq!(task.problems(Split::Eval, 1, 0).unwrap()[0].id, "c");
        let e = task.problems(Split::Eval, 2, 0).unwrap_err().to_string();
        assert!(
            e.contains("2 held-out problems were asked for, but the task has 1"),
            "{e}"
        );
        let alphabet = task.alphabet();
        assert!(
            alphabet.contains('#')
                && alphabet.contains('[')
                && alphabet.contains(autodidact_core::UNKNOWN_CHAR)
        );
        assert_eq!(task.max_chars(), ("user: 2+2?\nassistant:".len() + 3, 7));
    }

    #[test]
    fn grades_by_extraction_and_math_equivalence() {
        let train = file(&[r#"{"id": "a", "prompt": "half?", "answer": "0.5"}"#]);
        let task = config(train.path(), Some(train.path())).build();
        // The same file as both splits repeats every id.
        assert!(task.is_err());
        let eval = file(&[r#"{"id": "b", "prompt": "x", "answer": "1"}"#]);
        let task = config(train.path(), Some(eval.path())).build().unwrap();
        let p = &task.problems(Split::Train, 1, 0).unwrap()[0];
        let v = task.verify(p, "so it is \\boxed{\\frac{1}{2}}.");
        assert!(v.is_correct());
        assert_eq!(v.answer.as_deref(), Some("1/2"));
        assert!(!task.verify(p, "#### 2").is_correct());
        let v = task.verify(p, "no idea");
        assert_eq!(v.grade, autodidact_core::Grade::Ungradable);
        assert!(v.reason.unwrap().contains("no answer found"));
    }

    #[test]
    fn one_file_splits_by_a_hash_of_the_id() {
        let lines: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"id": "p{i}", "prompt": "q{i}", "answer": "{i}"}}"#))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let f = file(&refs);
        let task = config(f.path(), None).build().unwrap();
        let held = (0..200)
            .filter(|i| split_of(&format!("p{i}")) == Split::Eval)
            .count();
        assert_eq!(task.problems(Split::Eval, held, 0).unwrap().len(), held);
        assert!(task.problems(Split::Train, 200 - held + 1, 0).is_err());
    }

    #[test]
    fn a_file_of_100k_lines_loads() {
        let mut f = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .unwrap();
        {
            let mut w = std::io::BufWriter::new(f.as_file_mut());
            for i in 0..100_000 {
                writeln!(
                    w,
                    r##"{{"id": "p{i}", "prompt": "{i}+1=", "answer": "{}", "solution": "#{}"}}"##,
                    i + 1,
                    i + 1
                )
                .unwrap();
            }
        }
        let task = config(f.path(), None).build().unwrap();
        let train = task.problems(Split::Train, 70_000, 3).unwrap();
        assert_eq!(train.len(), 70_000);
        assert!(task
            .verify(&train[0], &train[0].solution.clone().unwrap())
            .is_correct());
    }

    #[test]
    fn bad_lines_name_the_file_line_and_field() {
        for (lines, want) in [
            (
                vec![r#"{"id": "a", "prompt": "x", "answer": "1"}"#, "{"],
                ":2: EOF",
            ),
            (
                vec![r#"{"id": 3, "prompt": "x", "answer": "1"}"#],
                ":1, field `id`: invalid type",
            ),
            (
                vec![r#"{"id": "a", "promt": "x", "answer": "1"}"#],
                "unknown field `promt`",
            ),
            (
                vec![r#"{"id": "a", "prompt": "x"}"#],
                ":1, field `answer`: is missing",
            ),
            (
                vec![r#"{"id": "a", "answer": "1"}"#],
                "field `prompt`: is missing",
            ),
            (
                vec![r#"{"id": "a", "prompt": "x", "messages": [], "answer": "1"}"#],
                "both given",
            ),
            (
                vec![r#"{"id": "a", "messages": [{"role": "user"}], "answer": "1"}"#],
                "field `messages[0]`: missing field `content`",
            ),
            (
                vec![
                    r#"{"id": "a", "prompt": "x", "answer": "1"}"#,
                    r#"{"id": "a", "prompt": "y", "answer": "2"}"#,
                ],
                ":2, field `id`: \"a\" is a duplicate of",
            ),
        ] {
            let e = err(&lines);
            assert!(e.contains(want), "{lines:?}: {e}");
        }
        let missing = config(Path::new("/nonexistent/x.jsonl"), None)
            .build()
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("/nonexistent/x.jsonl"), "{missing}");
    }
}
