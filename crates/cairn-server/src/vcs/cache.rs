//! Server-side git: `git ls-remote` of a repository and a bare cache per repository under
//! `<data_dir>/git-cache`, fetched before diffs are computed. Blocking: call from
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_store::GitRefRecord;

use crate::error::{Result, ServerError};

/// Plain-Git repositories the server can reach by itself: `file://` URLs, absolute or
/// explicitly relative paths, and relative paths that exist (an `owner/name` that happens not
/// to exist on disk is a hosted repository's name, not a path).
pub fn is_local(repository: &str) -> bool {
    let r = repository.trim();
    r.starts_with('/')
        || r.starts_with("file://")
        || r.starts_with("./")
        || r.starts_with("../")
        || (!r.is_empty() && !r.contains("://") && Path::new(r).exists())
}

/// Local paths made absolute: git runs in the cache directory, where a relative path would
/// name something else.
fn absolute(repo: &str) -> String {
    if repo.contains("://") || repo.starts_with('/') {
        return repo.to_string();
    }
    std::fs::canonicalize(repo)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| repo.to_string())
}

fn check_repo(repository: &str) -> Result<&str> {
    let r = repository.trim();
    // A leading dash would be read as an option by git.
    if r.is_empty() || r.starts_with('-') || r.chars().any(char::is_control) {
        return Err(ServerError::invalid(
            "repository",
            format!("{repository:?} is not a git repository location"),
        ));
    }
    Ok(r)
}

fn git(dir: Option<&Path>, args: &[&str]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    let out = cmd
        .args(args)
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ServerError::Unavailable(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(ServerError::Unavailable(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Branches and tags of `repository` (peeled tag entries left out), ordered by name.
pub fn ls_remote(repository: &str) -> Result<Vec<GitRefRecord>> {
    let repo = check_repo(repository)?;
    let out = git(None, &["ls-remote", "--heads", "--tags", repo])?;
    let mut refs: Vec<GitRefRecord> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, name)| !name.ends_with("^{}"))
        .map(|(sha, name)| GitRefRecord {
            name: name.trim().to_string(),
            sha: sha.trim().to_string(),
        })
        .collect();
    refs.sort();
    Ok(refs)
}

/// The bare cache of `repository` in `cache_root`, created if missing and fetched (every
/// branch and tag, forced and pruned, so that it mirrors the repository).
pub fn fetch(cache_root: &Path, repository: &str) -> Result<PathBuf> {
    let repo = absolute(check_repo(repository)?);
    let repo = repo.as_str();
    let name = crate::crypto::sha256_hex(repo.as_bytes());
    let dir = cache_root.join(format!("{}.git", &name[..24]));
    if !dir.join("HEAD").exists() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServerError::io(format!("creating {}", dir.display()), e))?;
        git(Some(&dir), &["init", "--quiet", "--bare"])?;
    }
    git(
        Some(&dir),
        &[
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            "--no-tags",
            repo,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ],
    )?;
    Ok(dir)
}

/// What a commit holds under a project root, read from a bare cache made by [`fetch`]: the
/// root's tree hash (the content digest of a configuration version) and the file `name` in it
/// (None when there is none).
pub fn read_project_file(
    dir: &Path,
    sha: &str,
    root: &str,
    name: &str,
) -> Result<(String, Option<Vec<u8>>)> {
    if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ServerError::invalid(
            "commit_sha",
            format!("{sha:?} is not a commit hash"),
        ));
    }
    let root = root.trim_matches('/');
    let tree = if root.is_empty() {
        format!("{sha}^{{tree}}")
    } else {
        format!("{sha}:{root}")
    };
    let digest = git(Some(dir), &["rev-parse", "--verify", "--quiet", &tree]).map_err(|_| {
        ServerError::precondition(format!(
            "commit {sha} has no project root {root:?} (or the commit is not on a fetched branch)"
        ))
    })?;
    let digest = String::from_utf8_lossy(&digest).trim().to_string();
    let path = if root.is_empty() {
        name.to_string()
    } else {
        format!("{root}/{name}")
    };
    let listed = git(Some(dir), &["ls-tree", "--name-only", sha, "--", &path])?;
    if listed.is_empty() {
        return Ok((digest, None));
    }
    let body = git(Some(dir), &["cat-file", "blob", &format!("{sha}:{path}")])?;
    Ok((digest, Some(body)))
}

/// Locations the server may fetch on its own for a stack: local paths and `file://` URLs, any
/// `scheme://` URL (https, ssh, git) and scp-like `user@host:path`. A bare `owner/name` is a
/// hosted repository's name, not a location.
pub fn is_fetchable(repository: &str) -> bool {
    let r = repository.trim();
    if r.is_empty() || r.starts_with('-') {
        return false;
    }
    is_local(r)
        || r.contains("://")
        || r.split_once(':').is_some_and(|(host, path)| {
            host.contains('@') && !host.contains('/') && !path.is_empty()
        })
}

/// Whether the bare cache `dir` has commit `sha`.
pub fn has_commit(dir: &Path, sha: &str) -> bool {
    !sha.is_empty()
        && sha.chars().all(|c| c.is_ascii_hexdigit())
        && git(Some(dir), &["cat-file", "-e", &format!("{sha}^{{commit}}")]).is_ok()
}

/// Fetches one ref of `repository` into the same name in the cache `dir` (a pull request's
/// `refs/pull/<n>/head`, which the mirror of branches and tags leaves out).
pub fn fetch_ref(dir: &Path, repository: &str, full_ref: &str) -> Result<()> {
    let repo = absolute(check_repo(repository)?);
    let ok = full_ref.starts_with("refs/")
        && !full_ref.contains("..")
        && full_ref
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
    if !ok {
        return Err(ServerError::invalid(
            "ref",
            format!("{full_ref:?} is not a ref name"),
        ));
    }
    git(
        Some(dir),
        &[
            "fetch",
            "--quiet",
            "--force",
            "--no-tags",
            &repo,
            &format!("+{full_ref}:{full_ref}"),
        ],
    )
    .map(|_| ())
}

/// [`fetch`], skipped when the cache already has `sha` (commits never change): many stacks of
/// one repository at one commit cost one fetch.
pub fn fetch_commit(cache_root: &Path, repository: &str, sha: &str) -> Result<PathBuf> {
    let repo = absolute(check_repo(repository)?);
    let name = crate::crypto::sha256_hex(repo.as_bytes());
    let dir = cache_root.join(format!("{}.git", &name[..24]));
    let known = !sha.is_empty()
        && sha.chars().all(|c| c.is_ascii_hexdigit())
        && dir.join("HEAD").exists()
        && git(
            Some(&dir),
            &["cat-file", "-e", &format!("{sha}^{{commit}}")],
        )
        .is_ok();
    if known {
        return Ok(dir);
    }
    fetch(cache_root, repository)
}

/// Every path named `name` (at any depth) in the tree of `sha`.
pub fn paths_named(dir: &Path, sha: &str, name: &str) -> Result<Vec<String>> {
    if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ServerError::invalid(
            "commit_sha",
            format!("{sha:?} is not a commit hash"),
        ));
    }
    let out = git(Some(dir), &["ls-tree", "-r", "--name-only", sha])?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter(|p| is_named(p, name))
        .map(str::to_string)
        .collect())
}

/// Whether the repository path `path` is a file named `name`, at the root or in any directory.
pub fn is_named(path: &str, name: &str) -> bool {
    path.strip_suffix(name)
        .is_some_and(|dir| dir.is_empty() || dir.ends_with('/'))
}

#[cfg(test)]
mod tests {
    use super::is_named;

    #[test]
    fn a_name_matches_whole_path_components_only() {
        assert!(is_named("cairn.toml", "cairn.toml"));
        assert!(is_named("infra/net/cairn.toml", "cairn.toml"));
        assert!(!is_named("infra/mycairn.toml", "cairn.toml"));
        assert!(!is_named("cairn.toml.bak", "cairn.toml"));
    }
}
