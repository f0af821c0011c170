//! Ansible runner plugin (`ansible-playbook`, or `$CAIRN_ANSIBLE_PLAYBOOK_BIN`).

#[tokio::main]
async fn main() -> Result<(), cairn_runner_sdk::Error> {
    cairn_runner_sdk::init_logging();
    cairn_runner_sdk::serve(cairn_runner_ansible::AnsibleRunner::from_env()).await
}
