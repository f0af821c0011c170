//! Terraform configurations for the cairntest provider.

use std::path::Path;

/// One `cairntest_file` resource: its name, the file it manages and the content.
pub struct FileResource<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    pub content: &'a str,
}

/// A configuration managing `files`. With `local_state`, the state lives in that file (for
/// Terraform run by hand); without, whoever runs it provides the backend (the Cairn plugin
/// points Terraform at the control plane's state backend).
pub fn cairntest_config(local_state: Option<&Path>, files: &[FileResource<'_>]) -> String {
    let backend = local_state.map_or_else(String::new, |state| {
        format!(
            "  backend \"local\" {{\n    path = {}\n  }}\n",
            hcl_string(&state.display().to_string())
        )
    });
    let mut out = format!(
        "terraform {{\n  required_providers {{\n    cairntest = {{ source = \"cairn.local/test/cairntest\" }}\n  }}\n{backend}}}\n"
    );
    for f in files {
        out.push_str(&format!(
            "\nresource \"cairntest_file\" \"{}\" {{\n  path    = {}\n  content = {}\n}}\n",
            f.name,
            hcl_string(&f.path.display().to_string()),
            hcl_string(f.content)
        ));
    }
    out
}

/// An HCL string literal (JSON escaping is a subset HCL accepts), with `${` and `%{` escaped so
/// that content is never read as a template.
fn hcl_string(s: &str) -> String {
    serde_json::Value::String(s.to_string())
        .to_string()
        .replace("${", "$${")
        .replace("%{", "%%{")
}
