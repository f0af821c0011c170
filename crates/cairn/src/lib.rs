//! The `cairn` binary as a library: argument types, the client connection, output formatting and
//! the verbs, so that parsing and formatting are unit-testable and `main` stays a thin shell.

pub mod cli;
pub mod client;
pub mod commands;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod json;
pub mod output;
pub mod profile;

pub use error::CliError;

use std::io::IsTerminal;

use cli::{Cli, Command, OutputFormat};
use profile::{Connection, ConnectionEnv, ConnectionFlags, ProfileFile};

/// What every client verb needs: where to connect and how to print.
pub struct Ctx {
    pub conn: Connection,
    pub output: OutputFormat,
    pub color: bool,
    pub stdin_tty: bool,
}

impl Ctx {
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// Connects lazily, after the verb has checked its arguments: invalid input never costs a
    /// round trip and never reports "unreachable" for what is really a typo.
    pub async fn api(&self) -> Result<client::Api, CliError> {
        client::Api::connect(&self.conn).await.map(|(api, _)| api)
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    match command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "cairn", &mut script);
            use std::io::Write;
            match std::io::stdout().write_all(&script) {
                // `cairn completions bash | head` is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Server(args) => daemon::server(args).await,
        Command::Agent(args) => daemon::agent(args, global.server).await,
        Command::Dev(args) => daemon::dev(args).await,
        command => {
            let flags = ConnectionFlags {
                profile: global.profile.clone(),
                server: global.server.clone(),
                api_key_file: global.api_key_file.clone(),
            };
            let env = ConnectionEnv::from_process();
            if let Command::Login(args) = command {
                return commands::system::login(&flags, &env, args).await;
            }
            let path = profile::default_path();
            let file = match &path {
                Some(p) => ProfileFile::load(p)?,
                None => ProfileFile::default(),
            };
            let cwd = std::env::current_dir()?;
            let conn = profile::resolve(&flags, &env, &file, path.as_deref(), &cwd)?;
            let ctx = Ctx {
                conn,
                output: global.output,
                color: output::stdout_color(),
                stdin_tty: std::io::stdin().is_terminal(),
            };
            commands::dispatch(&ctx, command).await
        }
    }
}
