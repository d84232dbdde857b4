//! Output for people and for programs: aligned tables, `key: value` blocks, human
//! units (bytes, durations, ages), and the API's JSON pretty-printed for `--json`.
//!
//! Everything here builds `String`s, so rendering is tested without a terminal.
//! Text that came from the server is [`clean`]ed of control characters before it
//! reaches the terminal, so a hostile value cannot move the cursor or change colours.

use std::io::Write;

use serde_json::Value;

use crate::error::Error;

/// Spaces between table columns.
const GAP: &str = "   ";

/// A table with a header row; columns are left-aligned and as wide as their widest
/// cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    /// Adds a row; missing cells are blank, extra cells dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.iter().map(|c| clean(c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`, without trailing
    /// spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', w - width(c)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width of a cell, counted in characters.
fn width(s: &str) -> usize {
    s.chars().count()
}

/// `key: value` lines with the values aligned; a value with several lines continues
/// under the first.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in pairs {
        let label = format!("{k}:");
        let mut lines = v.lines();
        let first = lines.next().unwrap_or("");
        let line = format!("{label:<w$}  {}", clean(first));
        out.push_str(line.trim_end());
        out.push('\n');
        for more in lines {
            out.push_str(&format!("{:<w$}  {}\n", "", clean(more)));
        }
    }
    out
}

/// Replaces control characters (escape sequences, newlines, tabs) with spaces.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Shortens `s` to at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `7.7 GiB`, `16 GiB` (one decimal
/// under 10, none from 10 on).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    // Rounding may reach the next unit (1023.96 KiB shows as 1.0 MiB, not 1024 KiB).
    if v.round() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 9.95 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// A duration, compact and to two units at most: `45s`, `12m`, `3h12m`, `2d4h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// How long ago `then_ms` was: `5s ago`; `never` for 0 (the API's "not yet").
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    format!("{} ago", duration_ms(now_ms.saturating_sub(then_ms)))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The API's JSON, pretty, with a final newline.
pub fn json(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// Writes text to stdout.
pub fn print(text: &str) -> Result<(), Error> {
    print_bytes(text.as_bytes())
}

/// Writes bytes to stdout as they are.
pub fn print_bytes(b: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(b)
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// Writes a line to stderr (progress and notes that are not the command's result).
pub fn note(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STATE", "HOST"]);
        t.row(vec!["i-1".into(), "running".into(), "h-long-name".into()]);
        t.row(vec!["i-22222".into(), "queued".into(), String::new()]);
        assert_eq!(
            t.render(),
            "ID        STATE     HOST\n\
             i-1       running   h-long-name\n\
             i-22222   queued\n"
        );
    }

    #[test]
    fn table_cells_are_cleaned_and_counted_in_characters() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["\x1b[31mred\nline".into(), "x".into()]);
        t.row(vec!["héé".into()]);
        assert_eq!(t.render(), "A               B\n [31mred line   x\nhéé\n");
    }

    #[test]
    fn key_value_blocks_align_and_continue_lines() {
        assert_eq!(
            key_values(&[
                ("name", "python".into()),
                ("env", "A=1\nB=2".into()),
                ("description", String::new()),
            ]),
            "name:         python\nenv:          A=1\n              B=2\ndescription:\n"
        );
    }

    #[test]
    fn bytes_in_human_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 * 1024 * 1024), "64 MiB");
        assert_eq!(bytes(8_270_000_000), "7.7 GiB");
        assert_eq!(bytes(16 * (1 << 30)), "16 GiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(u64::MAX), "16 EiB");
    }

    #[test]
    fn durations_and_ages() {
        assert_eq!(duration_ms(0), "0s");
        assert_eq!(duration_ms(45_999), "45s");
        assert_eq!(duration_ms(60_000), "1m");
        assert_eq!(duration_ms(12 * 60_000 + 5_000), "12m");
        assert_eq!(duration_ms(3_600_000), "1h");
        assert_eq!(duration_ms((3 * 60 + 12) * 60_000), "3h12m");
        assert_eq!(duration_ms(30 * 86_400_000), "30d");
        assert_eq!(duration_ms((2 * 24 + 4) * 3_600_000 + 59_000), "2d4h");
        assert_eq!(ago(10_000, 5_000), "5s ago");
        assert_eq!(ago(10_000, 0), "never");
        // A clock a little ahead of ours does not make ages negative.
        assert_eq!(ago(10_000, 12_000), "0s ago");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("a longer description", 10), "a longer …");
    }

    #[test]
    fn json_is_pretty_with_a_newline() {
        assert_eq!(json(&serde_json::json!({"a": 1})), "{\n  \"a\": 1\n}\n");
    }
}
