//! The text of `blockprobe diff`: a [`Diff`] as the terminal shows it.

use std::fmt::Write as _;

use crate::fleet::diff::{Change, Diff, Kind, Stats, Status};

use super::{escape, human_duration, ms};

/// The comparison as text; `top` bounds the entries listed per section.
pub fn render_text(d: &Diff, top: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "blockprobe diff: {} -> {}",
        escape(&d.before.file),
        escape(&d.after.file)
    );
    for (label, side) in [("before", &d.before), ("after ", &d.after)] {
        let host = if side.host.is_empty() {
            String::new()
        } else {
            format!(" on {}", escape(&side.host))
        };
        let _ = writeln!(
            s,
            "  {label}: {} stall{}, {} ms stalled in {}{host}",
            side.stalls,
            if side.stalls == 1 { "" } else { "s" },
            ms(side.total_ns),
            human_duration(side.duration_ns),
        );
    }
    if d.before.threshold_ns != d.after.threshold_ns {
        let _ = writeln!(
            s,
            "  warning: thresholds differ ({} ms before, {} ms after): counts are not comparable",
            ms(d.before.threshold_ns),
            ms(d.after.threshold_ns)
        );
    }
    let (bd, ad) = (d.before.duration_ns as f64, d.after.duration_ns as f64);
    if !d.normalized && bd > 0.0 && ad > 0.0 && (bd / ad > 1.25 || ad / bd > 1.25) {
        let _ = writeln!(
            s,
            "  note: the runs differ in length; for time windows (not a fixed workload) \
             --per-second compares stall time per second traced"
        );
    }
    let _ = writeln!(
        s,
        "  compared: {}; total {}",
        if d.normalized {
            "stall time per second traced"
        } else {
            "total stall time"
        },
        change_text(&d.total)
    );

    for (title, list) in [("Functions", &d.functions), ("Services", &d.services)] {
        let _ = writeln!(s, "\n{title} by impact:");
        if list.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for c in list.iter().take(top) {
            entry_text(&mut s, c, d.normalized);
        }
        if list.len() > top {
            let _ = writeln!(s, "  ... and {} more (see --format json)", list.len() - top);
        }
    }
    if d.below_min_count > 0 {
        let _ = writeln!(
            s,
            "\n{} entr{} with fewer than {} stalls on both sides not shown",
            d.below_min_count,
            if d.below_min_count == 1 { "y" } else { "ies" },
            d.min_count
        );
    }
    if let Some(gate) = d.fail_on_regression_pct {
        let crossed: Vec<&Change> = d
            .functions
            .iter()
            .chain(&d.services)
            .filter(|c| c.regression)
            .collect();
        if crossed.is_empty() {
            let _ = writeln!(s, "\nRegression gate (+{gate}%): passed");
        } else {
            let _ = writeln!(
                s,
                "\nRegression gate (+{gate}%): FAILED, {} regression{}:",
                crossed.len(),
                if crossed.len() == 1 { "" } else { "s" }
            );
            for c in crossed {
                let _ = writeln!(
                    s,
                    "  {} {}: {}",
                    match c.kind {
                        Kind::Function => "function",
                        Kind::Service => "service",
                        Kind::Total => "total",
                    },
                    name_text(c),
                    change_text(c)
                );
            }
        }
    }
    s
}

fn name_text(c: &Change) -> String {
    if c.file.is_empty() {
        escape(&c.name).into_owned()
    } else {
        format!("{} ({})", escape(&c.name), escape(&c.file))
    }
}

fn change_text(c: &Change) -> String {
    match (c.status, c.change_pct) {
        (Status::New, _) => "new".into(),
        (Status::Vanished, _) => "vanished".into(),
        (Status::Changed, Some(p)) => format!("stall time {p:+.0}%"),
        (Status::Changed, None) => "stall time up from zero".into(),
    }
}

fn entry_text(s: &mut String, c: &Change, normalized: bool) {
    let tag = match (c.status, c.change_pct) {
        (Status::New, _) => "NEW".to_owned(),
        (Status::Vanished, _) => "GONE".to_owned(),
        (Status::Changed, Some(p)) => format!("{p:+.0}%"),
        (Status::Changed, None) => "UP".to_owned(),
    };
    let flag = if c.regression { "  REGRESSION" } else { "" };
    let _ = writeln!(s, "  {tag:>7}  {}{flag}", name_text(c));
    let num = |st: &Option<Stats>, f: &dyn Fn(&Stats) -> String| {
        st.as_ref().map_or_else(|| "-".to_owned(), f)
    };
    let (b, a) = (&c.before, &c.after);
    let rate = if normalized {
        format!(
            "   ({} -> {} ms per s traced)",
            num(b, &|x| ms(x.ns_per_s.unwrap_or(0.0) as u64)),
            num(a, &|x| ms(x.ns_per_s.unwrap_or(0.0) as u64))
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "           stall time {} -> {} ms{rate}",
        num(b, &|x| ms(x.total_ns)),
        num(a, &|x| ms(x.total_ns))
    );
    let q = |x: Option<u64>| x.map_or_else(|| "-".to_owned(), |v| format!("~{}", ms(v)));
    let _ = writeln!(
        s,
        "           stalls {} -> {}, p50 {} -> {} ms, p99 {} -> {} ms",
        num(b, &|x| x.count.to_string()),
        num(a, &|x| x.count.to_string()),
        num(b, &|x| q(x.p50_ns)),
        num(a, &|x| q(x.p50_ns)),
        num(b, &|x| q(x.p99_ns)),
        num(a, &|x| q(x.p99_ns)),
    );
    let _ = writeln!(
        s,
        "           causes {} -> {}{}",
        num(b, &|x| x.cause_mix.clone()),
        num(a, &|x| x.cause_mix.clone()),
        cause_shift_text(c)
    );
}

/// The cause-mix change of an entry in both reports, largest first:
/// ` (cpu +60, sleep -60 pts)`; empty when no share moved by a point or more.
fn cause_shift_text(c: &Change) -> String {
    if c.status != Status::Changed {
        return String::new();
    }
    let mut moved: Vec<(&String, f64)> = (c.delta.cause_share_pts.iter())
        .map(|(cause, &pts)| (cause, pts.round()))
        .filter(|(_, pts)| *pts != 0.0)
        .collect();
    if moved.is_empty() {
        return String::new();
    }
    moved.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()).then_with(|| x.0.cmp(y.0)));
    let parts: Vec<String> = moved.iter().map(|(c, p)| format!("{c} {p:+}")).collect();
    format!(" ({} pts)", parts.join(", "))
}
