//! The command line, as clap types. Parsing only: `commands` does the work.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a self-hosted control plane for infrastructure-as-code runs",
    long_about = "Cairn: a self-hosted control plane for infrastructure-as-code runs.\n\n\
        Start everything on this machine with `cairn dev`, then use the client verbs \
        (stack, run, policy, workerpool) against it. The server and key come from the profile \
        (`cairn login`), then CAIRN_SERVER / CAIRN_API_KEY, then --server / --api-key-file; with \
        no profile, ./.cairn/admin.key is used against http://127.0.0.1:7400.",
    after_help = EXIT_CODES_HELP,
    propagate_version = true,
    infer_subcommands = false
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Profile from ~/.config/cairn/profiles.toml [env: CAIRN_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Server URL, e.g. http://127.0.0.1:7400 (overrides profile and CAIRN_SERVER)
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// File holding an API key (overrides profile and CAIRN_API_KEY)
    #[arg(long, global = true, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Output format of read verbs
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (gRPC API, scheduler, webhooks)
    Server(ServerArgs),
    /// Run a worker that dials the control plane (--server) and executes runs
    Agent(AgentArgs),
    /// Run server and agent in one process on SQLite in ./.cairn (Ctrl-C stops)
    Dev(DevArgs),
    /// Save a server URL and API key as a profile
    Login(LoginArgs),
    /// Show who the current API key belongs to
    Whoami,
    /// Manage stacks
    #[command(subcommand)]
    Stack(StackCmd),
    /// Trigger, inspect and steer runs
    #[command(subcommand)]
    Run(RunCmd),
    /// Manage Rego policies
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Manage worker pools
    #[command(subcommand, name = "workerpool", visible_alias = "pool")]
    WorkerPool(WorkerPoolCmd),
    /// Cairn-managed Terraform state: versions, outputs, restore, import
    #[command(subcommand)]
    State(StateCmd),
    /// Deployments of a stack (HCP Terraform Stacks)
    #[command(subcommand, visible_alias = "dep")]
    Deployment(DeploymentCmd),
    /// Configuration versions of a deployment stack
    #[command(subcommand, name = "config-version", visible_alias = "cv")]
    ConfigVersion(ConfigVersionCmd),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct ServerArgs {
    /// TOML configuration file [env: CAIRN_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address serving gRPC and HTTP (webhooks) on one port (default 127.0.0.1:7400)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory (SQLite file, artifacts, admin key); default ./.cairn
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… (default: SQLite in the data directory)
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// OTLP/gRPC collector, e.g. http://127.0.0.1:4317
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Log lines as JSON objects
    #[arg(long)]
    pub json_logs: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct AgentArgs {
    /// TOML configuration file [env: CAIRN_AGENT_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    // The control-plane URL is the global --server flag, shared with the client verbs.
    /// File holding the worker pool token
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Worker name shown in `cairn workerpool workers`
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where checkouts and plugin sockets live
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Directory holding runner plugins (cairn-runner-<vendor>)
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Runs this worker executes at once
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u32>,
    /// Worker labels (repeatable)
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// OTLP/gRPC collector, e.g. http://127.0.0.1:4317
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Log lines as JSON objects
    #[arg(long)]
    pub json_logs: bool,
}

#[derive(Debug, Args, Clone)]
pub struct DevArgs {
    /// gRPC listen address
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Data directory
    #[arg(long, value_name = "DIR", default_value = ".cairn")]
    pub data_dir: PathBuf,
    /// Directory holding runner plugins (default: next to this binary)
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Do not set up the demo repository and stacks on the first start
    #[arg(long)]
    pub no_demo: bool,
}

/// `cairn login` takes the server from --server (or CAIRN_SERVER) and the key from
/// --api-key-file, CAIRN_API_KEY or a prompt; the profile name is --profile (default `default`).
#[derive(Debug, Args, Clone)]
pub struct LoginArgs {
    /// Do not make this profile the current one
    #[arg(long)]
    pub no_switch: bool,
}

#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// List stacks
    List {
        /// Only stacks carrying all these labels
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
    },
    /// Show one stack
    Show { stack: String },
    /// Create a stack
    Create(Box<StackCreateArgs>),
    /// Change a stack's settings (only the flags given change)
    Update(Box<StackUpdateArgs>),
    /// Delete a stack (refused while a run is active)
    Delete { stack: String },
    /// Lock a stack for yourself
    Lock {
        stack: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Unlock a stack
    Unlock {
        stack: String,
        /// Admins: release someone else's lock
        #[arg(long)]
        force: bool,
    },
    /// Stack environment variables
    #[command(subcommand)]
    Env(EnvCmd),
    /// Move the tracked commit to the branch head, or to --commit
    Sync {
        stack: String,
        #[arg(long, value_name = "SHA")]
        commit: Option<String>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct StackCreateArgs {
    /// Stack id: lowercase letters, digits and dashes
    pub id: String,
    /// Display name (default: the id)
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Repository URL or path (anything git can fetch)
    #[arg(long)]
    pub repository: String,
    /// Tracked branch
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Directory inside the repository
    #[arg(long, default_value = "")]
    pub project_root: String,
    /// terraform | opentofu | pulumi | ansible | a plugin name
    #[arg(long, default_value = "opentofu")]
    pub vendor: String,
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// Extra globs whose changes also affect this stack
    #[arg(long = "glob", value_name = "GLOB")]
    pub globs: Vec<String>,
    /// Apply without confirmation when the plan has changes
    #[arg(long)]
    pub autodeploy: bool,
    #[arg(long)]
    pub administrative: bool,
    #[arg(long, value_name = "POOL")]
    pub worker_pool: Option<String>,
    #[arg(long, value_name = "VERSION")]
    pub terraform_version: Option<String>,
    /// Plain variable NAME=VALUE (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Secret variable NAME=VALUE (repeatable; write-only)
    #[arg(long = "secret-env", value_name = "NAME=VALUE")]
    pub secret_env: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct StackUpdateArgs {
    pub stack: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub repository: Option<String>,
    #[arg(long)]
    pub branch: Option<String>,
    #[arg(long)]
    pub project_root: Option<String>,
    #[arg(long)]
    pub vendor: Option<String>,
    /// Replace the labels (repeatable)
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Option<Vec<String>>,
    #[arg(long, value_name = "BOOL")]
    pub autodeploy: Option<bool>,
    #[arg(long, value_name = "BOOL")]
    pub administrative: Option<bool>,
    #[arg(long, value_name = "POOL")]
    pub worker_pool: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EnvCmd {
    /// Set a variable
    Set {
        stack: String,
        /// NAME=VALUE
        assignment: String,
        /// Write-only: never shown again
        #[arg(long)]
        secret: bool,
    },
    /// List variables (secret values are never shown)
    List { stack: String },
    /// Remove a variable
    Unset { stack: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// List a stack's runs, newest first
    List {
        stack: String,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Show a run: state, delta, changes, history
    Show { run: String },
    /// Trigger a run on a stack (tracked unless --proposed or --task)
    Trigger(RunTriggerArgs),
    /// Confirm an UNCONFIRMED run so it applies
    Confirm {
        run: String,
        /// Follow the run until it ends, with a spinner
        #[arg(long)]
        wait: bool,
    },
    /// Discard an UNCONFIRMED run
    Discard { run: String },
    /// Cancel a QUEUED or UNCONFIRMED run
    Cancel { run: String },
    /// Stop a run while it plans
    Stop { run: String },
    /// Plan again for some addresses only (prompts on a terminal when --target is absent)
    Replan {
        run: String,
        #[arg(long = "target", value_name = "ADDRESS")]
        targets: Vec<String>,
    },
    /// Approve or reject a run for approval policies
    Review {
        run: String,
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        note: Option<String>,
    },
    /// Print a run's log; --follow streams it and exits 0 only if the run FINISHED
    Logs {
        run: String,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List the resources and outputs a run changes
    Changes { run: String },
}

#[derive(Debug, Args, Clone)]
pub struct RunTriggerArgs {
    pub stack: String,
    /// A proposed run: plan only, never applies
    #[arg(long, conflicts_with = "task")]
    pub proposed: bool,
    /// A task run
    #[arg(long)]
    pub task: bool,
    /// Commit to run at (default: the stack's tracked commit)
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,
    /// Plan to destroy everything
    #[arg(long)]
    pub destroy: bool,
    /// Run before other queued runs
    #[arg(long)]
    pub prioritized: bool,
    /// Deployment name (default: `default`)
    #[arg(long)]
    pub deployment: Option<String>,
    /// Follow the run until it ends or needs a human, with a spinner
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    Push,
    Trigger,
    Plan,
    Approval,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// List policies
    List {
        #[arg(long = "type", value_enum)]
        kind: Option<PolicyKind>,
    },
    /// Show a policy and its body
    Show { policy: String },
    /// Create a policy from a Rego file (compiled on save)
    Create {
        /// Policy id: lowercase letters, digits and dashes
        id: String,
        #[arg(long = "type", value_enum)]
        kind: PolicyKind,
        /// Rego file
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// `autoattach:<label>` attaches to stacks with that label (repeatable)
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
    },
    /// Store a new version of a policy
    Update {
        policy: String,
        #[arg(long, value_name = "FILE")]
        body: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
        /// Replace the labels (repeatable)
        #[arg(long = "label", value_name = "LABEL")]
        labels: Option<Vec<String>>,
    },
    /// Delete a policy
    Delete { policy: String },
    /// Attach a policy to a stack
    Attach { policy: String, stack: String },
    /// Detach a policy from a stack
    Detach { policy: String, stack: String },
    /// List recent evaluations of a policy
    Samples {
        policy: String,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Evaluate a Rego file against an input or a stored sample, without side effects
    Simulate {
        #[arg(long = "type", value_enum)]
        kind: PolicyKind,
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// JSON input file
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "sample",
            required_unless_present = "sample"
        )]
        input: Option<PathBuf>,
        /// Id of a stored sample
        #[arg(long, value_name = "ID")]
        sample: Option<String>,
    },
    /// Run every `test_*` rule of every `*_test.rego` against the policies beside it, like
    /// `opa test`; needs no server. Exits 1 when a test fails or errors.
    Test {
        /// Directory holding the policies and their tests (searched recursively)
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Also list passing tests
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkerPoolCmd {
    /// Create a pool; prints its token once
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
        /// Write the token to this file (mode 0600) instead of printing it
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// List pools
    List,
    /// List a pool's workers
    Workers { pool: String },
}

#[derive(Debug, Subcommand)]
pub enum StateCmd {
    /// List a deployment's state versions, newest first
    List {
        stack: String,
        #[arg(long, default_value = "default")]
        deployment: String,
    },
    /// Show a deployment's current outputs (sensitive values hidden)
    Outputs {
        stack: String,
        #[arg(long, default_value = "default")]
        deployment: String,
    },
    /// Write an older version as the new current one (admin; refused while locked)
    Restore {
        stack: String,
        serial: i64,
        #[arg(long, default_value = "default")]
        deployment: String,
    },
    /// Bring an existing state file (e.g. terraform.tfstate) under the deployment's management
    /// and queue an IMPORT run that plans against it
    Import {
        stack: String,
        file: PathBuf,
        #[arg(long, default_value = "default")]
        deployment: String,
        /// Replace the deployment's existing state (admin)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeploymentCmd {
    /// List a stack's deployments (removed ones too)
    List { stack: String },
    /// Declare a deployment; the next configuration version runs it
    Create {
        stack: String,
        name: String,
        /// NAME=VALUE; VALUE is JSON (`region='"eu"'`, `replicas=3`) or, when it is not, a
        /// plain string (`region=eu`)
        #[arg(long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Plans with changes are confirmed without a human
        #[arg(long)]
        auto_approve: bool,
        /// Runs of this deployment destroy its resources
        #[arg(long)]
        destroy: bool,
    },
    /// Remove a deployment: it is destroyed with the last configuration that contained it
    Delete { stack: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigVersionCmd {
    /// List a stack's configuration versions, newest first
    List { stack: String },
    /// Fetch the tracked commit (or --commit) as a new configuration version, with one run per
    /// deployment
    Create {
        stack: String,
        #[arg(long, value_name = "SHA")]
        commit: Option<String>,
    },
}

impl Command {
    /// Whether the verb talks to a server through the client connection (server/agent/dev run
    /// one instead; completions need nothing).
    pub fn is_client_verb(&self) -> bool {
        !matches!(
            self,
            Command::Server(_) | Command::Agent(_) | Command::Dev(_) | Command::Completions { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_verb_suggests_the_close_one() {
        let e = parse(&["stak", "list"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidSubcommand);
        let text = e.to_string();
        assert!(text.contains("stack"), "{text}");
        let e = parse(&["run", "trigerr", "x"]).unwrap_err();
        assert!(e.to_string().contains("trigger"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&["stack", "list", "-o", "json", "--profile", "prod"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.profile.as_deref(), Some("prod"));
        assert!(matches!(cli.command, Command::Stack(StackCmd::List { .. })));
    }

    #[test]
    fn run_verbs() {
        let cli = parse(&["run", "trigger", "net", "--proposed", "--wait"]).unwrap();
        match cli.command {
            Command::Run(RunCmd::Trigger(a)) => {
                assert!(a.proposed && a.wait && !a.task);
                assert_eq!(a.stack, "net");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["run", "trigger", "net", "--proposed", "--task"]).is_err());
        let cli = parse(&["run", "replan", "r1", "--target", "a.b", "--target", "c.d"]).unwrap();
        match cli.command {
            Command::Run(RunCmd::Replan { targets, .. }) => assert_eq!(targets, ["a.b", "c.d"]),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["run", "review", "r1"]).is_err());
        assert!(parse(&["run", "review", "r1", "--approve", "--reject"]).is_err());
        assert!(parse(&["run", "review", "r1", "--reject"]).is_ok());
        assert!(parse(&["run", "logs", "r1", "--follow"]).is_ok());
    }

    #[test]
    fn stack_and_policy_verbs() {
        let cli = parse(&[
            "stack",
            "create",
            "net",
            "--repository",
            "/r",
            "--label",
            "a",
            "--label",
            "b",
            "--env",
            "X=1",
        ])
        .unwrap();
        match cli.command {
            Command::Stack(StackCmd::Create(a)) => {
                assert_eq!(a.labels, ["a", "b"]);
                assert_eq!(a.branch, "main");
                assert_eq!(a.env, ["X=1"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["stack", "env", "set", "net", "A=1", "--secret"]).is_ok());
        assert!(parse(&["policy", "simulate", "--type", "plan", "--body", "p.rego"]).is_err());
        assert!(parse(&[
            "policy", "simulate", "--type", "plan", "--body", "p.rego", "--sample", "s1"
        ])
        .is_ok());
        assert!(parse(&["pool", "list"]).is_ok());
        assert!(parse(&["workerpool", "workers", "default"]).is_ok());
    }

    #[test]
    fn daemon_flags() {
        let cli = parse(&[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://x",
            "--data-dir",
            "d",
        ])
        .unwrap();
        match cli.command {
            Command::Server(a) => {
                assert_eq!(a.listen.unwrap().port(), 0);
                assert_eq!(a.database_url.as_deref(), Some("postgres://x"));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["agent", "--server", "http://h:1", "--token-file", "t"]).unwrap();
        match cli.command {
            Command::Agent(a) => {
                assert_eq!(cli.global.server.as_deref(), Some("http://h:1"));
                assert_eq!(a.token_file.as_deref(), Some(std::path::Path::new("t")));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["dev"]).is_ok());
        assert!(parse(&["completions", "zsh"]).is_ok());
        assert!(parse(&["completions", "tcsh"]).is_err());
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("3  server unreachable"), "{help}");
        assert!(help.contains("9  the followed run ended"), "{help}");
    }
}
