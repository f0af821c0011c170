//! The few git questions webhooks cannot answer, asked of a local clone or bare repository
//! with the real `git` CLI.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Result, VcsError};

/// A commit's metadata as git records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitMeta {
    pub sha: String,
    pub author_name: String,
    pub author_email: String,
    /// Author date, Unix nanoseconds.
    pub authored_at_ns: i64,
    pub message: String,
}

/// Rejects anything git could read as an option, and anything that cannot be a revision, so
/// that payload values never change what the command does.
fn check_rev(rev: &str) -> Result<&str> {
    let ok = !rev.is_empty()
        && rev.len() <= 256
        && !rev.starts_with('-')
        && !rev.contains("..")
        && rev.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if ok {
        Ok(rev)
    } else {
        Err(VcsError::InvalidRevision(rev.to_string()))
    }
}

fn git(repo: &Path, args: &[&str]) -> Result<std::process::Output> {
    let command = args.join(" ");
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| VcsError::Git {
            command: command.clone(),
            message: format!("cannot run git: {e}"),
        })?;
    Ok(out)
}

fn git_ok(repo: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = git(repo, args)?;
    if !out.status.success() {
        return Err(VcsError::Git {
            command: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Splits `-z` output into sorted, unique paths.
fn nul_paths(raw: &[u8]) -> Vec<String> {
    let mut files: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// `git diff --name-only <from> <to>`: files that differ between two commits. Renames are
/// reported as their old and new paths, as push payloads do (removed + added).
pub fn changed_files(repo: &Path, from: &str, to: &str) -> Result<Vec<String>> {
    let (from, to) = (check_rev(from)?, check_rev(to)?);
    let raw = git_ok(
        repo,
        &["diff", "--name-only", "-z", "--no-renames", from, to, "--"],
    )?;
    Ok(nul_paths(&raw))
}

/// Files a pull request changes: `git diff <base>...<head>`, i.e. against the merge base, so
/// that commits landed on the base branch since the fork point are not counted.
pub fn merge_base_diff(repo: &Path, base: &str, head: &str) -> Result<Vec<String>> {
    let range = format!("{}...{}", check_rev(base)?, check_rev(head)?);
    let raw = git_ok(
        repo,
        &["diff", "--name-only", "-z", "--no-renames", &range, "--"],
    )?;
    Ok(nul_paths(&raw))
}

/// Files changed by one commit relative to its first parent; for a root commit, every file.
pub fn commit_files(repo: &Path, sha: &str) -> Result<Vec<String>> {
    let sha = check_rev(sha)?;
    let parent = format!("{sha}^");
    let has_parent = git(repo, &["rev-parse", "--verify", "--quiet", &parent])?
        .status
        .success();
    let from = if has_parent {
        parent
    } else {
        empty_tree(repo)?
    };
    let raw = git_ok(
        repo,
        &[
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            &from,
            sha,
            "--",
        ],
    )?;
    Ok(nul_paths(&raw))
}

/// The empty tree's id in this repository's hash algorithm (SHA-1 or SHA-256).
fn empty_tree(repo: &Path) -> Result<String> {
    let raw = git_ok(repo, &["hash-object", "-t", "tree", "--stdin"])?;
    Ok(String::from_utf8_lossy(&raw).trim().to_string())
}

/// Whether `ancestor` is reachable from `descendant` (`git merge-base --is-ancestor`). A pull
/// request whose base tip is an ancestor of its head is not behind its base (`undiverged`).
pub fn is_ancestor(repo: &Path, ancestor: &str, descendant: &str) -> Result<bool> {
    let args = [
        "merge-base",
        "--is-ancestor",
        check_rev(ancestor)?,
        check_rev(descendant)?,
    ];
    let out = git(repo, &args)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(VcsError::Git {
            command: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// Author, date and message of one commit.
pub fn commit_meta(repo: &Path, sha: &str) -> Result<CommitMeta> {
    let sha = check_rev(sha)?;
    let raw = git_ok(
        repo,
        &["show", "-s", "--format=%H%x00%an%x00%ae%x00%at%x00%B", sha],
    )?;
    let text = String::from_utf8_lossy(&raw);
    let mut parts = text.splitn(5, '\0');
    let mut next = || parts.next().unwrap_or_default().to_string();
    let (sha, author_name, author_email, at, message) = (next(), next(), next(), next(), next());
    let secs: i64 = at.trim().parse().map_err(|_| VcsError::Git {
        command: format!("show -s {sha}"),
        message: format!("unexpected author date {at:?}"),
    })?;
    Ok(CommitMeta {
        sha: sha.trim().to_string(),
        author_name,
        author_email,
        authored_at_ns: secs.saturating_mul(1_000_000_000),
        message: message.trim_end().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_that_could_be_options_are_refused() {
        for bad in ["", "--output=/tmp/x", "-p", "a b", "a..b", "x\0y", "a\nb"] {
            assert!(
                matches!(check_rev(bad), Err(VcsError::InvalidRevision(_))),
                "{bad:?}"
            );
        }
        for good in [
            "HEAD",
            "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "refs/heads/main",
            "main^",
        ] {
            check_rev(good).expect(good);
        }
    }
}
