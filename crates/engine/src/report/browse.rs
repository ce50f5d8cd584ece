//! The report's sample browser: the first problems of each round's `samples.jsonl`, with a
//! filter by what happened to each sample (correct, incorrect, ungradable, kept for
//! training) made of radio buttons and CSS `:checked` rules, so the page stays script-free.
//! For a task with a reference completion (the built-in traces), each sample shows where it
//! first departs from it.

use super::{escape, fmt_num};
use crate::steps::StepPattern;
use crate::store::RunDir;
use crate::Result;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

/// Problems per round shown in the browser, and distinct completions per problem.
const BROWSE_PROBLEMS: usize = 12;
const BROWSE_COMPLETIONS: usize = 32;

/// The filters: (class of a sample row, label). A problem carries `h<class>` when one of its
/// rows has the class, so a filter hides the problems with nothing to show.
const FILTERS: [(&str, &str); 4] = [
    ("correct", "correct"),
    ("incorrect", "incorrect"),
    ("ungradable", "ungradable"),
    ("kept", "kept for training"),
];

/// The filter's rules: with filter `c` checked, rows without class `c` and problems without
/// class `hc` are hidden.
pub(super) fn style() -> String {
    let mut s = String::from(
        ".browse input{margin:0 3px 0 10px}.browse label{font-size:12px}\
         td.dep{white-space:nowrap}mark{background:#fde7a8}",
    );
    for (c, _) in FILTERS {
        let _ = write!(
            s,
            ".f-{c}:checked~.probs tr.s:not(.{c}),.f-{c}:checked~.probs .prob:not(.h{c}){{display:none}}"
        );
    }
    s
}

/// Where `completion` first departs from `reference`: the character index, or `None` when
/// they are equal.
pub fn departure(completion: &str, reference: &str) -> Option<usize> {
    let mut a = completion.chars();
    let mut b = reference.chars();
    let mut i = 0;
    loop {
        match (a.next(), b.next()) {
            (None, None) => return None,
            (x, y) if x == y => i += 1,
            _ => return Some(i),
        }
    }
}

/// The step pattern of the task `config_toml` configures (the built-in traces end a step
/// at `;` and `#`), when its task builds here and has one.
pub(super) fn task_steps(config_toml: &str) -> Option<StepPattern> {
    let cfg: toml::Value = toml::from_str(config_toml).ok()?;
    let task: autodidact_tasks::TaskConfig = cfg.get("task")?.clone().try_into().ok()?;
    let task = task.build().ok()?;
    StepPattern::new("task", task.step_pattern()?).ok()
}

/// Where a sample departs from the reference, in words: the character and, with a step
/// pattern, which of the reference's steps.
fn departure_note(at: usize, reference: &str, steps: Option<&StepPattern>) -> String {
    let Some(p) = steps else {
        return format!("departs at char {at}");
    };
    let byte = reference
        .char_indices()
        .nth(at)
        .map_or(reference.len(), |(b, _)| b);
    let ends = p.ends(reference);
    let step = ends.iter().take_while(|&&e| e <= byte).count() + 1;
    if step > ends.len() {
        format!("runs on past the reference (char {at})")
    } else {
        format!("departs in step {step} of {} (char {at})", ends.len())
    }
}

/// A sample's completion with the part after its departure from the reference marked.
fn marked(completion: &str, at: Option<usize>) -> String {
    match at {
        None => escape(completion),
        Some(i) => {
            let split = completion
                .char_indices()
                .nth(i)
                .map_or(completion.len(), |(b, _)| b);
            let (same, rest) = completion.split_at(split);
            let rest = if rest.is_empty() { "∅" } else { rest };
            format!("{}<mark>{}</mark>", escape(same), escape(rest))
        }
    }
}

/// The (prompt, completion) pairs a round trained on: `completion`, `chosen` and `rejected`
/// of each line of its `train.jsonl`.
fn trained_on(dir: &RunDir, rd: &str) -> Result<HashSet<(String, String)>> {
    let rel = format!("{rd}/train.jsonl");
    let mut set = HashSet::new();
    if !dir.path(&rel).exists() {
        return Ok(set);
    }
    let rows: Vec<Value> = dir.read_jsonl(&rel)?;
    for row in rows {
        let prompt = row["prompt"].as_str().unwrap_or("");
        for k in ["completion", "chosen", "rejected"] {
            if let Some(c) = row[k].as_str() {
                set.insert((prompt.to_string(), c.to_string()));
            }
        }
    }
    Ok(set)
}

/// Whether a sample went into training: an RL rollout that was not dropped, or any other
/// sample that appears in the round's training set.
fn kept(row: &Value, trained: &HashSet<(String, String)>) -> bool {
    match row.get("dropped").and_then(Value::as_bool) {
        Some(dropped) => !dropped,
        None => {
            let key = (
                row["prompt"].as_str().unwrap_or("").to_string(),
                row["completion"].as_str().unwrap_or("").to_string(),
            );
            trained.contains(&key)
        }
    }
}

/// One distinct completion of a problem: its rows' classes merged, and how often it came.
struct Distinct<'a> {
    row: &'a Value,
    count: usize,
    kept: bool,
    advantages: Vec<f64>,
}

/// The browser of one round (empty when the round wrote no samples).
fn round(dir: &RunDir, round: u32, steps: Option<&StepPattern>) -> Result<String> {
    let rd = RunDir::round_dir(round);
    let rel = format!("{rd}/samples.jsonl");
    if !dir.path(&rel).exists() {
        return Ok(String::new());
    }
    let rows: Vec<Value> = dir.read_jsonl(&rel)?;
    let trained = trained_on(dir, &rd)?;
    let mut order: Vec<&str> = Vec::new();
    let mut by: BTreeMap<&str, Vec<Distinct>> = BTreeMap::new();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    // A pair of the training set is counted once however often it was sampled.
    let mut counted: HashSet<(&str, &str)> = HashSet::new();
    for row in &rows {
        let grade = row["grade"].as_str().unwrap_or("?");
        let k = kept(row, &trained);
        let key = (
            row["prompt"].as_str().unwrap_or(""),
            row["completion"].as_str().unwrap_or(""),
        );
        let first = row.get("dropped").is_some() || counted.insert(key);
        *totals.entry(grade).or_default() += 1;
        *totals.entry("kept").or_default() += (k && first) as usize;
        let id = row["problem_id"].as_str().unwrap_or("?");
        if !by.contains_key(id) {
            if order.len() == BROWSE_PROBLEMS {
                continue;
            }
            order.push(id);
        }
        let list = by.entry(id).or_default();
        let adv = row.get("advantage").and_then(Value::as_f64);
        match list
            .iter_mut()
            .find(|d| d.row["completion"] == row["completion"])
        {
            Some(d) => {
                d.count += 1;
                d.kept |= k;
                d.advantages.extend(adv);
            }
            None => list.push(Distinct {
                row,
                count: 1,
                kept: k,
                advantages: adv.into_iter().collect(),
            }),
        }
    }
    let name = format!("f{round}");
    let mut s = format!(
        "<details><summary>round {round}: {} samples ({})</summary><div class=\"browse\">",
        rows.len(),
        FILTERS
            .iter()
            .map(|(c, l)| format!("{} {l}", totals.get(c).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = write!(
        s,
        "<input type=\"radio\" name=\"{name}\" id=\"{name}-all\" checked><label for=\"{name}-all\">all</label>"
    );
    for (c, l) in FILTERS {
        let _ = write!(
            s,
            "<input type=\"radio\" name=\"{name}\" id=\"{name}-{c}\" class=\"f-{c}\"><label for=\"{name}-{c}\">{l}</label>"
        );
    }
    let _ = write!(
        s,
        "<div class=\"probs\"><p class=\"cap\">The round's first {} problem{}; identical completions are shown once with their count.</p>",
        order.len(),
        if order.len() == 1 { "" } else { "s" }
    );
    for id in order {
        let items = &by[id];
        let first = items[0].row;
        let reference = first.get("reference").and_then(Value::as_str);
        let classes: Vec<String> = FILTERS
            .iter()
            .filter(|(c, _)| {
                items
                    .iter()
                    .any(|d| d.row["grade"].as_str() == Some(*c) || (*c == "kept" && d.kept))
            })
            .map(|(c, _)| format!("h{c}"))
            .collect();
        let _ = write!(
            s,
            "<div class=\"prob {}\"><b>{}</b> <code>{}</code>",
            classes.join(" "),
            escape(id),
            escape(first["prompt"].as_str().unwrap_or(""))
        );
        if let Some(r) = reference {
            let _ = write!(s, " reference <code>{}</code>", escape(r));
        }
        s.push_str("<table>");
        for d in items.iter().take(BROWSE_COMPLETIONS) {
            let grade = d.row["grade"].as_str().unwrap_or("?");
            let completion = d.row["completion"].as_str().unwrap_or("");
            let at = reference.and_then(|r| departure(completion, r));
            let dep = match (reference, at) {
                (None, _) => String::new(),
                (Some(_), None) => "<td class=\"dep\">= reference</td>".into(),
                (Some(r), Some(i)) => {
                    format!("<td class=\"dep\">{}</td>", departure_note(i, r, steps))
                }
            };
            let reward = d.row.get("reward").and_then(Value::as_f64);
            let adv = match d.advantages.iter().copied().reduce(f64::min) {
                None => String::new(),
                Some(lo) => {
                    let hi = d.advantages.iter().copied().fold(lo, f64::max);
                    if hi - lo < 5e-4 {
                        format!("<td>advantage {}</td>", fmt_num(lo))
                    } else {
                        format!("<td>advantage {}…{}</td>", fmt_num(lo), fmt_num(hi))
                    }
                }
            };
            let _ = write!(
                s,
                "<tr class=\"s {grade}{}\"><td><code>{}</code></td><td>{grade}{}</td>{dep}<td>×{}</td><td>reward {}</td>{adv}</tr>",
                if d.kept { " kept" } else { "" },
                marked(completion, if reference.is_some() { at } else { None }),
                if d.kept { ", kept" } else { "" },
                d.count,
                reward.map_or("–".into(), fmt_num),
            );
        }
        s.push_str("</table></div>");
    }
    s.push_str("</div></div></details>");
    Ok(s)
}

/// The browser of every round that wrote samples.
pub(super) fn samples(
    dir: &RunDir,
    rounds: impl Iterator<Item = u32>,
    steps: Option<&StepPattern>,
) -> Result<String> {
    let mut s = String::new();
    for r in rounds {
        s.push_str(&round(dir, r, steps)?);
    }
    if s.is_empty() {
        s.push_str("<p>No round wrote samples.</p>");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue19_departure_is_the_first_differing_character() {
        let r = "7+5+0=12;4+8+1=13;3+2+1=06#632";
        assert_eq!(departure(r, r), None);
        assert_eq!(departure("7+5+0=12;4+8+1=14;3+2+1=06#642", r), Some(16));
        assert_eq!(departure("7+5+0=12", r), Some(8)); // stopped early
        assert_eq!(departure(&format!("{r}7"), r), Some(r.len())); // ran on
        assert_eq!(departure("", r), Some(0));
        assert_eq!(departure("é+x", "é+y"), Some(2)); // characters, not bytes
        assert_eq!(
            marked("a<b", Some(1)),
            "a<mark>&lt;b</mark>",
            "the departure and everything after it are marked and escaped"
        );
        assert_eq!(marked("ab", Some(2)), "ab<mark>∅</mark>");
        let steps = task_steps("[task]\nname = \"addition\"\n").expect("addition has steps");
        assert_eq!(
            departure_note(16, r, Some(&steps)),
            "departs in step 2 of 4 (char 16)"
        );
        assert_eq!(
            departure_note(8, r, Some(&steps)),
            "departs in step 1 of 4 (char 8)"
        );
        assert_eq!(
            departure_note(9, r, Some(&steps)),
            "departs in step 2 of 4 (char 9)"
        );
        assert_eq!(
            departure_note(0, r, Some(&steps)),
            "departs in step 1 of 4 (char 0)"
        );
        assert_eq!(
            departure_note(r.len(), r, Some(&steps)),
            "runs on past the reference (char 30)"
        );
        assert_eq!(departure_note(3, r, None), "departs at char 3");
        assert!(task_steps("[task]\nname = \"nonesuch\"\n").is_none());
    }

    /// Every sample row carries its grade and whether it was kept; every problem the filters
    /// it can show; the CSS hides the rest for each filter. A row's kept flag comes from the
    /// round's training set, or from `dropped` for RL rollouts.
    #[test]
    fn issue19_the_browser_filters_by_grade_and_kept() {
        use serde_json::json;
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::testutil::run_dir(tmp.path(), "r");
        let row = |id: &str, c: &str, grade: &str| {
            json!({"problem_id": id, "prompt": format!("{id}="), "completion": c,
                   "grade": grade, "reward": (grade == "correct") as u8, "reference": "1+1=2"})
        };
        let rows = [
            row("a", "1+1=2", "correct"),
            row("a", "1+1=2", "correct"),
            row("a", "1+2=3", "incorrect"),
            row("a", "??", "ungradable"),
            row("b", "1+1=2", "correct"),
        ];
        dir.write_jsonl("rounds/r0001/samples.jsonl", &rows)
            .unwrap();
        dir.write_jsonl(
            "rounds/r0001/train.jsonl",
            &[json!({"prompt": "a=", "completion": "1+1=2"})],
        )
        .unwrap();
        let rl = [
            json!({"problem_id": "c", "prompt": "c=", "completion": "5", "grade": "correct",
                   "reward": 1.0, "advantage": 0.5, "dropped": false}),
            json!({"problem_id": "c", "prompt": "c=", "completion": "6", "grade": "incorrect",
                   "reward": 0.0, "advantage": -0.5, "dropped": true}),
        ];
        dir.write_jsonl("rounds/r0002/samples.jsonl", &rl).unwrap();
        let html = samples(&dir, [1, 2, 3].into_iter(), None).unwrap();
        assert!(
            html.contains(
                "round 1: 5 samples (3 correct, 1 incorrect, 1 ungradable, 1 kept for training)"
            ),
            "{html}"
        );
        assert!(
            html.contains("<div class=\"prob hcorrect hincorrect hungradable hkept\"><b>a</b>"),
            "{html}"
        );
        assert!(
            html.contains("<div class=\"prob hcorrect\"><b>b</b>"),
            "{html}"
        );
        assert!(html.contains("<tr class=\"s correct kept\"><td><code>1+1=2</code></td><td>correct, kept</td><td class=\"dep\">= reference</td><td>×2</td>"), "{html}");
        assert!(html.contains("<tr class=\"s incorrect\"><td><code>1+<mark>2=3</mark></code></td><td>incorrect</td><td class=\"dep\">departs at char 2</td><td>×1</td>"), "{html}");
        assert!(html.contains("<tr class=\"s correct kept\"><td><code>5</code></td><td>correct, kept</td><td>×1</td><td>reward 1</td><td>advantage 0.500</td>"), "{html}");
        assert!(
            html.contains("<tr class=\"s incorrect\"><td><code>6</code></td>"),
            "{html}"
        );
        assert!(
            !html.contains("round 3"),
            "a round without samples is left out"
        );
        for c in ["correct", "incorrect", "ungradable", "kept"] {
            assert!(html.contains(&format!("id=\"f1-{c}\" class=\"f-{c}\"")));
            assert!(style().contains(&format!(
                ".f-{c}:checked~.probs tr.s:not(.{c}),.f-{c}:checked~.probs .prob:not(.h{c}){{display:none}}"
            )));
        }
        assert_eq!(
            samples(&dir, [3].into_iter(), None).unwrap(),
            "<p>No round wrote samples.</p>"
        );
    }
}
