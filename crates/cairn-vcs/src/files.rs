//! Which files a change touches, and whether that concerns a stack.

use std::collections::BTreeSet;
use std::path::Path;

use cairn_core::Stack;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Result, VcsError};
use crate::event::{is_zero_sha, Provider, PushEvent};
use crate::git;

/// GitHub has documented a cap of 20 commits per push payload (newer documentation says
/// 2048). A list this long may be truncated, so its file lists are not trusted and git is asked.
pub const GITHUB_COMMITS_CAP: usize = 20;

impl PushEvent {
    /// The union of added, modified and removed files over every commit of the push, when the
    /// payload lists every commit; None when it lists none (new branch without new commits, tag
    /// pushes) or may have truncated the list (GitHub's cap, GitLab's `total_commits_count`
    /// above the listed commits). A deleted ref touches nothing.
    pub fn payload_files(&self) -> Option<Vec<String>> {
        if self.deleted {
            return Some(Vec::new());
        }
        if self.commits.is_empty() {
            return None;
        }
        let truncated = match (self.provider, self.total_commits) {
            (_, Some(total)) => total > self.commits.len() as u64,
            (Provider::GitHub, None) => self.commits.len() >= GITHUB_COMMITS_CAP,
            (Provider::GitLab, None) => false,
        };
        if truncated {
            return None;
        }
        let files: BTreeSet<&String> = self
            .commits
            .iter()
            .flat_map(|c| c.added.iter().chain(&c.modified).chain(&c.removed))
            .collect();
        Some(files.into_iter().cloned().collect())
    }
}

/// Affected files of a push: from the payload when it is complete, otherwise computed with
/// `git diff --name-only <before> <after>` in `repo` (a clone or bare repository that has both
/// commits). For a new ref (`before` all zeros) git reports the files of the head commit.
pub fn push_affected_files(event: &PushEvent, repo: Option<&Path>) -> Result<Vec<String>> {
    if let Some(files) = event.payload_files() {
        return Ok(files);
    }
    let repo = repo.ok_or_else(|| VcsError::FilesUnavailable {
        after: event.after.clone(),
    })?;
    if is_zero_sha(&event.before) {
        git::commit_files(repo, &event.after)
    } else {
        git::changed_files(repo, &event.before, &event.after)
    }
}

/// A stack's project root and additional project globs, compiled once.
#[derive(Debug, Clone)]
pub struct ProjectMatcher {
    /// Normalized root: no leading `./` or `/`, no trailing `/`; empty means the whole repository.
    root: String,
    globs: GlobSet,
}

fn normalize(path: &str) -> &str {
    let mut p = path.trim();
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    let p = p.trim_matches('/');
    if p == "." {
        ""
    } else {
        p
    }
}

impl ProjectMatcher {
    /// `*` stays within one path segment and `**` crosses segments (Rego's
    /// `glob.match(pattern, ["/"], path)`, which Spacelift's default push policy uses).
    pub fn new<S: AsRef<str>>(project_root: &str, globs: &[S]) -> Result<Self> {
        let mut set = GlobSetBuilder::new();
        for g in globs {
            let g = g.as_ref();
            let glob = GlobBuilder::new(normalize(g))
                .literal_separator(true)
                .build()
                .map_err(|e| VcsError::InvalidGlob {
                    glob: g.to_string(),
                    message: e.kind().to_string(),
                })?;
            set.add(glob);
        }
        let globs = set.build().map_err(|e| VcsError::InvalidGlob {
            glob: String::new(),
            message: e.to_string(),
        })?;
        Ok(Self {
            root: normalize(project_root).to_string(),
            globs,
        })
    }

    pub fn for_stack(stack: &Stack) -> Result<Self> {
        Self::new(&stack.project_root, &stack.additional_project_globs)
    }

    /// True when `file` is under the project root — segment-aware, so root `net` covers
    /// `net/x.tf` but not `network/x.tf` — or matches an additional glob.
    pub fn matches(&self, file: &str) -> bool {
        let f = normalize(file);
        let under_root = self.root.is_empty()
            || f == self.root
            || f.strip_prefix(self.root.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        under_root || self.globs.is_match(f)
    }

    pub fn affects<S: AsRef<str>>(&self, files: &[S]) -> bool {
        files.iter().any(|f| self.matches(f.as_ref()))
    }
}

/// Whether any of `files` concerns `stack`. A glob that does not compile matches nothing
/// (stack validation rejects such globs before they are saved); use [`ProjectMatcher`] to see
/// the error.
pub fn affects<S: AsRef<str>>(stack: &Stack, files: &[S]) -> bool {
    let root = normalize(&stack.project_root);
    let valid: Vec<&String> = stack
        .additional_project_globs
        .iter()
        .filter(|g| GlobBuilder::new(normalize(g)).build().is_ok())
        .collect();
    ProjectMatcher::new(root, &valid).is_ok_and(|m| m.affects(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(root: &str, globs: &[&str]) -> Stack {
        Stack {
            project_root: root.to_string(),
            additional_project_globs: globs.iter().map(|g| g.to_string()).collect(),
            ..Stack::default()
        }
    }

    #[test]
    fn root_is_segment_aware() {
        let s = stack("net", &[]);
        assert!(affects(&s, &["net/main.tf"]));
        assert!(affects(&s, &["net"]));
        assert!(affects(&s, &["net/a/b/c.tf"]));
        assert!(!affects(&s, &["network/x.tf"]));
        assert!(!affects(&s, &["netx"]));
        assert!(!affects(&s, &["app/net/main.tf"]));
        assert!(!affects::<&str>(&s, &[]));
        for root in ["net/", "./net", "/net/", " net "] {
            assert!(affects(&stack(root, &[]), &["net/main.tf"]), "{root}");
            assert!(!affects(&stack(root, &[]), &["network/main.tf"]), "{root}");
        }
    }

    #[test]
    fn empty_root_is_everything() {
        for root in ["", ".", "./", "/"] {
            assert!(affects(&stack(root, &[]), &["anything/at/all"]), "{root:?}");
        }
    }

    #[test]
    fn globs() {
        let s = stack("infra", &["modules/*.tf", "shared/**", "**/*.tfvars"]);
        assert!(affects(&s, &["modules/a.tf"]));
        assert!(!affects(&s, &["modules/x/a.tf"]));
        assert!(affects(&s, &["shared/x/y/z.json"]));
        assert!(affects(&s, &["env/prod/prod.tfvars"]));
        assert!(!affects(&s, &["docs/readme.md"]));
        assert!(affects(&s, &["docs/readme.md", "infra/main.tf"]));
    }

    #[test]
    fn invalid_glob() {
        assert!(matches!(
            ProjectMatcher::new("", &["a[".to_string()]),
            Err(VcsError::InvalidGlob { .. })
        ));
        // The valid parts of a stack still match.
        let s = stack("infra", &["a[", "b/*.tf"]);
        assert!(affects(&s, &["b/x.tf"]));
        assert!(affects(&s, &["infra/x.tf"]));
    }
}
