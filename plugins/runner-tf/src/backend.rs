//! Cairn-managed state: Terraform's `http` backend pointed at the control plane.
//!
//! The lease environment names the endpoint and the run's credentials. The project gets an
//! override file declaring an empty `http` backend (an override file's backend replaces any the
//! project declares), and `init -reconfigure` receives the settings: the address, lock and
//! unlock addresses and username as `-backend-config=key=value` flags, the password through a
//! `-backend-config` file readable by its owner only and removed after init, so that it never
//! shows in a process list or a logged command line. `-reconfigure` because a workspace restored
//! for apply already holds the settings of the planning lease.
//!
//! Read-only runs (proposed runs) get no lock addresses: the http backend then does not lock.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The override file written into the project directory.
pub const OVERRIDE_FILE: &str = "cairn_backend_override.tf";
/// Where the password file is written for init, relative to the project directory.
pub const SECRET_FILE: &str = ".cairn/backend-password.hcl";

/// The state backend settings a lease hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBackend {
    pub address: String,
    pub username: String,
    pub password: String,
    /// Read, never lock or write.
    pub read_only: bool,
}

impl HttpBackend {
    /// The settings from the lease environment; `None` unless `CAIRN_STATE_ADDRESS` is set.
    pub fn from_env(env: &HashMap<String, String>) -> Option<HttpBackend> {
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let address = get("CAIRN_STATE_ADDRESS");
        if address.is_empty() {
            return None;
        }
        Some(HttpBackend {
            address,
            username: get("CAIRN_STATE_USERNAME"),
            password: get("CAIRN_STATE_PASSWORD"),
            read_only: matches!(get("CAIRN_STATE_READ_ONLY").as_str(), "1" | "true"),
        })
    }

    /// Writes the override file and the password file into `project_dir`; returns the path of
    /// the password file.
    pub fn prepare(&self, project_dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::write(
            project_dir.join(OVERRIDE_FILE),
            "# Written by Cairn: the state is kept by the Cairn control plane.\n\
             terraform {\n  backend \"http\" {}\n}\n",
        )?;
        let secret = project_dir.join(SECRET_FILE);
        if let Some(dir) = secret.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&secret);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&secret)?;
        writeln!(f, "password = {}", hcl_string(&self.password))?;
        Ok(secret)
    }

    /// `init` arguments; `secret_file` is what [`prepare`](Self::prepare) returned.
    pub fn init_args(&self, secret_file: &Path) -> Vec<String> {
        let mut args = vec![
            "init".to_owned(),
            "-input=false".to_owned(),
            "-no-color".to_owned(),
            "-reconfigure".to_owned(),
            format!("-backend-config=address={}", self.address),
            format!("-backend-config=username={}", self.username),
        ];
        if !self.read_only {
            args.push(format!("-backend-config=lock_address={}", self.address));
            args.push(format!("-backend-config=unlock_address={}", self.address));
        }
        args.push(format!("-backend-config={}", secret_file.display()));
        args
    }
}

/// A quoted HCL string.
fn hcl_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_come_from_the_lease_env() {
        assert_eq!(HttpBackend::from_env(&env(&[])), None);
        let b = HttpBackend::from_env(&env(&[
            (
                "CAIRN_STATE_ADDRESS",
                "http://127.0.0.1:7400/state/net/default",
            ),
            ("CAIRN_STATE_USERNAME", "run:run_1"),
            ("CAIRN_STATE_PASSWORD", "abc"),
        ]))
        .unwrap();
        assert!(!b.read_only);
        let args = b.init_args(Path::new("/p/.cairn/backend-password.hcl"));
        assert!(args.contains(&"-reconfigure".to_owned()));
        assert!(args.contains(
            &"-backend-config=lock_address=http://127.0.0.1:7400/state/net/default".to_owned()
        ));
        assert!(args.contains(&"-backend-config=username=run:run_1".to_owned()));
        assert!(
            args.iter().all(|a| !a.contains("abc")),
            "the password is not on the command line"
        );
        let ro = HttpBackend {
            read_only: true,
            ..b
        };
        assert!(ro
            .init_args(Path::new("x"))
            .iter()
            .all(|a| !a.contains("lock_address")));
    }

    #[test]
    fn the_password_file_is_private_and_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let b = HttpBackend {
            address: "http://h/state/s/default".into(),
            username: "run:r".into(),
            password: "p\"w${x}".into(),
            read_only: false,
        };
        let secret = b.prepare(dir.path()).unwrap();
        let text = std::fs::read_to_string(&secret).unwrap();
        assert_eq!(text, "password = \"p\\\"w$${x}\"\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let over = std::fs::read_to_string(dir.path().join(OVERRIDE_FILE)).unwrap();
        assert!(over.contains("backend \"http\" {}"));
        // Prepared again (a second init in the same workspace): replaced, not refused.
        b.prepare(dir.path()).unwrap();
    }
}
