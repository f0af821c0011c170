//! The client verbs. Each checks its arguments first, then connects, then prints.

pub mod deployment;
pub mod policy;
pub mod pool;
pub mod run;
pub mod stack;
pub mod state;
pub mod system;

use std::path::Path;

use crate::cli::Command;
use crate::error::CliError;
use crate::Ctx;

pub async fn dispatch(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    match command {
        Command::Whoami => system::whoami(ctx).await,
        Command::Stack(c) => stack::run(ctx, c).await,
        Command::Run(c) => run::run(ctx, c).await,
        Command::Policy(c) => policy::run(ctx, c).await,
        Command::WorkerPool(c) => pool::run(ctx, c).await,
        Command::State(c) => state::run(ctx, c).await,
        Command::Deployment(c) => deployment::run(ctx, c).await,
        Command::ConfigVersion(c) => deployment::config_versions(ctx, c).await,
        Command::Login(_)
        | Command::Server(_)
        | Command::Agent(_)
        | Command::Dev(_)
        | Command::Completions { .. } => Err(CliError::Other(
            "internal: this verb is not a client verb".into(),
        )),
    }
}

/// Reads a file the user named, as an input error (exit 7) when it cannot be read.
pub fn read_input_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// `NAME=VALUE`, with the name checked by the same rule the server applies.
pub fn parse_assignment(s: &str) -> Result<(String, String), CliError> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| CliError::Invalid(format!("{s:?} is not NAME=VALUE")))?;
    cairn_core::validate::env_name("env name", name)?;
    Ok((name.to_string(), value.to_string()))
}

/// Labels are free-form, but an empty one is always a typo (`--label ""`).
pub fn check_labels(labels: &[String]) -> Result<(), CliError> {
    for l in labels {
        cairn_core::validate::non_empty("label", l, 255)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignment("TF_VAR_x=a=b").unwrap(),
            ("TF_VAR_x".to_string(), "a=b".to_string())
        );
        assert_eq!(parse_assignment("X=").unwrap().1, "");
        assert!(parse_assignment("X").is_err());
        assert_eq!(
            parse_assignment("1X=2").unwrap_err().exit_code(),
            crate::error::exit::INVALID
        );
    }
}
