//! `report.html`: one self-contained page per run (or per comparison of runs) — the
//! configuration, per-round curves of every metric family as inline SVG, the lineage of
//! rounds, and a sample browser. No script, no network, no external file: it opens from disk
//! in any browser and survives being mailed around.

mod browse;

use crate::run::Manifest;
use crate::store::{RunDir, CONFIG_FILE};
use crate::Result;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

/// The file a run's report is written to.
pub const REPORT_FILE: &str = "report.html";
/// Series colours (colour-blind-safe, Okabe–Ito).
const COLOURS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
];

/// What a report reads from one run directory.
pub struct RunData {
    pub name: String,
    pub config: String,
    /// The per-round lines of `metrics.jsonl`, in round order.
    pub rounds: Vec<BTreeMap<String, f64>>,
    /// The seed-only curve: (step, held-out pass@1).
    pub seed_curve: Vec<(f64, f64)>,
    pub manifests: Vec<Manifest>,
    /// Stage durations from the journal: (stage, round, seconds).
    pub stages: Vec<(String, u32, f64)>,
    dir: RunDir,
}

impl RunData {
    /// Reads what the report needs from the run in `root`.
    pub fn load(root: &Path) -> Result<Self> {
        let (dir, _) = RunDir::open(root)?;
        let config_path = dir.path(CONFIG_FILE);
        let config = std::fs::read_to_string(&config_path)
            .map_err(|e| autodidact_core::Error::io("reading", &config_path, e))?;
        let mut rounds = Vec::new();
        let mut seed_curve = Vec::new();
        for line in dir.metrics()? {
            let Some(obj) = line.as_object() else {
                continue;
            };
            if let (Some(s), Some(p)) = (
                obj.get("seed/step").and_then(Value::as_f64),
                obj.get("seed/eval_pass@1").and_then(Value::as_f64),
            ) {
                seed_curve.push((s, p));
            }
            if obj.contains_key("round") {
                rounds.push(crate::run::numbers(&line));
            }
        }
        let mut manifests = Vec::new();
        for r in 0..rounds.len() as u32 {
            let rel = format!("{}/manifest.json", RunDir::round_dir(r));
            if dir.path(&rel).exists() {
                manifests.push(dir.read_json(&rel)?);
            }
        }
        let stages = dir
            .journal()?
            .into_iter()
            .map(|e| (e.stage, e.round, e.seconds))
            .collect();
        let name = root.file_name().map_or_else(
            || root.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Ok(Self {
            name,
            config,
            rounds,
            seed_curve,
            manifests,
            stages,
            dir,
        })
    }

    fn recipe(&self) -> String {
        self.manifests
            .first()
            .map_or_else(|| "?".into(), |m| m.recipe.clone())
    }

    /// Held-out pass@1 (%) of M0, of the last round and of the best round (the earliest of
    /// ties), the last two with their round.
    fn held_out(&self) -> HeldOut {
        let pass =
            |m: &BTreeMap<String, f64>| Some((*m.get("round")?, 100.0 * m.get("eval/pass@1")?));
        HeldOut {
            first: self.rounds.first().and_then(pass).map(|p| p.1),
            last: self.rounds.last().and_then(pass),
            best: self
                .rounds
                .iter()
                .filter_map(pass)
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.total_cmp(&a.0))),
        }
    }

    /// Seconds of the stages of rounds 1..=`upto` (every round after M0 when `None`), and
    /// the tokens they sampled when the rounds logged them.
    fn spent(&self, upto: Option<u32>) -> (f64, Option<f64>) {
        let within = |x: u32| x > 0 && upto.is_none_or(|u| x <= u);
        let secs = self
            .stages
            .iter()
            .filter(|s| within(s.1))
            .map(|s| s.2)
            .sum();
        let tokens: Vec<f64> = self
            .rounds
            .iter()
            .filter(|m| m.get("round").is_some_and(|&x| within(x as u32)))
            .filter_map(|m| m.get("rollout/sampled_tokens").copied())
            .collect();
        (secs, (!tokens.is_empty()).then(|| tokens.iter().sum()))
    }

    /// `key`'s value in the last round that logged it.
    fn last_value(&self, key: &str) -> Option<f64> {
        self.rounds.iter().rev().find_map(|m| m.get(key).copied())
    }
}

/// What [`RunData::held_out`] reads.
struct HeldOut {
    first: Option<f64>,
    last: Option<(f64, f64)>,
    best: Option<(f64, f64)>,
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A named line of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// A small line chart of one metric: one series per run, x = round (or step).
pub fn svg_chart(title: &str, series: &[Series]) -> String {
    Plot {
        title,
        x_label: "",
        series,
        curves: &[],
        size: (260.0, 150.0),
        y_range: None,
        legend_right: false,
    }
    .svg()
}

/// A line chart on shared axes: `series` drawn with a marker per point (its value on hover),
/// `curves` (fitted lines) dashed without markers, in the colour of the series of the same
/// index.
pub struct Plot<'a> {
    pub title: &'a str,
    /// Written under the x axis.
    pub x_label: &'a str,
    pub series: &'a [Series],
    pub curves: &'a [Series],
    /// Width and height in pixels.
    pub size: (f64, f64),
    /// A fixed y range, drawn with gridlines at its quarters (None: the data's range, labelled
    /// at its ends).
    pub y_range: Option<(f64, f64)>,
    /// The legend in a margin right of the plot (else inside its top right corner).
    pub legend_right: bool,
}

impl Plot<'_> {
    pub fn svg(&self) -> String {
        let (w, h) = self.size;
        let widest = self
            .series
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        let r = if self.legend_right && self.series.len() > 1 {
            16.0 + 5.5 * widest as f64
        } else {
            10.0
        };
        let (l, t, b) = (44.0, 22.0, 24.0);
        let all = self.series.iter().chain(self.curves);
        let points: Vec<(f64, f64)> = all.flat_map(|(_, s)| s.iter().copied()).collect();
        let mut s = format!(
            r#"<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title><text x="{l}" y="14" class="ct">{t}</text>"#,
            t = escape(self.title)
        );
        if points.is_empty() {
            s.push_str("</svg>");
            return s;
        }
        let fold = |f: fn(f64, f64) -> f64, init: f64, x: fn(&(f64, f64)) -> f64| {
            points.iter().map(x).fold(init, f)
        };
        let (x0, x1) = (
            fold(f64::min, f64::INFINITY, |p| p.0),
            fold(f64::max, f64::NEG_INFINITY, |p| p.0),
        );
        let (mut y0, mut y1) = (
            fold(f64::min, f64::INFINITY, |p| p.1),
            fold(f64::max, f64::NEG_INFINITY, |p| p.1),
        );
        if let Some((lo, hi)) = self.y_range {
            (y0, y1) = (lo.min(y0), hi.max(y1));
        }
        if y1 - y0 < 1e-12 {
            y0 -= 0.5_f64.max(y0.abs() * 0.1);
            y1 += 0.5_f64.max(y1.abs() * 0.1);
        }
        let px = |x: f64| l + (w - l - r) * if x1 > x0 { (x - x0) / (x1 - x0) } else { 0.5 };
        // Every integer between the ends is labelled when x counts rounds (a few dozen at
        // most); the axis's name then gives way to them.
        let ticks = points.iter().all(|p| p.0.fract() == 0.0) && (2.0..=30.0).contains(&(x1 - x0));
        let py = |y: f64| t + (h - t - b) * (1.0 - (y - y0) / (y1 - y0));
        let _ = write!(
            s,
            r#"<line x1="{l}" y1="{yb}" x2="{xr}" y2="{yb}" class="ax"/><line x1="{l}" y1="{t}" x2="{l}" y2="{yb}" class="ax"/><text x="{lx}" y="{ty}" class="tk" text-anchor="end">{top}</text><text x="{lx}" y="{yb}" class="tk" text-anchor="end">{bot}</text><text x="{l}" y="{xy}" class="tk">{xa}</text><text x="{xr}" y="{xy}" class="tk" text-anchor="end">{xb}</text><text x="{xm}" y="{xy}" class="tk" text-anchor="middle">{xl}</text>"#,
            yb = h - b,
            xr = w - r,
            lx = l - 3.0,
            ty = t + 8.0,
            xy = h - 8.0,
            xm = (l + w - r) / 2.0,
            top = fmt_num(y1),
            bot = fmt_num(y0),
            xa = fmt_num(x0),
            xb = fmt_num(x1),
            xl = if ticks {
                String::new()
            } else {
                escape(self.x_label)
            },
        );
        if ticks {
            for x in (x0 as i64 + 1)..(x1 as i64) {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{}" class="tk" text-anchor="middle">{x}</text>"#,
                    px(x as f64),
                    h - 8.0
                );
            }
        }
        if self.y_range.is_some() {
            for i in 1..4 {
                let y = y0 + (y1 - y0) * i as f64 / 4.0;
                let _ = write!(
                    s,
                    r##"<line x1="{l}" y1="{py:.1}" x2="{xr}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{lx}" y="{ty:.1}" class="tk" text-anchor="end">{v}</text>"##,
                    py = py(y),
                    xr = w - r,
                    lx = l - 3.0,
                    ty = py(y) + 3.0,
                    v = fmt_num(y)
                );
            }
        }
        let line = |pts: &[(f64, f64)]| -> String {
            pts.iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (i, (name, pts)) in self.curves.iter().enumerate() {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.2" stroke-dasharray="4 3" points="{}"><title>{}</title></polyline>"#,
                COLOURS[i % COLOURS.len()],
                line(pts),
                escape(name)
            );
        }
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="1.6" points="{}"><title>{}</title></polyline>"#,
                line(pts),
                escape(name)
            );
            for &(x, y) in pts {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{c}"><title>{}: {} = {}</title></circle>"#,
                    px(x),
                    py(y),
                    escape(name),
                    fmt_num(x),
                    fmt_num(y)
                );
            }
        }
        if self.series.len() > 1 {
            let (x, anchor) = if self.legend_right {
                (w - r + 8.0, "start")
            } else {
                (w - r - 2.0, "end")
            };
            for (i, (name, _)) in self.series.iter().enumerate().take(COLOURS.len()) {
                let _ = write!(
                    s,
                    r#"<text x="{x}" y="{}" class="tk" text-anchor="{anchor}" style="fill:{}">{}</text>"#,
                    t + 9.0 + 11.0 * i as f64,
                    COLOURS[i % COLOURS.len()],
                    escape(name)
                );
            }
        }
        s.push_str("</svg>");
        s
    }
}

/// `svg` (a [`Plot`]) as a file of its own: its namespace (which a page's inline SVG does
/// without) and the chart styles written into it.
pub fn standalone_svg(svg: &str) -> String {
    let style = format!("<style>{CHART_STYLE}</style>");
    let svg = svg.replacen("<svg ", "<svg xmlns=\"http://www.w3.org/2000/svg\" ", 1);
    match svg.find('>') {
        Some(i) => format!("{}{style}{}\n", &svg[..=i], &svg[i + 1..]),
        None => svg,
    }
}

/// Gold and proxy against √KL for over-optimization curves ([`crate::overopt::Curve`]): the
/// gold chart with each curve's fit dashed, and the proxy chart (a curve without proxy
/// values keeps its colour there, with no line).
pub fn overopt_charts(curves: &[crate::overopt::Curve], size: (f64, f64)) -> [String; 2] {
    let pick = |f: fn(&crate::overopt::Point) -> Option<f64>| -> Vec<Series> {
        curves
            .iter()
            .map(|c| {
                let pts = c.points.iter().filter_map(|p| Some((p.0, f(p)?))).collect();
                (c.name.clone(), pts)
            })
            .collect()
    };
    let fits: Vec<Series> = curves
        .iter()
        .map(|c| (format!("{} fit", c.name), c.fitted(40)))
        .collect();
    let gold = Plot {
        title: "gold against √KL (dashed: fit)",
        x_label: "√KL",
        series: &pick(|p| Some(p.1)),
        curves: &fits,
        size,
        y_range: None,
        legend_right: true,
    };
    let proxy = Plot {
        title: "proxy against √KL",
        x_label: "√KL",
        series: &pick(|p| p.2),
        curves: &[],
        size,
        y_range: None,
        legend_right: true,
    };
    [gold.svg(), proxy.svg()]
}

/// The value of a series that never changes: seen at least twice, always the same.
fn constant_value(values: &[f64]) -> Option<f64> {
    let first = *values.first()?;
    (values.len() > 1 && values.iter().all(|&x| x == first)).then_some(first)
}

/// The runs' eval k (`eval/k`), for headers that name it; "k" when no round logs it.
fn eval_k<'a>(rounds: impl IntoIterator<Item = &'a BTreeMap<String, f64>>) -> String {
    rounds
        .into_iter()
        .find_map(|m| m.get("eval/k"))
        .map_or("k".into(), |&k| fmt_num(k))
}

/// How a monitor's value reads in the terminal summary.
#[derive(Clone, Copy)]
enum Unit {
    /// A fraction, as a percentage.
    Percent,
    /// A difference of fractions, in percentage points.
    Points,
    /// As it is.
    Plain,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{:.1}%", 100.0 * v),
            Unit::Points => format!("{:+.1} pt", 100.0 * v),
            Unit::Plain => fmt_num(v),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The family a metric key belongs to, for grouping charts.
fn family(key: &str) -> &str {
    match key.split_once('/') {
        Some((f, _)) => f,
        None => "rl",
    }
}

/// What a family of metrics measures, in one line (the report's caption of its charts).
fn family_caption(f: &str) -> &'static str {
    match f {
        "eval" => "held-out evaluation of the round's model",
        "explore" => "how widely the round's samples explore (before curation)",
        "exploit" => "how well the curation rule picks right samples, against the verifier",
        "gap" => "what sampling more, or voting, adds over one greedy answer",
        "drift" => "how far the policy has moved from M0, on held-out samples",
        "proxy" => "the reward the loop optimizes when it is not the verifier",
        "gold" => "the verifier's view of the same samples",
        "pairs" => "the preference pairs a round built, against the verifier",
        "vote" => "the self-consistency vote, against the verifier",
        "judge" => "the judge's scores, against the verifier",
        "rl" | "pg" | "rewards" => "the policy-gradient update's statistics",
        "train" => "the round's training stage",
        "rollout" => "what the round sampled",
        "controller" => "the controller's alarms",
        _ => "",
    }
}

const FAMILY_ORDER: [&str; 14] = [
    "eval", "explore", "exploit", "gap", "drift", "proxy", "gold", "pairs", "vote", "judge",
    "rewards", "rl", "pg", "train",
];

/// Charts of every metric the runs logged per round, grouped by family.
fn charts(runs: &[RunData]) -> String {
    let keys: BTreeSet<&str> = runs
        .iter()
        .flat_map(|r| r.rounds.iter().flat_map(|m| m.keys().map(String::as_str)))
        .filter(|k| *k != "round" && *k != "eval/k" && !k.starts_with("pairs/no_pair/"))
        .collect();
    // Families in a fixed reading order (unknown ones last, alphabetically).
    let mut families: BTreeMap<(usize, &str), Vec<&str>> = BTreeMap::new();
    for k in keys {
        let f = family(k);
        let rank = FAMILY_ORDER
            .iter()
            .position(|x| *x == f)
            .unwrap_or(FAMILY_ORDER.len());
        families.entry((rank, f)).or_default().push(k);
    }
    let mut out = String::new();
    // The proxy reward and the gold reward in one chart: where they part is reward hacking.
    let series = |r: &RunData, k: &str| -> Vec<(f64, f64)> {
        r.rounds
            .iter()
            .filter_map(|m| Some((*m.get("round")?, *m.get(k)?)))
            .collect()
    };
    let both: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .filter(|r| !series(r, "proxy/reward").is_empty())
        .flat_map(|r| {
            [
                (format!("{} proxy", r.name), series(r, "proxy/reward")),
                (format!("{} gold", r.name), series(r, "gold/reward")),
            ]
        })
        .collect();
    if !both.is_empty() {
        out.push_str("<h3>proxy vs gold reward</h3><div class=\"grid\">");
        out.push_str(&svg_chart("proxy/reward and gold/reward", &both));
        out.push_str("</div>");
    }
    // Series that never change (a verifier's precision of 1, no alarms) go to one table.
    let mut constant = Vec::new();
    for ((_, name), keys) in &families {
        let moving: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| {
                let v: Vec<f64> = runs
                    .iter()
                    .flat_map(|r| series(r, k))
                    .map(|p| p.1)
                    .collect();
                let fixed = constant_value(&v);
                if let Some(c) = fixed {
                    constant.push((k.to_string(), c));
                }
                fixed.is_none()
            })
            .collect();
        if moving.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<h3>{}</h3><p class=\"cap\">{} (definitions: docs/monitors.md)</p><div class=\"grid\">",
            escape(name),
            escape(family_caption(name))
        );
        // One chart for the family when its series share a scale (all fractions in [0, 1]),
        // else one per metric.
        let fractions = moving.iter().all(|k| {
            runs.iter()
                .flat_map(|r| series(r, k))
                .all(|p| (0.0..=1.0).contains(&p.1))
        });
        if fractions && moving.len() > 1 && runs.len() == 1 {
            let all: Vec<Series> = moving
                .iter()
                .map(|k| (k.to_string(), series(&runs[0], k)))
                .collect();
            out.push_str(
                &Plot {
                    title: &format!("{name} (fractions)"),
                    x_label: "round",
                    series: &all,
                    curves: &[],
                    size: (460.0, 200.0),
                    y_range: Some((0.0, 1.0)),
                    legend_right: true,
                }
                .svg(),
            );
        } else {
            for k in &moving {
                let per_run: Vec<Series> = runs
                    .iter()
                    .map(|r| (r.name.clone(), series(r, k)))
                    .collect();
                out.push_str(&svg_chart(k, &per_run));
            }
        }
        out.push_str("</div>");
    }
    if !constant.is_empty() {
        out.push_str(
            "<h3>constant in every round</h3><table><tr><th>metric</th><th>value</th></tr>",
        );
        for (k, v) in &constant {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(k),
                fmt_num(*v)
            );
        }
        out.push_str("</table>");
    }
    if runs.iter().any(|r| !r.seed_curve.is_empty()) {
        out.push_str("<h3>seed stage</h3><div class=\"grid\">");
        let series: Vec<_> = runs
            .iter()
            .map(|r| (r.name.clone(), r.seed_curve.clone()))
            .collect();
        out.push_str(&svg_chart("seed/eval_pass@1 by step", &series));
        out.push_str("</div>");
    }
    out
}

/// For runs optimizing a reward model: held-out gold and proxy against √KL to the start, with
/// the RL form `d(α − β log d)` fitted to gold (`crate::overopt`); empty for other runs.
fn overoptimization(runs: &[RunData]) -> String {
    let curves: Vec<_> = runs
        .iter()
        .filter_map(|r| crate::overopt::Curve::of_run(&r.name, &r.rounds))
        .collect();
    if !curves
        .iter()
        .any(|c| c.points.iter().any(|p| p.2.is_some()))
    {
        return String::new();
    }
    let mut out = String::from("<h2>Over-optimization</h2><p>Held-out pass@1 (gold) and the reward model's mean score of the same samples (proxy) against √KL to the start, with <code>d(α − β log d)</code> fitted to gold's change from round 0 (Gao et al., 2022).</p><div class=\"grid\">");
    for chart in overopt_charts(&curves, (380.0, 220.0)) {
        out.push_str(&chart);
    }
    out.push_str("</div><ul>");
    for c in &curves {
        let _ = write!(
            out,
            "<li>{}: {}</li>",
            escape(&c.name),
            escape(&crate::overopt::describe(c.fit.as_ref()))
        );
    }
    out.push_str("</ul>");
    out
}

/// The per-round lineage: which checkpoint sampled, which one training started from, what
/// the round kept, and how long its stages took.
fn lineage(run: &RunData) -> String {
    let mut s = String::from(
        "<table><tr><th>round</th><th>sampled by</th><th>trained from</th><th>pass@1</th><th>seconds</th><th>files</th></tr>",
    );
    for m in &run.manifests {
        let secs: f64 = run
            .stages
            .iter()
            .filter(|(_, r, _)| *r == m.round)
            .map(|(_, _, s)| s)
            .sum();
        let pass = run
            .rounds
            .iter()
            .find(|x| x.get("round") == Some(&(m.round as f64)))
            .and_then(|x| x.get("eval/pass@1"))
            .map_or("–".into(), |p| format!("{:.1}%", 100.0 * p));
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{pass}</td><td>{secs:.1}</td><td>{}</td></tr>",
            m.round,
            escape(m.parent_checkpoint.as_deref().unwrap_or("–")),
            escape(m.init_checkpoint.as_deref().unwrap_or("–")),
            m.files
                .keys()
                .map(|f| escape(f))
                .collect::<Vec<_>>()
                .join("<br>"),
        );
    }
    s.push_str("</table>");
    s
}

/// What the controller chose and decided each round: temperature (B-STaR balancing), the
/// alarms that fired, stops and rollbacks.
fn controller(run: &RunData) -> String {
    let rows: Vec<String> = run
        .manifests
        .iter()
        .filter_map(|m| {
            let d = m.controller.as_ref()?;
            let alarms: Vec<String> = d
                .alarms
                .iter()
                .map(|a| format!("{} ({:?})", escape(&a.message), a.action))
                .collect();
            let mut decision = Vec::new();
            if let Some(s) = &d.stop {
                decision.push(format!("stop: {}", escape(s)));
            }
            if let Some(p) = d.next_parent {
                decision.push(format!("next round starts from round {p}"));
            }
            let temp = d.temperature.map_or("–".into(), |t| {
                let probe: Vec<String> = d
                    .probe
                    .iter()
                    .map(|(t, b)| format!("{t}: {b:.3}"))
                    .collect();
                format!("{t} (balance {})", probe.join(", "))
            });
            (d.temperature.is_some() || !alarms.is_empty() || !decision.is_empty()).then(|| {
                format!(
                    "<tr><td>{}</td><td>{temp}</td><td class=\"alarm\">{}</td><td>{}</td></tr>",
                    m.round,
                    alarms.join("<br>"),
                    decision.join("<br>")
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return "<p>No alarm fired; no setting was changed.</p>".into();
    }
    format!(
        "<table><tr><th>round</th><th>temperature</th><th>alarms</th><th>decision</th></tr>{}</table>",
        rows.concat()
    )
}

/// What the controller did in one round, for the timeline: (fill, short label, details),
/// the strongest event first (stop, rollback, alarm, temperature), or `None` when nothing.
fn round_event(d: &crate::controller::Decision) -> Option<(&'static str, String, String)> {
    let mut details: Vec<String> = d
        .alarms
        .iter()
        .map(|a| format!("alarm {}: {} ({:?})", a.kind.name(), a.message, a.action))
        .collect();
    if let Some(t) = d.temperature {
        details.push(format!("sampled at temperature {t}"));
    }
    if let Some(p) = d.next_parent {
        details.push(format!("the next round starts from round {p}"));
    }
    if let Some(s) = &d.stop {
        details.push(format!("stop: {s}"));
    }
    let (fill, label) = if d.stop.is_some() {
        ("#D55E00", "stop".to_string())
    } else if let Some(p) = d.next_parent {
        ("#CC79A7", format!("↶ r{p}"))
    } else if !d.alarms.is_empty() {
        (
            "#E69F00",
            format!(
                "{} alarm{}",
                d.alarms.len(),
                if d.alarms.len() == 1 { "" } else { "s" }
            ),
        )
    } else if let Some(t) = d.temperature {
        ("#cfe3f3", format!("T {t}"))
    } else {
        return None;
    };
    Some((fill, label, details.join("; ")))
}

/// One run's row of the timeline: its name, and each round with the controller's decision.
type StripRow<'a> = (&'a str, Vec<(u32, Option<&'a crate::controller::Decision>)>);

/// The controller's timeline of `runs`: [`strip`] of each run's rounds and decisions.
fn timeline(runs: &[RunData]) -> String {
    let rows: Vec<StripRow> = runs
        .iter()
        .map(|r| {
            let mut rounds: BTreeSet<u32> = r.manifests.iter().map(|m| m.round).collect();
            rounds.extend(
                r.rounds
                    .iter()
                    .filter_map(|m| m.get("round"))
                    .map(|&x| x as u32),
            );
            let cells = rounds
                .into_iter()
                .map(|round| {
                    let d = r.manifests.iter().find(|m| m.round == round);
                    (round, d.and_then(|m| m.controller.as_ref()))
                })
                .collect();
            (r.name.as_str(), cells)
        })
        .collect();
    if rows
        .iter()
        .all(|(_, cells)| cells.iter().all(|c| c.1.and_then(round_event).is_none()))
    {
        return String::new();
    }
    format!("<div>{}</div>", strip(&rows))
}

/// The controller's timeline: one strip per run, one cell per round, coloured by what the
/// controller did after it (grey: nothing; blue: chose a temperature; amber: an alarm
/// warned; pink: rolled back; red: stopped), with the details on hover.
fn strip(rows: &[StripRow]) -> String {
    let label_w = if rows.len() > 1 { 150.0 } else { 70.0 };
    let (cell, row_h) = (52.0, 26.0);
    let n = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    // Wide enough for the key under the cells (about 570 px of 9 px text).
    let w = (label_w + cell * n as f64 + 4.0).max(label_w + 580.0);
    let h = row_h * rows.len() as f64 + 16.0;
    let mut s = format!(
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><title>what the controller did after each round</title>"
    );
    for (j, (name, cells)) in rows.iter().enumerate() {
        let y = row_h * j as f64;
        let name = if rows.len() > 1 { name } else { "controller" };
        let _ = write!(
            s,
            "<text class=\"tk\" x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>",
            label_w - 6.0,
            y + 16.0,
            escape(name)
        );
        for (i, (round, decision)) in cells.iter().enumerate() {
            let x = label_w + cell * i as f64;
            let (fill, label, details) = decision
                .and_then(round_event)
                .unwrap_or_else(|| ("#eeeeee", String::new(), "nothing changed".to_string()));
            let _ = write!(
                s,
                "<g><title>round {round}: {}</title><rect x=\"{x:.0}\" y=\"{:.0}\" width=\"{:.0}\" height=\"{:.0}\" fill=\"{fill}\" stroke=\"#fff\"/><text class=\"tk\" x=\"{:.0}\" y=\"{:.0}\">r{round}</text><text class=\"tk\" x=\"{:.0}\" y=\"{:.0}\" font-weight=\"600\">{}</text></g>",
                escape(&details),
                y + 2.0,
                cell - 2.0,
                row_h - 4.0,
                x + 3.0,
                y + 11.0,
                x + 3.0,
                y + 21.0,
                escape(&label)
            );
        }
    }
    let _ = write!(
        s,
        "<text class=\"tk\" x=\"{:.0}\" y=\"{:.0}\">grey: nothing · blue: temperature chosen · amber: alarm warned · pink: rolled back · red: stopped (hover a round for details)</text></svg>",
        label_w,
        h - 3.0
    );
    s
}

/// The styles of a [`Plot`]'s classes.
const CHART_STYLE: &str = ".ct{font:600 11px system-ui,sans-serif}.tk{font:9px system-ui,sans-serif;fill:#555}.ax{stroke:#999;stroke-width:1}.chart{background:#fafafa}";

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:14px 0 4px}\
.grid{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.chart{background:#fafafa;border:1px solid #e4e4e4}\
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 6px;font-size:12px;vertical-align:top}\
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}.legend span{margin-right:14px}\
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}\
tr.correct td{background:#eaf7ea}tr.incorrect td{background:#fbeaea}tr.ungradable td{background:#f3f3f3}\
.prob{margin:8px 0}td.alarm{color:#b00}summary{cursor:pointer;font-weight:600;margin:6px 0}\
p.head{font-size:16px}p.cap{color:#555;margin:2px 0 6px}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}{CHART_STYLE}{}</style></head><body>{body}</body></html>\n",
        escape(title),
        browse::style()
    )
}

/// The first lines of a run's report: what ran, what it gained, how long it took, and what
/// the controller did.
fn headline(run: &RunData) -> String {
    let cfg: toml::Value =
        toml::from_str(&run.config).unwrap_or(toml::Value::Table(Default::default()));
    let get = |path: &[&str]| -> Option<String> {
        let mut v = &cfg;
        for p in path {
            v = v.get(p)?;
        }
        Some(match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let model = get(&["model", "checkpoint"])
        .or_else(|| get(&["model", "openai", "model"]))
        .or_else(|| get(&["model", "preset"]).map(|p| format!("the {p} preset, from scratch")))
        .unwrap_or_else(|| "?".into());
    let HeldOut { first, last, best } = run.held_out();
    let seconds: f64 = run.stages.iter().map(|s| s.2).sum();
    let mut h = format!(
        "<h1>autodidact run {}</h1><p class=\"head\"><b>{}</b> on <b>{}</b> with <b>{}</b>",
        escape(&run.name),
        escape(&run.recipe()),
        escape(&get(&["task", "name"]).unwrap_or_else(|| "?".into())),
        escape(&model),
    );
    if let (Some(f), Some((r, l))) = (first, last) {
        let _ = write!(
            h,
            ": held-out pass@1 <b>{f:.1}% → {l:.1}%</b> (M0 → round {}, {:+.1} points)",
            fmt_num(r),
            l - f
        );
        if let Some((br, bv)) = best.filter(|b| b.0 != r) {
            let _ = write!(h, "; best {bv:.1}% at round {}", fmt_num(br));
        }
    }
    let _ = write!(h, "; {:.0} s of stages.</p>", seconds);
    let line = controller_line(run);
    let _ = write!(
        h,
        "<p>{}</p>{}",
        escape(
            line.as_deref()
                .unwrap_or("controller: no alarm fired, nothing changed.")
        ),
        timeline(std::slice::from_ref(run))
    );
    h
}

/// Held-out pass@1, pass@k and maj@k (%) by round on shared axes: one run's three, or each
/// run's pass@1 and pass@k.
fn main_chart(runs: &[RunData]) -> String {
    let pct = |r: &RunData, k: &str| -> Vec<(f64, f64)> {
        r.rounds
            .iter()
            .filter_map(|m| Some((*m.get("round")?, 100.0 * *m.get(k)?)))
            .collect()
    };
    let kk = eval_k(runs.iter().flat_map(|r| &r.rounds));
    // Several runs: each run's pass@1 solid and its pass@k dashed, in the run's colour.
    let (series, curves, title): (Vec<Series>, Vec<Series>, String) = match runs {
        [one] => (
            vec![
                ("pass@1 (greedy)".into(), pct(one, "eval/pass@1")),
                (format!("pass@{kk}"), pct(one, "eval/pass@k")),
                (format!("maj@{kk}"), pct(one, "eval/maj@k")),
            ],
            Vec::new(),
            "held-out accuracy (%) by round".into(),
        ),
        many => (
            many.iter()
                .map(|r| (r.name.clone(), pct(r, "eval/pass@1")))
                .collect(),
            many.iter()
                .map(|r| (format!("{} pass@{kk}", r.name), pct(r, "eval/pass@k")))
                .collect(),
            format!("held-out pass@1 (%, solid) and pass@{kk} (dashed) by round"),
        ),
    };
    Plot {
        title: &title,
        x_label: "round",
        series: &series,
        curves: &curves,
        // Narrower beside compare's table of differences.
        size: (if runs.len() > 1 { 560.0 } else { 640.0 }, 280.0),
        y_range: Some((0.0, 100.0)),
        legend_right: true,
    }
    .svg()
}

/// The report of one run.
pub fn render(run: &RunData) -> Result<String> {
    let mut b = headline(run);
    let _ = write!(
        b,
        "<div class=\"grid\">{}{}</div>",
        main_chart(std::slice::from_ref(run)),
        table_of_rounds(run)
    );
    b.push_str("<h2>Curves by round</h2>");
    b.push_str(&charts(std::slice::from_ref(run)));
    b.push_str(&overoptimization(std::slice::from_ref(run)));
    b.push_str("<h2>Controller</h2>");
    b.push_str(&controller(run));
    b.push_str("<h2>Lineage</h2>");
    b.push_str(&lineage(run));
    b.push_str("<h2>Samples</h2>");
    b.push_str(&browse::samples(
        &run.dir,
        run.manifests.iter().map(|m| m.round).filter(|&r| r > 0),
        browse::task_steps(&run.config).as_ref(),
    )?);
    let _ = write!(
        b,
        "<h2>Configuration</h2><pre>{}</pre>",
        escape(&run.config)
    );
    Ok(page(&format!("autodidact — {}", run.name), &b))
}

/// The configuration keys whose values differ between `runs` (name, `config.toml`), one row
/// per key with each run's value ("–" where a run does not set it).
fn config_differences(runs: &[(&str, &str)]) -> String {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            toml::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            // Settings held as f32 read back as their shortest f32 form (0.1, not
            // 0.10000000149011612).
            toml::Value::Float(f) if (*f as f32) as f64 == *f => {
                out.insert(prefix.to_string(), (*f as f32).to_string());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let flat: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|(_, config)| {
            let mut m = BTreeMap::new();
            if let Ok(v) = toml::from_str::<toml::Value>(config) {
                flatten("", &v, &mut m);
            }
            m
        })
        .collect();
    let keys: BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    let mut differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            flat.iter()
                .map(|m| m.get(*k))
                .collect::<BTreeSet<_>>()
                .len()
                > 1
        })
        .collect();
    if differing.is_empty() {
        return "<p>The runs' configurations are the same.</p>".into();
    }
    differing.sort_by_key(|k| k.as_str() != "recipe");
    // A section only one run has (its recipe's settings) is one row, its size in that run's
    // column; the settings themselves are in the run's configuration.
    let section = |k: &str| k.split('.').next().unwrap_or(k).to_string();
    let owners = |sec: &str| -> Vec<usize> {
        (0..flat.len())
            .filter(|&i| flat[i].keys().any(|k| k.contains('.') && section(k) == sec))
            .collect()
    };
    let mut s = String::from("<table><tr><th>setting</th>");
    for (name, _) in runs {
        let _ = write!(s, "<th>{}</th>", escape(name));
    }
    s.push_str("</tr>");
    let mut folded = BTreeSet::new();
    for k in differing {
        let sec = section(k);
        if k.contains('.') {
            if let [only] = owners(&sec)[..] {
                if folded.insert(sec.clone()) {
                    let n = flat[only].keys().filter(|k| section(k) == sec).count();
                    let _ = write!(s, "<tr><td>[{}]</td>", escape(&sec));
                    for i in 0..flat.len() {
                        if i == only {
                            let _ = write!(
                                s,
                                "<td>its own section ({n} setting{})</td>",
                                if n == 1 { "" } else { "s" }
                            );
                        } else {
                            s.push_str("<td>–</td>");
                        }
                    }
                    s.push_str("</tr>");
                }
                continue;
            }
        }
        let _ = write!(s, "<tr><td>{}</td>", escape(k));
        for m in &flat {
            let _ = write!(
                s,
                "<td>{}</td>",
                escape(m.get(k).map_or("–", String::as_str))
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

/// When `a` first reached `b`'s final held-out pass@1, and what it had spent by then
/// against what `b` spent in all: "star reached grpo's final 78.5% at round 3, after 20 s
/// and 756k sampled tokens (grpo: 202 s, 6.45M)".
fn overtakes(a: &RunData, b: &RunData) -> Option<String> {
    let target = *b.rounds.last()?.get("eval/pass@1")?;
    let round = a
        .rounds
        .iter()
        .filter(|m| m.get("round").is_some_and(|&r| r > 0.0))
        .find(|m| m.get("eval/pass@1").is_some_and(|&p| p >= target))?
        .get("round")
        .copied()? as u32;
    let (sa, ta) = a.spent(Some(round));
    let (sb, tb) = b.spent(None);
    let cost = |s: f64, t: Option<f64>, with: &str| match t {
        Some(t) => format!("{s:.0} s{with}{} sampled tokens", fmt_num(t)),
        None => format!("{s:.0} s"),
    };
    Some(format!(
        "{} reached {}'s final {:.1}% at round {round}, after {} ({}: {}).",
        a.name,
        b.name,
        100.0 * target,
        cost(sa, ta, " and "),
        b.name,
        cost(sb, tb, ", "),
    ))
}

/// The first lines of a comparison: the runs ranked by their final held-out pass@1, and a
/// table of what each gained, spent and did.
fn compare_headline(runs: &[RunData]) -> String {
    struct Summary<'a> {
        run: &'a RunData,
        colour: &'static str,
        held_out: HeldOut,
    }
    let mut ranked: Vec<Summary> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| Summary {
            run: r,
            colour: COLOURS[i % COLOURS.len()],
            held_out: r.held_out(),
        })
        .collect();
    let key = |s: &Summary| s.held_out.last.map_or(f64::NEG_INFINITY, |l| l.1);
    ranked.sort_by(|a, b| key(b).total_cmp(&key(a)));
    let mut h = format!("<h1>autodidact: {} runs compared</h1>", runs.len());
    if let [top, rest @ ..] = &ranked[..] {
        if let Some((r, v)) = top.held_out.last {
            let others: Vec<String> = rest
                .iter()
                .filter_map(|s| {
                    Some(format!(
                        "{} {:.1}%",
                        escape(&s.run.name),
                        s.held_out.last?.1
                    ))
                })
                .collect();
            h.push_str("<p class=\"head\">");
            let m0: BTreeSet<String> = ranked
                .iter()
                .filter_map(|s| s.held_out.first.map(|f| format!("{f:.1}")))
                .collect();
            if let (1, Some(f)) = (m0.len(), m0.first()) {
                let _ = write!(h, "Every run starts from M0 at {f}%. ");
            }
            let _ = write!(
                h,
                "<b>{}</b>{} ends highest: held-out pass@1 <b>{v:.1}%</b> after round {}",
                escape(&top.run.name),
                if top.run.name == top.run.recipe() {
                    String::new()
                } else {
                    format!(" ({})", escape(&top.run.recipe()))
                },
                fmt_num(r),
            );
            if !others.is_empty() {
                let _ = write!(h, ", against {}", others.join(", "));
            }
            h.push('.');
            for o in rest {
                if let Some(line) = overtakes(top.run, o.run) {
                    let _ = write!(h, " {}", escape(&line));
                }
            }
            h.push_str("</p>");
        }
    }
    // Per run: the sum over rounds of `key` (rounds ≥ 1), and its last round's value.
    let total = |r: &RunData, key: &str| -> Option<f64> {
        let v: Vec<f64> = r
            .rounds
            .iter()
            .filter_map(|m| m.get(key).copied())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    h.push_str("<table><tr><th>run</th><th>recipe</th><th>held-out pass@1, M0 → final</th><th>best</th><th>seconds after M0</th><th>sampled tokens</th><th>trained tokens</th><th>KL to M0, last round (nats/completion)</th><th>controller</th></tr>");
    for s in &ranked {
        let r = s.run;
        let (after_m0, _) = r.spent(None);
        let change = match (s.held_out.first, s.held_out.last) {
            (Some(f), Some((_, l))) => format!("{f:.1}% → <b>{l:.1}%</b> ({:+.1} pt)", l - f),
            _ => "–".into(),
        };
        let best = s.held_out.best.map_or("–".into(), |(br, bv)| {
            format!("{bv:.1}% (round {})", fmt_num(br))
        });
        let opt = |v: Option<f64>| v.map_or("–".into(), fmt_num);
        let alarms: usize = r
            .manifests
            .iter()
            .filter_map(|m| m.controller.as_ref())
            .map(|d| d.alarms.len())
            .sum();
        let stopped = r
            .manifests
            .iter()
            .filter_map(|m| Some((m.round, m.controller.as_ref()?.stop.as_ref()?)))
            .next_back()
            .map_or(String::new(), |(round, _)| {
                format!("; stopped after round {round}")
            });
        let _ = write!(
            h,
            "<tr><td><i style=\"display:inline-block;width:10px;height:10px;background:{}\"></i> {}</td><td>{}</td><td>{change}</td><td>{best}</td><td>{after_m0:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{alarms} alarm{}{stopped}</td></tr>",
            s.colour,
            escape(&r.name),
            escape(&r.recipe()),
            opt(total(r, "rollout/sampled_tokens")),
            opt(total(r, "train/tokens")),
            opt(r.last_value("drift/kl_to_seed")),
            if alarms == 1 { "" } else { "s" },
        );
    }
    h.push_str("</table>");
    h
}

/// The key monitors that two or more of `runs` logged, each run's value in its last round
/// that has it, one row per monitor.
fn monitors_side_by_side(runs: &[RunData]) -> String {
    let k = eval_k(runs.iter().flat_map(|r| &r.rounds));
    let mut rows = String::new();
    for (header, key, unit) in KEY_MONITORS {
        let values: Vec<Option<f64>> = runs.iter().map(|r| r.last_value(key)).collect();
        if values.iter().flatten().count() < 2 {
            continue;
        }
        let _ = write!(
            rows,
            "<tr><td>{}</td>",
            escape(&header.replace("@k", &format!("@{k}")))
        );
        for v in values {
            let _ = write!(rows, "<td>{}</td>", v.map_or("–".into(), |v| unit.show(v)));
        }
        rows.push_str("</tr>");
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from("<h3>Monitors in the last round</h3><p class=\"cap\">From each run's last round: the round's training samples, except drift (held-out samples). Definitions in docs/monitors.md.</p><table><tr><th>monitor</th>");
    for r in runs {
        let _ = write!(s, "<th>{}</th>", escape(&r.name));
    }
    let _ = write!(s, "</tr>{rows}</table>");
    s
}

/// One page overlaying several runs.
pub fn render_compare(runs: &[RunData]) -> String {
    let mut b = compare_headline(runs);
    let configs: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.name.as_str(), r.config.as_str()))
        .collect();
    let _ = write!(
        b,
        "<div class=\"grid\">{}<div><h3>What differs</h3>{}</div></div>",
        main_chart(runs),
        config_differences(&configs)
    );
    b.push_str(&timeline(runs));
    b.push_str(&monitors_side_by_side(runs));
    b.push_str("<div class=\"grid\">");
    for r in runs {
        let _ = write!(
            b,
            "<div><h3>{}</h3>{}</div>",
            escape(&r.name),
            table_of_rounds(r)
        );
    }
    b.push_str("</div>");
    b.push_str("<h2>Curves by round</h2>");
    b.push_str(&charts(runs));
    b.push_str(&overoptimization(runs));
    b.push_str("<h2>Configurations</h2>");
    for r in runs {
        let _ = write!(
            b,
            "<details><summary>{}</summary><pre>{}</pre></details>",
            escape(&r.name),
            escape(&r.config)
        );
    }
    page("autodidact — comparison", &b)
}

fn table_of_rounds(run: &RunData) -> String {
    let k = eval_k(&run.rounds);
    let mut s = format!(
        "<table><tr><th>round</th><th>held-out pass@1</th><th>pass@{k}</th><th>maj@{k}</th></tr>"
    );
    for m in &run.rounds {
        let pct = |k: &str| {
            m.get(k)
                .map_or("–".into(), |v| format!("{:.1}%", 100.0 * v))
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt_num(*m.get("round").unwrap_or(&f64::NAN)),
            pct("eval/pass@1"),
            pct("eval/pass@k"),
            pct("eval/maj@k")
        );
    }
    s.push_str("</table>");
    s
}

/// The monitors the terminal and `compare` show: (header with its unit, key, how a value
/// reads).
const KEY_MONITORS: [(&str, &str, Unit); 12] = [
    ("sample pass@1", "explore/pass@1", Unit::Percent),
    (
        "answer entropy (nats)",
        "explore/answer_entropy",
        Unit::Plain,
    ),
    (
        "distinct correct traces per problem",
        "explore/distinct_correct_traces",
        Unit::Plain,
    ),
    ("filter precision", "exploit/precision", Unit::Percent),
    ("filter recall", "exploit/recall", Unit::Percent),
    ("best-of-n gap", "gap/best_of_n", Unit::Points),
    (
        "held-out maj@k − pass@1",
        "gap/maj_minus_pass1",
        Unit::Points,
    ),
    (
        "KL to M0 (nats/completion)",
        "drift/kl_to_seed",
        Unit::Plain,
    ),
    (
        "token entropy (nats/token)",
        "drift/token_entropy",
        Unit::Plain,
    ),
    ("length (tokens)", "drift/mean_length", Unit::Plain),
    ("proxy reward", "proxy/reward", Unit::Plain),
    ("gold reward", "gold/reward", Unit::Plain),
];

/// The plain-text summary printed at the end of a run: the key monitors as a table with one
/// row per round (the rounds of the run's table), each header with its unit; monitors that
/// never change (a verifier's filter precision of 100%) on one line instead; and what the
/// controller did.
pub fn text_summary(run: &RunData) -> Vec<String> {
    let mut out = monitor_table(&run.rounds);
    out.extend(controller_line(run));
    out
}

/// The monitors of `rounds` as a table, one row per round, headers with units; monitors
/// that never change on one line after it.
fn monitor_table(rounds: &[BTreeMap<String, f64>]) -> Vec<String> {
    // Columns some round has, split into those that change and those that never do.
    let mut moving = Vec::new();
    let mut constant = Vec::new();
    for (header, key, unit) in KEY_MONITORS {
        let values: Vec<f64> = rounds.iter().filter_map(|m| m.get(key).copied()).collect();
        match constant_value(&values) {
            Some(v) => constant.push((header, unit.show(v))),
            None if !values.is_empty() => moving.push((header, key, unit)),
            None => {}
        }
    }
    // `@k` in a header is the run's own k.
    let k = eval_k(rounds);
    let header = |h: &str| h.replace("@k", &format!("@{k}"));
    let mut out = Vec::new();
    if !moving.is_empty() {
        out.push("monitors by round, from the round's training samples except the held-out columns and drift (KL, entropy, length: held-out samples); definitions in docs/monitors.md:".into());
        let mut head = String::from("| round |");
        for (h, _, _) in &moving {
            head += &format!(" {} |", header(h));
        }
        out.push(head);
        out.push(format!("|---:|{}", "---:|".repeat(moving.len())));
        for m in rounds {
            let mut line = format!("| {} |", m.get("round").map_or("?".into(), |&r| fmt_num(r)));
            for (_, key, unit) in &moving {
                line += &format!(" {} |", m.get(*key).map_or("–".into(), |&v| unit.show(v)));
            }
            out.push(line);
        }
    }
    if !constant.is_empty() {
        let items: Vec<String> = constant
            .iter()
            .map(|(h, v)| format!("{} {v}", header(h)))
            .collect();
        out.push(format!("constant in every round: {}", items.join(", ")));
    }
    out
}

/// What the controller did, on one line: alarms by kind with their rounds, stops and
/// rollbacks.
fn controller_line(run: &RunData) -> Option<String> {
    let mut fired: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut acts = Vec::new();
    for m in &run.manifests {
        let Some(d) = &m.controller else { continue };
        for a in &d.alarms {
            fired
                .entry(a.kind.name())
                .or_default()
                .push(m.round.to_string());
        }
        if let Some(t) = d.temperature {
            acts.push(format!("round {} sampled at T = {t}", m.round));
        }
        if let Some(p) = d.next_parent {
            acts.push(format!("round {} rolled back to round {p}", m.round + 1));
        }
        if let Some(s) = &d.stop {
            acts.push(format!("stopped after round {}: {s}", m.round));
        }
    }
    let alarms: Vec<String> = fired
        .iter()
        .map(|(k, rounds)| format!("{k} (rounds {})", rounds.join(", ")))
        .collect();
    let mut parts = Vec::new();
    if !alarms.is_empty() {
        parts.push(format!("alarms: {}", alarms.join("; ")));
    }
    parts.extend(acts);
    (!parts.is_empty()).then(|| format!("controller: {}", parts.join("; ")))
}

/// Writes `report.html` into the run directory `root`; returns its path.
pub fn write_report(root: &Path) -> Result<std::path::PathBuf> {
    let run = RunData::load(root)?;
    let html = render(&run)?;
    let path = root.join(REPORT_FILE);
    autodidact_core::fs::write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_charts() {
        assert_eq!(escape("<a&'\">"), "&lt;a&amp;&#39;&quot;&gt;");
        let svg = svg_chart(
            "eval/pass@1",
            &[("run <1>".into(), vec![(0.0, 0.25), (1.0, 0.5), (2.0, 0.75)])],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("run &lt;1&gt;"));
        // Endpoints map to the plot corners: x from 44 to 250, y from 126 (low) to 22 (high).
        assert!(
            svg.contains("44.0,126.0") && svg.contains("250.0,22.0"),
            "{svg}"
        );
        // A flat series and an empty chart still draw.
        assert!(
            svg_chart("flat", &[("a".into(), vec![(0.0, 1.0), (1.0, 1.0)])]).contains("<polyline")
        );
        assert_eq!(svg_chart("none", &[]).matches("<polyline").count(), 0);
    }

    /// `compare` lists the settings that differ, with each run's value.
    #[test]
    fn issue19_compare_lists_the_settings_that_differ() {
        let a = "recipe = \"star\"\nseed = 0\n[task]\nname = \"addition\"\n[star]\nrounds = 5\nlr = 0.10000000149011612\n";
        let b = "recipe = \"grpo\"\nseed = 0\n[task]\nname = \"addition\"\n[rl]\nrounds = 3\n";
        let c = "recipe = \"rloo\"\nseed = 0\n[task]\nname = \"addition\"\n[rl]\nrounds = 4\n";
        let t = config_differences(&[("a", a), ("b", b), ("c", c)]);
        assert!(
            t.contains("<tr><td>recipe</td><td>star</td><td>grpo</td><td>rloo</td></tr>"),
            "{t}"
        );
        assert!(
            t.contains("<tr><td>rl.rounds</td><td>–</td><td>3</td><td>4</td></tr>"),
            "{t}"
        );
        // A section only one run has is one row; its floats read as the f32 they were.
        assert!(
            t.contains(
                "<tr><td>[star]</td><td>its own section (2 settings)</td><td>–</td><td>–</td></tr>"
            ),
            "{t}"
        );
        assert!(!t.contains("star.rounds"), "{t}");
        let t = config_differences(&[("a", a), ("a2", &a.replace("rounds = 5", "rounds = 6"))]);
        assert!(
            !t.contains("<tr><td>star.lr</td>")
                && t.contains("<tr><td>star.rounds</td><td>5</td><td>6</td></tr>"),
            "{t}"
        );
        let t = config_differences(&[("a", a), ("a2", &a.replace("0.10000000149011612", "0.2"))]);
        assert!(
            t.contains("<tr><td>star.lr</td><td>0.1</td><td>0.2</td></tr>"),
            "{t}"
        );
        assert!(!t.contains("seed") && !t.contains("task.name"), "{t}");
        assert!(config_differences(&[("a", a), ("a2", a)]).contains("are the same"));
    }

    /// The monitors table has a row per round (round 0's missing monitors as –), units in
    /// its headers and the run's k; monitors that never change fold into one line.
    #[test]
    fn issue19_monitor_table_aligns_rounds_and_folds_constant_series() {
        let round = |r: f64, extra: &[(&str, f64)]| {
            let mut m = BTreeMap::from([
                ("round".to_string(), r),
                ("eval/k".to_string(), 8.0),
                ("drift/mean_length".to_string(), 30.0 + r),
            ]);
            m.extend(extra.iter().map(|(k, v)| (k.to_string(), *v)));
            m
        };
        let rounds = [
            round(0.0, &[("gap/maj_minus_pass1", 0.01)]),
            round(
                1.0,
                &[
                    ("explore/pass@1", 0.25),
                    ("exploit/precision", 1.0),
                    ("gap/maj_minus_pass1", -0.02),
                ],
            ),
            round(
                2.0,
                &[
                    ("explore/pass@1", 0.5),
                    ("exploit/precision", 1.0),
                    ("gap/maj_minus_pass1", 0.0),
                ],
            ),
        ];
        let t = monitor_table(&rounds);
        assert_eq!(
            t[1],
            "| round | sample pass@1 | held-out maj@8 − pass@1 | length (tokens) |"
        );
        assert_eq!(t[3], "| 0 | – | +1.0 pt | 30 |");
        assert_eq!(t[5], "| 2 | 50.0% | +0.0 pt | 32 |");
        assert_eq!(t[6], "constant in every round: filter precision 100.0%");
        assert!(monitor_table(&[]).is_empty());
    }

    /// Over-optimization charts: the gold chart draws each curve's points and its fit
    /// (dashed), the proxy chart only curves with proxy values; a standalone file carries
    /// its styles.
    #[test]
    fn issue18_overoptimization_charts_plot_gold_with_fits_and_proxy() {
        use crate::overopt::{Curve, Form};
        let pts = |p: Option<f64>| {
            vec![
                (0.0, 0.2, p),
                (0.5, 0.25, p.map(|x| x + 1.0)),
                (1.0, 0.22, p.map(|x| x + 2.0)),
            ]
        };
        let curves = [
            Curve::new("proxy run", Form::Rl, pts(Some(-2.0))),
            Curve::new("verifier run", Form::Rl, pts(None)),
        ];
        let [gold, proxy] = overopt_charts(&curves, (300.0, 200.0));
        assert_eq!(gold.matches("stroke-dasharray").count(), 2, "{gold}");
        assert_eq!(gold.matches("<circle").count(), 6);
        assert_eq!(proxy.matches("<circle").count(), 3);
        assert!(gold.contains("√KL"));
        let file = standalone_svg(&gold);
        assert!(
            file.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"")
                && file.contains("<style>.ct{"),
            "{file}"
        );
    }
    /// The controller's timeline colours each round by its strongest event and carries the
    /// details on hover; a round without a decision is grey.
    #[test]
    fn issue19_timeline_marks_each_round_by_what_the_controller_did() {
        use crate::controller::{AlarmAction, AlarmKind, Decision, Fired};
        let warn = Decision {
            alarms: vec![Fired {
                kind: AlarmKind::EntropyCollapse,
                value: 0.01,
                threshold: 0.02,
                action: AlarmAction::Warn,
                message: "token entropy 0.010 < 0.02".into(),
            }],
            ..Default::default()
        };
        let temp = Decision {
            temperature: Some(0.7),
            ..Default::default()
        };
        let stop = Decision {
            stop: Some("patience: no gain in 3 rounds".into()),
            ..warn.clone()
        };
        let back = Decision {
            next_parent: Some(1),
            ..Default::default()
        };
        let rows = [(
            "run",
            vec![
                (0, None),
                (1, Some(&temp)),
                (2, Some(&warn)),
                (3, Some(&back)),
                (4, Some(&stop)),
            ],
        )];
        let svg = strip(&rows);
        for (fill, label) in [
            ("#eeeeee", ""),
            ("#cfe3f3", "T 0.7"),
            ("#E69F00", "1 alarm"),
            ("#CC79A7", "↶ r1"),
            ("#D55E00", "stop"),
        ] {
            assert!(
                svg.contains(&format!("fill=\"{fill}\""))
                    && svg.contains(&format!("\">{label}</text></g>")),
                "{fill} {label}: {svg}"
            );
        }
        assert!(svg.contains("<title>round 4: alarm entropy_collapse: token entropy 0.010 &lt; 0.02 (Warn); stop: patience: no gain in 3 rounds</title>"), "{svg}");
        assert!(svg.contains("<title>round 0: nothing changed</title>"));
        assert_eq!(svg.matches("<rect").count(), 5);
    }
    /// A run with held-out pass@1 `pass` by round (from 0), `tokens` sampled and 10 s per
    /// round after M0.
    fn fake_run(parent: &Path, name: &str, recipe: &str, pass: &[f64], tokens: f64) -> RunData {
        let rounds = pass
            .iter()
            .enumerate()
            .map(|(r, &p)| {
                let mut m = BTreeMap::from([
                    ("round".to_string(), r as f64),
                    ("eval/pass@1".to_string(), p),
                ]);
                if r > 0 {
                    m.insert("rollout/sampled_tokens".into(), tokens);
                }
                m
            })
            .collect();
        RunData {
            name: name.into(),
            config: format!("recipe = \"{recipe}\"\n"),
            rounds,
            seed_curve: Vec::new(),
            manifests: vec![Manifest {
                recipe: recipe.into(),
                ..Default::default()
            }],
            stages: (0..pass.len() as u32)
                .map(|r| ("s".to_string(), r, 10.0))
                .collect(),
            dir: crate::testutil::run_dir(parent, name),
        }
    }

    /// `compare` ranks runs by final held-out pass@1 and says when the winner reached each
    /// other run's final level, with what it had spent by then against what that run spent.
    #[test]
    fn issue19_compare_names_the_winner_and_when_it_passed_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let slow = fake_run(tmp.path(), "slow", "grpo", &[0.25, 0.4, 0.5, 0.6], 1000.0);
        let fast = fake_run(tmp.path(), "fast", "star", &[0.25, 0.55, 0.8], 100.0);
        let h = compare_headline(&[slow, fast]);
        assert!(
            h.contains("Every run starts from M0 at 25.0%. <b>fast</b> (star) ends highest: held-out pass@1 <b>80.0%</b> after round 2, against slow 60.0%. fast reached slow&#39;s final 60.0% at round 2, after 20 s and 200 sampled tokens (slow: 30 s, 3000 sampled tokens)."),
            "{h}"
        );
        // The winner's row comes first, in its own colour (the second run's).
        let first_row = h.find("<tr><td><i").unwrap();
        assert!(h[first_row..].starts_with(&format!("<tr><td><i style=\"display:inline-block;width:10px;height:10px;background:{}\"></i> fast</td><td>star</td><td>25.0% → <b>80.0%</b> (+55.0 pt)</td><td>80.0% (round 2)</td><td>20</td><td>200</td>", COLOURS[1])), "{h}");
        // A run that never reaches the other's level overtakes nothing.
        let a = fake_run(tmp.path(), "a", "star", &[0.25, 0.3], 1.0);
        let b = fake_run(tmp.path(), "b", "star", &[0.25, 0.5], 1.0);
        assert!(overtakes(&a, &b).is_none());
        assert!(overtakes(&b, &a)
            .unwrap()
            .starts_with("b reached a's final 30.0% at round 1"));
    }
}
