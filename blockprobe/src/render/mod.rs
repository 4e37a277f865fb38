//! Human- and machine-readable output: the live stall stream ([`live`]) and the
//! end-of-run summary ([`summary`]), plus the text helpers they share.
//!
//! Text output never prints a name as is: process, function and file names come from
//! the traced programs and may hold control characters or terminal escape sequences,
//! so [`escape`] makes them inert. JSON output keeps names exact (JSON escaping is
//! enough there).

pub mod live;
pub mod summary;

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::model::{CulpritFrom, Stall};

/// What a stall with neither culprit nor stack is shown as: `<stopped>` when its loop
/// was stopped from outside (no code to blame), else `<unknown>`.
pub fn no_culprit(stall: &crate::model::Stall) -> &'static str {
    if stall.cause == crate::model::Cause::Stopped {
        crate::aggregate::STOPPED_FUNCTION
    } else {
        crate::aggregate::UNKNOWN_FUNCTION
    }
}

/// Makes a name safe to print on a terminal: backslash, C0 controls (including tab and
/// newline), DEL, C1 controls, and invisible or direction-changing characters (zero-width
/// spaces and joiners, bidi marks, embeddings, overrides and isolates, line/paragraph
/// separators, BOM) are written as escapes (`\\`, `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`).
/// Everything else, including printable non-ASCII, is kept. Borrowed when nothing
/// needs escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control() // C0, DEL, C1
        || matches!(c,
            '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}' // line/paragraph separators, bidi embeddings/overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{061c}' // Arabic letter mark
            | '\u{feff}') // BOM / zero-width no-break space
}

/// The last two components of a path (`/srv/app/api/db.py` → `api/db.py`); paths with
/// at most two components are kept whole.
pub fn short_path(path: &str) -> &str {
    let mut slashes = path.rmatch_indices('/').map(|(i, _)| i);
    match (slashes.next(), slashes.next()) {
        (Some(_), Some(second)) => &path[second + 1..],
        _ => path,
    }
}

/// Nanoseconds as milliseconds with one decimal, without unit (`152.3`).
pub fn ms(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e6)
}

/// A duration for people: `850 us`, `12.3 ms`, `4.56 s`, `3m 20s`, `2h 5m`.
pub fn human_duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    if ns < MS {
        format!("{} us", ns / US)
    } else if ns < S {
        format!("{:.1} ms", ns as f64 / MS as f64)
    } else if ns < 60 * S {
        format!("{:.2} s", ns as f64 / S as f64)
    } else {
        let secs = ns / S;
        if secs < 3600 {
            format!("{}m {}s", secs / 60, secs % 60)
        } else {
            format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
        }
    }
}

/// Truncates to at most `max` characters, marking a cut with `…` at the start (the end
/// of a qualified name or path is the part that identifies it).
pub fn truncate_left(s: &str, max: usize) -> Cow<'_, str> {
    let n = s.chars().count();
    if n <= max {
        return Cow::Borrowed(s);
    }
    if max == 0 {
        return Cow::Borrowed("");
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - (max - 1)));
    Cow::Owned(out)
}

/// Truncates to at most `max` characters, marking a cut with `…` at the end (for lines
/// whose start says what they are).
pub fn truncate_right(s: &str, max: usize) -> Cow<'_, str> {
    if s.chars().count() <= max {
        return Cow::Borrowed(s);
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    if max > 0 {
        out.push('…');
    }
    Cow::Owned(out)
}

/// Wall-clock time of day, `HH:MM:SS.mmm`, of `unix_ns` in the local time zone.
pub fn local_clock(unix_ns: u64) -> String {
    // The libc crate deprecates its `time_t` alias on musl for 32-bit targets (musl made
    // it 64-bit in 1.2.0); on x86_64 it is a 64-bit `long` in both.
    #[allow(deprecated)]
    let secs = (unix_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: `tm` is plain old data; localtime_r only writes into it and returns null
    // on failure.
    let offset = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff as i64
        }
    };
    clock_with_offset(unix_ns, offset)
}

/// `HH:MM:SS.mmm` of `unix_ns` shifted by `utc_offset_secs`.
pub fn clock_with_offset(unix_ns: u64, utc_offset_secs: i64) -> String {
    let ms_of_day = ((unix_ns / 1_000_000) as i128 + utc_offset_secs as i128 * 1000)
        .rem_euclid(86_400_000) as u64;
    let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    format!("{h:02}:{m:02}:{:02}.{:03}", rest / 1000, rest % 1000)
}

/// What a stall's culprit is, to put before it: the GIL holder's frame, the frame of
/// many short calls, or only where the loop was last seen (no evidence of the main
/// cause); empty for one call or the CPU samples.
pub fn culprit_label(stall: &Stall) -> String {
    if let Some(short) = stall.short_calls {
        format!(
            "{} short calls ({} ms) in ",
            short.calls,
            ms(short.total_ns)
        )
    } else if !stall.gil_holder_stack.is_empty() {
        let tid = stall
            .gil_holder_tid
            .map_or(String::new(), |t| format!(" {t}"));
        format!("GIL holder{tid}: ")
    } else if stall.culprit_from == Some(CulpritFrom::LastSeen) {
        "last seen: ".to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_and_ansi() {
        assert!(matches!(escape("plain.name"), Cow::Borrowed(_)));
        assert_eq!(escape("héllo wörld ✓"), "héllo wörld ✓");
        assert_eq!(escape("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape("\u{1b}[31mred\u{1b}[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape("nul\0bel\u{7}del\u{7f}"), "nul\\x00bel\\x07del\\x7f");
        assert_eq!(escape("c1\u{9b}31m"), "c1\\u{009b}31m");
        assert_eq!(escape("evil\u{202e}gnp.py"), "evil\\u{202e}gnp.py");
        assert_eq!(escape("zw\u{200b}sp"), "zw\\u{200b}sp");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        for s in ["\u{1b}]0;title\u{7}", "x\u{85}y", "\u{2028}"] {
            let e = escape(s);
            assert!(!e.chars().any(needs_escape_but_backslash), "{e:?}");
        }
    }

    fn needs_escape_but_backslash(c: char) -> bool {
        c != '\\' && needs_escape(c)
    }

    #[test]
    fn short_paths() {
        assert_eq!(short_path("/srv/app/api/db.py"), "api/db.py");
        assert_eq!(short_path("api/db.py"), "api/db.py");
        assert_eq!(short_path("/db.py"), "/db.py");
        assert_eq!(short_path("db.py"), "db.py");
        assert_eq!(
            short_path("<frozen importlib._bootstrap>"),
            "<frozen importlib._bootstrap>"
        );
        assert_eq!(short_path(""), "");
        assert_eq!(short_path("/a/"), "a/");
    }

    #[test]
    fn durations() {
        assert_eq!(ms(152_340_000), "152.3");
        assert_eq!(ms(0), "0.0");
        assert_eq!(ms(49_999), "0.0");
        assert_eq!(ms(50_001), "0.1");
        assert_eq!(human_duration(850_000), "850 us");
        assert_eq!(human_duration(12_340_000), "12.3 ms");
        assert_eq!(human_duration(4_561_000_000), "4.56 s");
        assert_eq!(human_duration(200_000_000_000), "3m 20s");
        assert_eq!(human_duration(7_500_000_000_000), "2h 5m");
    }

    #[test]
    fn truncation_keeps_the_end() {
        assert_eq!(
            truncate_left("Outer.Inner.method", 50),
            "Outer.Inner.method"
        );
        assert_eq!(truncate_left("Outer.Inner.method", 10), "…er.method");
        assert_eq!(truncate_left("Outer.Inner.method", 10).chars().count(), 10);
        assert_eq!(truncate_left("ééééé", 3), "…éé");
        assert_eq!(truncate_left("abc", 0), "");
        assert_eq!(truncate_right("web-1.example.com", 6), "web-1…");
        assert_eq!(truncate_right("web-1", 5), "web-1");
        assert_eq!(truncate_right("ééé", 2), "é…");
        assert_eq!(truncate_right("abc", 0), "");
    }

    #[test]
    fn clock() {
        // 2023-11-14T22:13:20.123Z
        let t = 1_700_000_000_123_456_789;
        assert_eq!(clock_with_offset(t, 0), "22:13:20.123");
        assert_eq!(clock_with_offset(t, 2 * 3600), "00:13:20.123");
        assert_eq!(clock_with_offset(t, -23 * 3600), "23:13:20.123");
        assert_eq!(clock_with_offset(0, 0), "00:00:00.000");
        let local = local_clock(t);
        let b = local.as_bytes();
        assert_eq!(b.len(), 12, "{local}");
        assert_eq!((b[2], b[5], b[8]), (b':', b':', b'.'), "{local}");
        assert!(local.ends_with(":20.123"), "{local}");
    }
}
