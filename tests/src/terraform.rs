//! Terraform configurations for the cairntest provider.

use std::path::Path;

/// One `cairntest_file` resource: its name, the file it manages and the content.
pub struct FileResource<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    pub content: &'a str,
}

/// A configuration managing `files`, with its state in the local file `state` (outside the
/// checkout: Cairn does not keep Terraform state, the configuration's backend does).
pub fn cairntest_config(state: &Path, files: &[FileResource<'_>]) -> String {
    let mut out = format!(
        "terraform {{\n  required_providers {{\n    cairntest = {{ source = \"cairn.local/test/cairntest\" }}\n  }}\n  backend \"local\" {{\n    path = {}\n  }}\n}}\n",
        hcl_string(&state.display().to_string())
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
