//! Pulumi runner plugin (`pulumi`, or `$CAIRN_PULUMI_BIN`).

#[tokio::main]
async fn main() -> Result<(), cairn_runner_sdk::Error> {
    cairn_runner_sdk::init_logging();
    cairn_runner_sdk::serve(cairn_runner_pulumi::PulumiRunner::from_env()).await
}
