//! `janus eval score`: grades -> scores, as the paper reports them, and better.
//!
//! - An item's score in a run is the mean over its rubrics that have a score (a
//!   failure is left out and counted, never read as 0); its score is the mean over
//!   runs.
//! - A run's score is the mean over its scored items; the overall score is the mean
//!   of the runs' scores, with their standard deviation (sample, n - 1; 0 for one run).
//! - Per source and per preference dimension (rubric `k` grades the `k`-th preference
//!   of the item's `preference_set`, when the bench has them): means over items.
//! - Against a baseline (another evaluation's `results.json` on the same bench):
//!   per item, win / tie / lose by the item scores; fractions over the items both
//!   scored, and tie+win, the paper's headline.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::bench::Bench;
use super::grades::Grade;
pub use super::results::{BenchInfo, GroupScore, HeadToHead, ItemResult, JudgeInfo, Results};
use crate::error::{Error, Result};

/// Two scores closer than this are a tie (item scores are means of small integers).
const TIE: f64 = 1e-9;

fn mean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// Sample standard deviation (n - 1); 0 for a single value.
fn std_dev(v: &[f64]) -> Option<f64> {
    let m = mean(v.iter().copied())?;
    if v.len() < 2 {
        return Some(0.0);
    }
    let ss: f64 = v.iter().map(|x| (x - m) * (x - m)).sum();
    Some((ss / (v.len() - 1) as f64).sqrt())
}

/// Per-item results from the grades (`runs` judge runs).
pub fn items(bench: &Bench, grades: &[Grade], runs: usize) -> Vec<ItemResult> {
    let mut table: BTreeMap<usize, Vec<Vec<Option<u8>>>> = bench
        .items
        .iter()
        .map(|i| (i.id, vec![vec![None; i.rubrics.len()]; runs]))
        .collect();
    for g in grades {
        if let Some(cell) = table
            .get_mut(&g.item)
            .and_then(|t| t.get_mut(g.run))
            .and_then(|r| r.get_mut(g.rubric))
        {
            *cell = g.score;
        }
    }
    bench
        .items
        .iter()
        .map(|i| {
            let scores = table.remove(&i.id).expect("every item has a row");
            let per_run: Vec<Option<f64>> = scores
                .iter()
                .map(|r| mean(r.iter().flatten().map(|&s| s as f64)))
                .collect();
            ItemResult {
                id: i.id,
                source: i.source.clone(),
                score: mean(per_run.iter().flatten().copied()),
                runs: per_run,
                scores,
            }
        })
        .collect()
}

/// Per-dimension means: each rubric's score (mean over runs) counts for its
/// dimension; an item's dimension score is the mean of its rubrics of it.
fn per_dimension(bench: &Bench, items: &[ItemResult]) -> BTreeMap<String, GroupScore> {
    let mut acc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (it, r) in bench.items.iter().zip(items) {
        let mut mine: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for k in 0..it.rubrics.len() {
            let Some(d) = it.dimension_of(k) else {
                continue;
            };
            if let Some(m) = mean(r.scores.iter().filter_map(|run| run[k]).map(|s| s as f64)) {
                mine.entry(d).or_default().push(m);
            }
        }
        for (d, v) in mine {
            acc.entry(d.to_string())
                .or_default()
                .push(mean(v).expect("non-empty"));
        }
    }
    acc.into_iter()
        .map(|(d, v)| {
            let g = GroupScore {
                items: v.len(),
                mean: mean(v).expect("non-empty"),
            };
            (d, g)
        })
        .collect()
}

/// Scores of another evaluation, by item id.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub origin: String,
    pub bench_sha256: String,
    pub scores: BTreeMap<usize, f64>,
}

impl Baseline {
    /// From another evaluation's `results.json`.
    pub fn from_results(v: &Value, origin: &str) -> Result<Self> {
        let r: Results = serde_json::from_value(v.clone())
            .map_err(|e| Error::Data(format!("{origin}: not a janus eval results.json: {e}")))?;
        Ok(Self {
            origin: origin.to_string(),
            bench_sha256: r.bench.sha256,
            scores: r
                .items
                .iter()
                .filter_map(|i| i.score.map(|s| (i.id, s)))
                .collect(),
        })
    }
}

/// Win / tie / lose per item against `baseline`.
pub fn head_to_head(items: &[ItemResult], baseline: &Baseline) -> HeadToHead {
    let (mut w, mut t, mut l) = (0, 0, 0);
    for i in items {
        let (Some(a), Some(&b)) = (i.score, baseline.scores.get(&i.id)) else {
            continue;
        };
        if (a - b).abs() <= TIE {
            t += 1;
        } else if a > b {
            w += 1;
        } else {
            l += 1;
        }
    }
    HeadToHead {
        baseline: baseline.origin.clone(),
        items: w + t + l,
        wins: w,
        ties: t,
        losses: l,
        rates: janus_crds::progress::HeadToHead::from_counts(w, t, l),
    }
}

/// Everything `score` reports.
pub fn compute(
    job: &str,
    bench: &Bench,
    judge: JudgeInfo,
    grades: &[Grade],
    baseline: Option<&Baseline>,
) -> Result<Results> {
    if let Some(b) = baseline {
        if b.bench_sha256 != bench.sha256 {
            return Err(Error::Data(format!(
                "baseline {}: scored on another bench (sha256 {}, this bench {} is {}); win rates compare the same items",
                b.origin, b.bench_sha256, bench.path, bench.sha256
            )));
        }
    }
    let items = items(bench, grades, judge.runs);
    let runs: Vec<Option<f64>> = (0..judge.runs)
        .map(|r| mean(items.iter().filter_map(|i| i.runs[r])))
        .collect();
    let scored_runs: Vec<f64> = runs.iter().flatten().copied().collect();
    let mut by_source: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in &items {
        if let Some(s) = i.score {
            by_source.entry(i.source.clone()).or_default().push(s);
        }
    }
    let per_source = by_source
        .into_iter()
        .map(|(k, v)| {
            let g = GroupScore {
                items: v.len(),
                mean: mean(v).expect("non-empty"),
            };
            (k, g)
        })
        .collect();
    Ok(Results {
        job: job.to_string(),
        bench: BenchInfo {
            path: bench.path.clone(),
            sha256: bench.sha256.clone(),
            items: bench.items.len(),
        },
        mean: mean(scored_runs.iter().copied()),
        std: std_dev(&scored_runs),
        runs,
        per_source,
        per_dimension: per_dimension(bench, &items),
        calls: grades.len(),
        parse_failures: grades.iter().filter(|g| g.score.is_none()).count(),
        unscored_items: items.iter().filter(|i| i.score.is_none()).count(),
        versus_baseline: baseline.map(|b| head_to_head(&items, b)),
        judge,
        items,
    })
}

/// Read a baseline `results.json` (a path or a URL).
fn read_baseline(url: &str) -> Result<Baseline> {
    let (dir, name) = match url.rsplit_once('/') {
        Some((d, n)) if !d.is_empty() => (d.to_string(), n.to_string()),
        _ => (".".to_string(), url.to_string()),
    };
    let v = crate::stage_log::read_json(&dir, &name)?
        .ok_or_else(|| Error::Data(format!("baseline `{url}`: no such results file")))?;
    Baseline::from_results(&v, url)
}

/// Score the grades in the output directory; writes `results.json`, `summary.json`,
/// `report.md` and its charts there.
pub fn run(
    cfg: &crate::config::EvalConfig,
    progress: &mut super::progress::StageProgress,
) -> Result<Results> {
    use crate::stage_log::{write_file, JsonlLog};
    let bench = super::bench::load(&cfg.bench.path, cfg.bench.limit)?;
    let (log, records) = JsonlLog::open(&cfg.output_dir, super::GRADES)?;
    let grades = super::grades::grades_of(&records, &log.url())?;
    if grades.is_empty() {
        return Err(Error::Data(format!(
            "{}: no grades; run `janus eval judge` first",
            log.url()
        )));
    }
    let baseline = cfg.baseline.as_deref().map(read_baseline).transpose()?;
    let judge = JudgeInfo {
        url: cfg.judge.url.clone(),
        model: cfg.judge.model.clone(),
        runs: cfg.judge.runs,
    };
    let r = compute(&cfg.job, &bench, judge, &grades, baseline.as_ref())?;
    if r.mean.is_none() {
        tracing::warn!(
            calls = r.calls,
            "no judge answer had a readable score; see grades.jsonl"
        );
    }
    let out = &cfg.output_dir;
    write_file(out, super::RESULTS, pretty(&r))?;
    write_file(out, super::SUMMARY, pretty(&r.summary()))?;
    write_file(
        out,
        super::report::DISTRIBUTION_SVG,
        super::report::distribution_svg(&r).into_bytes(),
    )?;
    if let Some(svg) = super::report::head_to_head_svg(&r) {
        write_file(out, super::report::HEAD_TO_HEAD_SVG, svg.into_bytes())?;
    }
    write_file(out, super::REPORT, super::report::markdown(&r).into_bytes())?;
    progress.scored(r.items.len(), r.calls, r.parse_failures, r.summary());
    Ok(r)
}

/// Pretty JSON with a final newline.
fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("serializes");
    b.push(b'\n');
    b
}
