//! Human output: aligned tables, delta strips, relative times, colour and a spinner.
//!
//! Everything that decides what a line looks like is a pure function of its inputs (including
//! "now" and whether colour is on) so that it can be unit-tested without a terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v1::{Delta, RunState};

/// Whether to emit ANSI colours: only on a terminal and only if NO_COLOR is unset or empty
/// (<https://no-color.org>: "when present and not an empty string").
pub fn color_enabled(is_tty: bool, no_color: Option<&str>) -> bool {
    is_tty && no_color.is_none_or(str::is_empty)
}

/// The process-wide decision for stdout.
pub fn stdout_color() -> bool {
    color_enabled(
        std::io::stdout().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Green,
    Yellow,
    Red,
    Dim,
    Bold,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Red => "31",
            Color::Dim => "2",
            Color::Bold => "1",
        }
    }
}

pub fn paint(s: &str, color: Color, enabled: bool) -> String {
    if enabled && !s.is_empty() {
        format!("\x1b[{}m{s}\x1b[0m", color.code())
    } else {
        s.to_string()
    }
}

/// Visible width of a string, ignoring ANSI escape sequences, so that coloured cells align.
pub fn visible_width(s: &str) -> usize {
    let mut width = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI sequences end with a byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            width += 1;
        }
    }
    width
}

/// An aligned table: columns separated by two spaces, the last column unpadded.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self, color: bool) -> String {
        let columns = self.header.len();
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(visible_width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self
            .header
            .iter()
            .map(|h| paint(h, Color::Bold, color))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    let pad = width - visible_width(cell) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `+3 ~1 -2`: added green, changed yellow, deleted red; zero counts dimmed when coloured.
pub fn strip(added: i32, changed: i32, deleted: i32, color: bool) -> String {
    let part = |sign: &str, n: i32, c: Color| {
        let text = format!("{sign}{n}");
        if n == 0 {
            paint(&text, Color::Dim, color)
        } else {
            paint(&text, c, color)
        }
    };
    format!(
        "{} {} {}",
        part("+", added, Color::Green),
        part("~", changed, Color::Yellow),
        part("-", deleted, Color::Red)
    )
}

pub fn resource_strip(d: Option<&Delta>, color: bool) -> String {
    let d = d.copied().unwrap_or_default();
    strip(
        d.added_resources,
        d.changed_resources,
        d.deleted_resources,
        color,
    )
}

pub fn output_strip(d: Option<&Delta>, color: bool) -> String {
    let d = d.copied().unwrap_or_default();
    strip(d.added_outputs, d.changed_outputs, d.deleted_outputs, color)
}

/// "2m ago", "in 5s", "3d ago"; older than 30 days prints the date, which reads better than
/// "94d ago". `0` means "never set" in the API and prints "-".
pub fn relative_time(ts_nanos: i64, now_nanos: i64) -> String {
    if ts_nanos == 0 {
        return "-".to_string();
    }
    let diff = (now_nanos - ts_nanos) / 1_000_000_000;
    let (future, secs) = if diff < 0 {
        (true, -diff)
    } else {
        (false, diff)
    };
    if secs < 5 {
        return "just now".to_string();
    }
    let amount = match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s if s < 30 * 86_400 => format!("{}d", s / 86_400),
        _ => {
            return chrono::DateTime::from_timestamp_nanos(ts_nanos)
                .format("%Y-%m-%d")
                .to_string()
        }
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

pub fn now_nanos() -> i64 {
    cairn_core::now_nanos()
}

/// Short name of a run state, e.g. `FINISHED`.
pub fn run_state_name(s: RunState) -> &'static str {
    s.as_str_name()
        .strip_prefix("RUN_STATE_")
        .unwrap_or("UNSPECIFIED")
}

pub fn run_state_color(s: RunState) -> Color {
    match s {
        RunState::Finished => Color::Green,
        RunState::Failed | RunState::Stopped => Color::Red,
        RunState::Discarded | RunState::Canceled => Color::Dim,
        _ => Color::Yellow,
    }
}

pub fn painted_state(s: RunState, color: bool) -> String {
    paint(run_state_name(s), run_state_color(s), color)
}

pub fn is_terminal_state(s: RunState) -> bool {
    matches!(
        s,
        RunState::Finished
            | RunState::Failed
            | RunState::Discarded
            | RunState::Canceled
            | RunState::Stopped
    )
}

/// States where a run waits for a person: following it further would wait forever.
pub fn needs_attention(s: RunState) -> bool {
    matches!(s, RunState::Unconfirmed | RunState::PendingReview)
}

/// First `n` characters (ids, hashes) for narrow columns.
pub fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A spinner on stderr while waiting on a run. It draws only when stderr is a terminal, so logs
/// and pipes stay clean; the message can be changed while it spins.
pub struct Spinner {
    stop: Arc<AtomicBool>,
    message: Arc<std::sync::Mutex<String>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: impl Into<String>) -> Spinner {
        let stop = Arc::new(AtomicBool::new(false));
        let message = Arc::new(std::sync::Mutex::new(message.into()));
        let handle = if std::io::stderr().is_terminal() {
            let stop = stop.clone();
            let message = message.clone();
            Some(std::thread::spawn(move || {
                const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let msg = message.lock().map(|m| m.clone()).unwrap_or_default();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{} {msg}", FRAMES[i % FRAMES.len()]);
                    let _ = err.flush();
                    drop(err);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
            }))
        } else {
            None
        };
        Spinner {
            stop,
            message,
            handle,
        }
    }

    pub fn set_message(&self, m: impl Into<String>) {
        if let Ok(mut g) = self.message.lock() {
            *g = m.into();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn strip_plain_and_coloured() {
        assert_eq!(strip(3, 1, 2, false), "+3 ~1 -2");
        assert_eq!(strip(0, 0, 0, false), "+0 ~0 -0");
        let c = strip(3, 0, 2, true);
        assert_eq!(c, "\x1b[32m+3\x1b[0m \x1b[2m~0\x1b[0m \x1b[31m-2\x1b[0m");
        assert_eq!(visible_width(&c), "+3 ~0 -2".len());
    }

    #[test]
    fn delta_strips_split_resources_and_outputs() {
        let d = Delta {
            added_resources: 3,
            changed_resources: 1,
            deleted_resources: 2,
            added_outputs: 1,
            changed_outputs: 0,
            deleted_outputs: 0,
        };
        assert_eq!(resource_strip(Some(&d), false), "+3 ~1 -2");
        assert_eq!(output_strip(Some(&d), false), "+1 ~0 -0");
        assert_eq!(resource_strip(None, false), "+0 ~0 -0");
    }

    #[test]
    fn relative_times() {
        let now = 1_700_000_000 * S;
        assert_eq!(relative_time(0, now), "-");
        assert_eq!(relative_time(now - 2 * S, now), "just now");
        assert_eq!(relative_time(now - 42 * S, now), "42s ago");
        assert_eq!(relative_time(now - 120 * S, now), "2m ago");
        assert_eq!(relative_time(now - 3 * 3600 * S, now), "3h ago");
        assert_eq!(relative_time(now - 5 * 86_400 * S, now), "5d ago");
        assert_eq!(relative_time(now + 90 * S, now), "in 1m");
        assert_eq!(relative_time(now - 40 * 86_400 * S, now), "2023-10-05");
    }

    #[test]
    fn table_aligns_columns_even_with_colour() {
        let mut t = Table::new(["ID", "STATE", "DELTA"]);
        t.row(["a", &paint("FINISHED", Color::Green, true), "+1 ~0 -0"]);
        t.row(["longer-id", "QUEUED", "+0 ~0 -0"]);
        let plain: String = t.render(false).lines().map(|l| format!("{l}\n")).collect();
        assert_eq!(
            plain,
            "ID         STATE     DELTA\n\
             a          \x1b[32mFINISHED\x1b[0m  +1 ~0 -0\n\
             longer-id  QUEUED    +0 ~0 -0\n"
        );
        let coloured = t.render(true);
        let widths: Vec<usize> = coloured.lines().map(visible_width).collect();
        assert_eq!(widths, ["ID         STATE     DELTA".len(), 29, 29]);
    }

    #[test]
    fn table_trims_trailing_blank_cells() {
        let mut t = Table::new(["A", "B"]);
        t.row(["x", ""]);
        assert_eq!(t.render(false), "A  B\nx\n");
    }

    #[test]
    fn no_color_rules() {
        assert!(color_enabled(true, None));
        assert!(color_enabled(true, Some("")));
        assert!(!color_enabled(true, Some("1")));
        assert!(!color_enabled(false, None));
        assert_eq!(paint("x", Color::Red, false), "x");
    }

    #[test]
    fn state_names() {
        assert_eq!(run_state_name(RunState::PendingReview), "PENDING_REVIEW");
        assert!(is_terminal_state(RunState::Stopped));
        assert!(!is_terminal_state(RunState::Unconfirmed));
        assert!(needs_attention(RunState::Unconfirmed));
    }
}
