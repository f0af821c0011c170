//! Checkouts with the real `git` CLI: one bare cache per repository, one fresh tree per job.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::{Error, Result};

/// Bare repository caches under one directory. Fetches into the same cache are serialised
/// because concurrent `git fetch` runs race on ref locks.
#[derive(Debug)]
pub(crate) struct GitCache {
    root: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn git(args: &[&str], env: &[(&str, &Path)]) -> Result<Output> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        // A job must never hang on a credential prompt.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("SSH_ASKPASS", "true")
        .env("GCM_INTERACTIVE", "never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the future (job cancelled) must not leave git running.
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| Error::Checkout {
        what: "the repository".into(),
        detail: format!("cannot run git: {e}"),
    })?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// `git fetch` checks whether the repository needs housekeeping before it returns; that check is
/// a process start on the way from lease to plan, so fetches skip it and
/// [`maintain_in_background`] runs it beside the job instead.
const NO_AUTO_MAINTENANCE: &str = "maintenance.auto=false";

/// `git maintenance run --auto` on a cache, not awaited: it does work only when the cache has
/// grown enough loose objects or packs, and git's own locks keep it safe beside later fetches.
fn maintain_in_background(cache: &str) {
    let cache = cache.to_owned();
    tokio::spawn(async move {
        match git(
            &[
                "--git-dir",
                &cache,
                "maintenance",
                "run",
                "--auto",
                "--quiet",
            ],
            &[],
        )
        .await
        {
            Ok(out) if !out.ok => {
                tracing::debug!(cache = %cache, "git maintenance: {}", out.stderr);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(cache = %cache, "git maintenance: {e}"),
        }
    });
}

/// A whole SHA-1 or SHA-256 object id, not an abbreviation.
fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_full_sha(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl GitCache {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn cache_dir(&self, repository: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(repository.as_bytes()));
        self.root.join(format!("{}.git", &digest[..24]))
    }

    fn lock_for(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(dir.to_owned()).or_default())
    }

    /// Writes the tree of `commit` (or of `branch`'s head when `commit` is empty) into the empty
    /// directory `dest`, and returns the commit checked out.
    pub(crate) async fn checkout(
        &self,
        repository: &str,
        commit: &str,
        branch: &str,
        dest: &Path,
        index_file: &Path,
    ) -> Result<String> {
        validate_inputs(repository, commit, branch)?;
        let cache = self.cache_dir(repository);
        let cache_str = cache.to_string_lossy().into_owned();
        let lock = self.lock_for(&cache);
        let sha = {
            let _guard = lock.lock().await;
            if !cache.join("HEAD").exists() {
                let out = git(&["init", "--bare", "--quiet", &cache_str], &[]).await?;
                if !out.ok {
                    return Err(Error::Checkout {
                        what: format!("the cache for `{repository}`"),
                        detail: out.stderr,
                    });
                }
            }
            self.fetch(&cache_str, repository, commit, branch).await?
        };

        // A private index keeps concurrent checkouts from the same cache independent.
        let dest_str = dest.to_string_lossy().into_owned();
        let out = git(
            &[
                "--git-dir",
                &cache_str,
                "--work-tree",
                &dest_str,
                "read-tree",
                "--reset",
                "-u",
                &format!("{sha}^{{commit}}"),
            ],
            &[("GIT_INDEX_FILE", index_file)],
        )
        .await?;
        let _ = std::fs::remove_file(index_file);
        if !out.ok {
            return Err(Error::Checkout {
                what: format!("commit {sha}"),
                detail: out.stderr,
            });
        }
        Ok(sha)
    }

    async fn has_commit(&self, cache: &str, rev: &str) -> Result<Option<String>> {
        let spec = format!("{rev}^{{commit}}");
        let out = git(
            &[
                "--git-dir",
                cache,
                "rev-parse",
                "--verify",
                "--quiet",
                &spec,
            ],
            &[],
        )
        .await?;
        Ok(out.ok.then_some(out.stdout))
    }

    async fn fetch(
        &self,
        cache: &str,
        repository: &str,
        commit: &str,
        branch: &str,
    ) -> Result<String> {
        if !commit.is_empty() {
            if let Some(sha) = self.has_commit(cache, commit).await? {
                return Ok(sha);
            }
            // Fetching by object id works on servers that allow it (protocol v2, GitHub,
            // GitLab); the branch fetch below covers the others.
            let by_sha = git(
                &[
                    "-c",
                    NO_AUTO_MAINTENANCE,
                    "--git-dir",
                    cache,
                    "fetch",
                    "--no-tags",
                    "--quiet",
                    repository,
                    commit,
                ],
                &[],
            )
            .await?;
            if by_sha.ok {
                maintain_in_background(cache);
                // A fetch by a whole object id brought exactly that object: no rev-parse
                // (a process start) to learn its id. That it is a commit, read-tree checks.
                if is_object_id(commit) {
                    return Ok(commit.to_ascii_lowercase());
                }
                if let Some(sha) = self.has_commit(cache, commit).await? {
                    return Ok(sha);
                }
            }
        }
        let source = if branch.is_empty() {
            "HEAD".to_owned()
        } else {
            format!("refs/heads/{branch}")
        };
        let local_ref = format!(
            "refs/cairn/{}",
            if branch.is_empty() { "HEAD" } else { branch }
        );
        let refspec = format!("+{source}:{local_ref}");
        let out = git(
            &[
                "-c",
                NO_AUTO_MAINTENANCE,
                "--git-dir",
                cache,
                "fetch",
                "--no-tags",
                "--quiet",
                repository,
                &refspec,
            ],
            &[],
        )
        .await?;
        if out.ok {
            maintain_in_background(cache);
        }
        if !out.ok {
            // Tell "the repository is unreachable" from "it has no such branch or commit".
            let probe = git(&["ls-remote", "--heads", repository], &[]).await?;
            if !probe.ok {
                return Err(Error::RepositoryFetch {
                    repository: repository.to_owned(),
                    detail: probe.stderr,
                });
            }
            if commit.is_empty() {
                return Err(Error::RepositoryFetch {
                    repository: repository.to_owned(),
                    detail: format!("branch `{branch}` not found: {}", out.stderr),
                });
            }
            return Err(Error::CommitNotFound {
                repository: repository.to_owned(),
                commit: commit.to_owned(),
            });
        }
        let wanted = if commit.is_empty() {
            local_ref.as_str()
        } else {
            commit
        };
        self.has_commit(cache, wanted)
            .await?
            .ok_or_else(|| Error::CommitNotFound {
                repository: repository.to_owned(),
                commit: wanted.to_owned(),
            })
    }
}

/// Values from the lease reach git's command line: none may pass for an option.
fn validate_inputs(repository: &str, commit: &str, branch: &str) -> Result<()> {
    if repository.is_empty() || repository.starts_with('-') {
        return Err(Error::InvalidLease(format!(
            "repository `{repository}` is not a repository address"
        )));
    }
    if !commit.is_empty() && !is_full_sha(commit) {
        return Err(Error::InvalidLease(format!(
            "commit `{commit}` is not a hexadecimal commit id"
        )));
    }
    if branch.starts_with('-')
        || branch.contains("..")
        || branch
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
    {
        return Err(Error::InvalidLease(format!(
            "branch `{branch}` is not a valid branch name"
        )));
    }
    if commit.is_empty() && branch.is_empty() {
        return Err(Error::InvalidLease(
            "the lease names neither a commit nor a branch".into(),
        ));
    }
    Ok(())
}

/// The absolute directory of `project_root` inside `root`, refusing anything that leaves the
/// tree, lexically (`..`, absolute paths) or through symlinks.
pub(crate) fn resolve_project_root(
    root: &Path,
    project_root: &str,
    commit: &str,
) -> Result<PathBuf> {
    let relative = Path::new(project_root);
    let mut depth: i32 = 0;
    for component in relative.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => {
                return Err(Error::ProjectRootOutside(project_root.to_owned()))
            }
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
        }
        if depth < 0 {
            return Err(Error::ProjectRootOutside(project_root.to_owned()));
        }
    }
    let canonical_root = root
        .canonicalize()
        .map_err(Error::io(format!("resolving {}", root.display())))?;
    let dir = match root.join(relative).canonicalize() {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling symlink to a target outside is still an escape, not a missing dir.
            if let Ok(target) = std::fs::read_link(root.join(relative)) {
                if target.is_absolute() {
                    return Err(Error::ProjectRootOutside(project_root.to_owned()));
                }
            }
            return Err(Error::ProjectRootMissing {
                project_root: project_root.to_owned(),
                commit: commit.to_owned(),
            });
        }
        Err(e) => {
            return Err(Error::io(format!(
                "resolving project root `{project_root}`"
            ))(e))
        }
    };
    if !dir.starts_with(&canonical_root) {
        return Err(Error::ProjectRootOutside(project_root.to_owned()));
    }
    if !dir.is_dir() {
        return Err(Error::ProjectRootNotDir(project_root.to_owned()));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_root_checks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("infra/prod")).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("infra", root.join("inside")).unwrap();

        assert!(resolve_project_root(&root, "infra/prod", "c").is_ok());
        assert!(resolve_project_root(&root, "", "c").is_ok());
        assert!(resolve_project_root(&root, "inside/prod", "c").is_ok());
        assert!(matches!(
            resolve_project_root(&root, "../tree/infra", "c"),
            Err(Error::ProjectRootOutside(_))
        ));
        assert!(matches!(
            resolve_project_root(&root, "/etc", "c"),
            Err(Error::ProjectRootOutside(_))
        ));
        assert!(matches!(
            resolve_project_root(&root, "escape", "c"),
            Err(Error::ProjectRootOutside(_))
        ));
        assert!(matches!(
            resolve_project_root(&root, "nope", "c"),
            Err(Error::ProjectRootMissing { .. })
        ));
        assert!(matches!(
            resolve_project_root(&root, "file", "c"),
            Err(Error::ProjectRootNotDir(_))
        ));
    }

    fn run_git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A whole commit id is checked out without asking the cache what it is; an abbreviated one
    /// is resolved; an id that names a tree, not a commit, is refused.
    #[tokio::test]
    async fn checkout_by_whole_abbreviated_and_non_commit_ids() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        run_git(&repo, &["init", "--quiet", "-b", "main"]);
        std::fs::write(repo.join("main.tf"), "# one\n").unwrap();
        run_git(&repo, &["add", "."]);
        run_git(&repo, &["commit", "--quiet", "-m", "one"]);
        let commit = run_git(&repo, &["rev-parse", "HEAD"]);
        let tree = run_git(&repo, &["rev-parse", "HEAD^{tree}"]);
        let url = repo.to_string_lossy().into_owned();
        let cache = GitCache::new(dir.path().join("cache"));

        let checkout = |name: &str| {
            let dest = dir.path().join(name);
            std::fs::create_dir_all(&dest).unwrap();
            (dest.clone(), dir.path().join(format!("{name}.index")))
        };
        let (dest, index) = checkout("whole");
        let sha = cache
            .checkout(&url, &commit.to_uppercase(), "main", &dest, &index)
            .await
            .unwrap();
        assert_eq!(sha, commit);
        assert_eq!(
            std::fs::read_to_string(dest.join("main.tf")).unwrap(),
            "# one\n"
        );

        let (dest, index) = checkout("short");
        let sha = cache
            .checkout(&url, &commit[..12], "main", &dest, &index)
            .await
            .unwrap();
        assert_eq!(sha, commit);

        let (dest, index) = checkout("tree");
        let err = cache
            .checkout(&url, &tree, "main", &dest, &index)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&tree), "{err}");
        assert!(!dest.join("main.tf").exists());
    }

    #[test]
    fn lease_values_cannot_become_options() {
        assert!(validate_inputs("--upload-pack=x", "", "main").is_err());
        assert!(validate_inputs("/repo", "-x", "").is_err());
        assert!(validate_inputs("/repo", "", "-b").is_err());
        assert!(validate_inputs("/repo", "", "").is_err());
        assert!(validate_inputs("/repo", &"a".repeat(40), "feature/x").is_ok());
    }
}
