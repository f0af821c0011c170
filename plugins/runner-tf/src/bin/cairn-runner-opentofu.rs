//! Runner plugin for OpenTofu (`tofu`, or `$CAIRN_TOFU_BIN`).

#[tokio::main]
async fn main() -> Result<(), cairn_runner_sdk::Error> {
    cairn_runner_tf::run_main(cairn_runner_tf::Flavor::OpenTofu).await
}
