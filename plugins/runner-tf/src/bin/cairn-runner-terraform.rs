//! Runner plugin for Terraform (`terraform`, or `$CAIRN_TERRAFORM_BIN`).

#[tokio::main]
async fn main() -> Result<(), cairn_runner_sdk::Error> {
    cairn_runner_tf::run_main(cairn_runner_tf::Flavor::Terraform).await
}
