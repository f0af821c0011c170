//! Real git repositories: a bare "remote" that stacks point at, and a clone to commit in.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

pub struct GitRepo {
    /// What a stack's `repository` is set to.
    pub bare: PathBuf,
    pub clone: PathBuf,
    _dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        // Tests must not depend on the user's git configuration.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Cairn Tests")
        .env("GIT_AUTHOR_EMAIL", "tests@cairn.invalid")
        .env("GIT_COMMITTER_NAME", "Cairn Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@cairn.invalid")
        .output()
        .map_err(|e| Error::io("running git (is it installed?)", e))?;
    if !out.status.success() {
        return Err(Error::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl GitRepo {
    /// An empty bare repository whose default branch is `main`, and a clone of it.
    pub fn new() -> Result<GitRepo> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary dir", e))?;
        let bare = dir.path().join("remote.git");
        let clone = dir.path().join("clone");
        let root = dir.path();
        git(
            root,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                path(&bare)?,
            ],
        )?;
        git(root, &["clone", "--quiet", path(&bare)?, path(&clone)?])?;
        // An empty clone has no branch yet; name it before the first commit.
        git(&clone, &["checkout", "--quiet", "-B", "main"])?;
        Ok(GitRepo {
            bare,
            clone,
            _dir: dir,
        })
    }

    /// The repository address for a stack.
    pub fn url(&self) -> String {
        self.bare.display().to_string()
    }

    /// Writes `content` to `rel` in the clone (creating directories).
    pub fn write(&self, rel: &str, content: &str) -> Result<()> {
        let path = self.clone.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        std::fs::write(&path, content).map_err(|e| Error::io(format!("writing {rel}"), e))
    }

    /// Commits everything and pushes the current branch; returns the commit sha.
    pub fn commit_and_push(&self, message: &str) -> Result<String> {
        git(&self.clone, &["add", "--all"])?;
        git(
            &self.clone,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        )?;
        git(
            &self.clone,
            &["push", "--quiet", "--set-upstream", "origin", "HEAD"],
        )?;
        self.head()
    }

    /// Creates and switches to `branch` from the current commit.
    pub fn branch(&self, branch: &str) -> Result<()> {
        git(&self.clone, &["checkout", "--quiet", "-b", branch]).map(|_| ())
    }

    /// Switches to an existing branch.
    pub fn switch(&self, branch: &str) -> Result<()> {
        git(&self.clone, &["checkout", "--quiet", branch]).map(|_| ())
    }

    pub fn head(&self) -> Result<String> {
        git(&self.clone, &["rev-parse", "HEAD"])
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Setup(format!("{} is not UTF-8", p.display())))
}
