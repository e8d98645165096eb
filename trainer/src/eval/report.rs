//! The report: `report.md` with the score tables and SVG charts beside it (the
//! distribution of item scores; win / tie / lose against the baseline), and the
//! plain-text table the CLI prints.
//!
//! The charts are written as SVG directly: two bar charts need no plotting library,
//! and plotters' text layout would need a system font (font-kit) or a bundled one.

use std::fmt::Write;

use super::results::Results;

/// Chart files beside `report.md`.
pub const DISTRIBUTION_SVG: &str = "score-distribution.svg";
pub const HEAD_TO_HEAD_SVG: &str = "win-tie-lose.svg";

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into())
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Item scores in half-point bins from 1 to 5 (`[1, 1.5)`, ..., `[4.5, 5]`).
pub fn histogram(r: &Results) -> [usize; 8] {
    let mut bins = [0usize; 8];
    for s in r.items.iter().filter_map(|i| i.score) {
        let b = (((s - 1.0) / 0.5).floor().max(0.0) as usize).min(7);
        bins[b] += 1;
    }
    bins
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A vertical bar chart: `(label, value, colour)` bars, the y axis from 0 to the
/// largest value.
fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64, &str)], percent: bool) -> String {
    let (w, h, left, bottom, top) = (640.0, 360.0, 60.0, 50.0, 40.0);
    let plot_w = w - left - 20.0;
    let plot_h = h - bottom - top;
    let max = bars
        .iter()
        .map(|b| b.1)
        .fold(0.0f64, f64::max)
        .max(if percent { 0.0 } else { 1.0 });
    let max = if percent { max.max(0.01) } else { max };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
"##,
        w / 2.0,
        escape(title),
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(y_label),
        top + plot_h,
        top + plot_h,
        left + plot_w,
        top + plot_h,
    );
    for t in 0..=4 {
        let v = max * t as f64 / 4.0;
        let y = top + plot_h - plot_h * t as f64 / 4.0;
        let label = if percent { pct(v) } else { format!("{v:.1}") };
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{left}" y2="{y}" stroke="black"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            left - 4.0,
            left - 6.0,
            y + 4.0
        );
    }
    let slot = plot_w / bars.len().max(1) as f64;
    for (i, (label, v, colour)) in bars.iter().enumerate() {
        let bh = plot_h * v / max;
        let x = left + slot * i as f64 + slot * 0.15;
        let y = top + plot_h - bh;
        let value = if percent { pct(*v) } else { format!("{v}") };
        let _ = writeln!(
            s,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{colour}"><title>{}: {value}</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle">{value}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            slot * 0.7,
            escape(label),
            x + slot * 0.35,
            y - 4.0,
            x + slot * 0.35,
            top + plot_h + 18.0,
            escape(label),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The distribution of item scores.
pub fn distribution_svg(r: &Results) -> String {
    let bars: Vec<(String, f64, &str)> = histogram(r)
        .iter()
        .enumerate()
        .map(|(b, &n)| {
            let lo = 1.0 + 0.5 * b as f64;
            (format!("{lo:.1}-{:.1}", lo + 0.5), n as f64, "#4878cf")
        })
        .collect();
    bar_chart(
        &format!(
            "Item scores ({} items, mean {})",
            r.items.len(),
            fmt(r.mean)
        ),
        "items",
        &bars,
        false,
    )
}

/// Win / tie / lose against the baseline.
pub fn head_to_head_svg(r: &Results) -> Option<String> {
    let h = r.versus_baseline.as_ref()?;
    let bars = vec![
        ("win".to_string(), h.win, "#6acc65"),
        ("tie".to_string(), h.tie, "#c4ad66"),
        ("lose".to_string(), h.lose, "#d65f5f"),
    ];
    Some(bar_chart(
        &format!(
            "Against the baseline: win+tie {} over {} items",
            pct(h.win_plus_tie),
            h.items
        ),
        "items",
        &bars,
        true,
    ))
}

/// The plain-text score table.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<28} {:>7} {:>7}", "", "items", "score");
    let scored = r.items.len() - r.unscored_items;
    let std = r.std.map(|x| format!(" ± {x:.3}")).unwrap_or_default();
    let _ = writeln!(s, "{:<28} {:>7} {:>7}{std}", "overall", scored, fmt(r.mean));
    for (k, run) in r.runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:<28} {:>7} {:>7}",
            format!("  judge run {k}"),
            "",
            fmt(*run)
        );
    }
    for (src, g) in &r.per_source {
        let _ = writeln!(
            s,
            "{:<28} {:>7} {:>7.3}",
            format!("  source {src}"),
            g.items,
            g.mean
        );
    }
    for (d, g) in &r.per_dimension {
        let _ = writeln!(
            s,
            "{:<28} {:>7} {:>7.3}",
            format!("  dimension {d}"),
            g.items,
            g.mean
        );
    }
    let _ = writeln!(
        s,
        "judge calls {}, without a readable score {}, items without any score {}",
        r.calls, r.parse_failures, r.unscored_items
    );
    if let Some(h) = &r.versus_baseline {
        let _ = writeln!(
            s,
            "vs baseline ({} items): win {} tie {} lose {}  win+tie {}",
            h.items,
            pct(h.win),
            pct(h.tie),
            pct(h.lose),
            pct(h.win_plus_tie)
        );
    }
    s
}

/// `report.md`.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation `{}`\n", r.job);
    let _ = writeln!(
        s,
        "Bench `{}` ({} items, sha256 `{}`), judged by `{}` at `{}`, {} run(s).\n",
        r.bench.path,
        r.bench.items,
        &r.bench.sha256[..12.min(r.bench.sha256.len())],
        r.judge.model,
        r.judge.url,
        r.judge.runs
    );
    let _ = writeln!(s, "| | items | score (1-5) |\n|---|---:|---:|");
    let std = r.std.map(|x| format!(" ± {x:.3}")).unwrap_or_default();
    let _ = writeln!(
        s,
        "| **overall** | {} | **{}**{std} |",
        r.items.len() - r.unscored_items,
        fmt(r.mean)
    );
    for (k, run) in r.runs.iter().enumerate() {
        let _ = writeln!(s, "| judge run {k} | | {} |", fmt(*run));
    }
    for (src, g) in &r.per_source {
        let _ = writeln!(s, "| source `{}` | {} | {:.3} |", src, g.items, g.mean);
    }
    for (d, g) in &r.per_dimension {
        let _ = writeln!(s, "| dimension `{}` | {} | {:.3} |", d, g.items, g.mean);
    }
    let _ = writeln!(
        s,
        "\nJudge calls: {}; without a readable `[RESULT] 1-5` after the re-asks: {}; items without any score: {}.\n",
        r.calls, r.parse_failures, r.unscored_items
    );
    let _ = writeln!(s, "![Distribution of item scores]({DISTRIBUTION_SVG})\n");
    if let Some(h) = &r.versus_baseline {
        let _ = writeln!(
            s,
            "## Against the baseline\n\n`{}`, {} items both scored.\n\n| win | tie | lose | win+tie |\n|---:|---:|---:|---:|\n| {} ({}) | {} ({}) | {} ({}) | **{}** |\n",
            h.baseline, h.items, pct(h.win), h.wins, pct(h.tie), h.ties, pct(h.lose), h.losses, pct(h.win_plus_tie)
        );
        let _ = writeln!(s, "![Win, tie and lose]({HEAD_TO_HEAD_SVG})\n");
    }
    s
}
