//! The `cairn` binary: parse, run, and turn errors into one line and a documented exit code.

use clap::Parser;

fn main() {
    let cli = cairn::cli::Cli::parse();
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
