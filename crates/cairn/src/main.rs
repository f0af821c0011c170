//! The `cairn` binary: parse, run, and turn errors into one line and a documented exit code.

use clap::Parser;

/// regorus' interpreter allocates at almost every step of a policy evaluation; with mimalloc a
/// trigger policy over 10,000 stacks evaluates about a quarter faster than with glibc's malloc
/// (cairn-bench's policy section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = cairn::cli::Cli::parse();
    if cli.command.is_client_verb() {
        quiet_broken_pipe();
    }
    if let cairn::cli::Command::Dev(_) = &cli.command {
        // Before the runtime exists: the environment may only change while single-threaded.
        cairn::demo::apply_tool_env(&cairn::demo::tools_dir());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::exit(cairn::error::exit::OTHER);
        }
    };
    let result = runtime.block_on(cairn::run(cli));
    // Streams and background tasks must not keep the process alive after the verb is done.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}

/// `cairn run list | head` closes stdout early; `println!` then panics with EPIPE. For the client
/// verbs that is a normal end, as it is for any Unix filter: exit quietly instead of printing a
/// panic. Daemons keep the default hook, where such a panic would be a real bug.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
