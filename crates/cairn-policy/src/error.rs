use std::path::PathBuf;
use std::time::Duration;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy body does not parse or does not pass regorus' analysis.
    #[error("{line}:{column}: {message}")]
    Compile {
        line: u32,
        column: u32,
        message: String,
    },
    /// The policy calls a builtin that reaches the network, the runtime or a clock.
    #[error("{line}:{column}: builtin `{name}` is not allowed in policies: evaluations must be pure and deterministic")]
    ForbiddenBuiltin {
        name: String,
        line: u32,
        column: u32,
    },
    /// The evaluation ran past its time budget; callers must treat this as a denial.
    #[error("policy evaluation exceeded its time budget of {budget:?}")]
    Timeout { budget: Duration },
    /// Evaluation failed at run time (conflicting rule values, builtin errors, ...).
    #[error("policy evaluation failed: {0}")]
    Evaluation(String),
    /// A decision rule produced a value of the wrong type (e.g. `track := "yes"`).
    #[error("rule `{rule}` {problem}")]
    Decision { rule: String, problem: String },
    /// The input document could not be converted to a Rego value.
    #[error("invalid policy input: {0}")]
    Input(String),
    /// Reading policy or test files failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

impl PolicyError {
    /// Turns a regorus error (whose text embeds `--> file:line:col` and `error: msg`) into a
    /// [`PolicyError::Compile`] so that editors can point at the offending place.
    pub(crate) fn from_regorus_compile(err: &anyhow::Error) -> Self {
        let text = err.to_string();
        let (line, column) = location_of(&text).unwrap_or((0, 0));
        PolicyError::Compile {
            line,
            column,
            message: message_of(&text),
        }
    }
}

/// Extracts `(line, column)` from regorus' `--> file:line:col` marker.
pub(crate) fn location_of(text: &str) -> Option<(u32, u32)> {
    let marker = text.find("--> ")?;
    let rest = &text[marker + 4..];
    let first_line = rest.lines().next()?;
    let mut parts = first_line.rsplitn(3, ':');
    let column = parts.next()?.trim().parse().ok()?;
    let line = parts.next()?.trim().parse().ok()?;
    Some((line, column))
}

/// Extracts the human part of a regorus error: the text after the last `error: ` marker,
/// or the whole text when the error carries no source excerpt.
pub(crate) fn message_of(text: &str) -> String {
    match text.rfind("error: ") {
        Some(idx) if text.contains("--> ") => text[idx + "error: ".len()..].trim().to_string(),
        _ => text.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_regorus_error_layout() {
        let text = "\n--> p.rego:3:7\n  |\n3 | track {\n  |       ^\nerror: expecting }";
        assert_eq!(location_of(text), Some((3, 7)));
        assert_eq!(message_of(text), "expecting }");
    }

    #[test]
    fn plain_errors_keep_their_text() {
        assert_eq!(location_of("boom"), None);
        assert_eq!(message_of(" boom "), "boom");
    }
}
