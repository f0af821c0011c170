//! Uploaded configurations: a tar.gz of a stack's project root given to
//! CreateConfigurationVersion instead of a commit (source UPLOAD).
//!
//! The upload is checked and normalized here (sorted entries, fixed modes, owners and times,
//! placed under the stack's project root) so that the same files always give the same content
//! digest, the sha256 of the normalized archive. It is kept sealed by the master key, addressed
//! by that digest. A plan lease of one of the version's runs gets it re-sealed with the run's
//! data key, in exactly the format of a plan's workspace archive, so that the agent restores it
//! the way it restores a workspace for an apply (`Lease.source_artifact_id`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{Result, ServerError};

/// Default for `[deployments] upload_max_bytes`: the compressed archive.
pub const DEFAULT_UPLOAD_MAX_BYTES: u64 = 16 << 20;
/// The unpacked files may be this many times the compressed limit (gzip bombs are refused).
const UNPACKED_FACTOR: u64 = 16;
const FIELD: &str = "archive";

/// A checked and normalized upload.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// tar.gz with every entry under the project root.
    pub archive: Vec<u8>,
    /// Hex sha256 of `archive`.
    pub digest: String,
    /// The project root's cairn.toml, if the upload has one.
    pub config_file: Option<Vec<u8>>,
}

enum Node {
    Dir,
    File { executable: bool, data: Vec<u8> },
    Symlink(String),
}

/// Relative path components of an archive entry or a project root; `what` names it in errors.
fn components(path: &Path, what: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| ServerError::invalid(FIELD, format!("{what} is not UTF-8")))?
                    .to_string(),
            ),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ServerError::invalid(
                    FIELD,
                    format!("{what} {} leaves the tree (..)", path.display()),
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ServerError::invalid(
                    FIELD,
                    format!("{what} {} is absolute", path.display()),
                ))
            }
        }
    }
    Ok(out)
}

/// Whether a symlink at `at` (components) pointing to `target` stays inside the tree.
fn link_stays_inside(at: &[String], target: &Path) -> bool {
    if target.has_root() {
        return false;
    }
    // The link resolves relative to its directory.
    let mut depth = at.len() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Checks `bytes` (a tar.gz of the project root) and normalizes it under `project_root`.
/// Refused, naming the entry and the reason: not gzip or not tar, larger than `max_bytes`
/// (compressed) or than 16 times that unpacked, absolute paths, `..`, symlinks leaving the
/// tree, hard links and special files.
pub fn normalize(bytes: &[u8], max_bytes: u64, project_root: &str) -> Result<Normalized> {
    if bytes.is_empty() {
        return Err(ServerError::invalid(FIELD, "is empty"));
    }
    if bytes.len() as u64 > max_bytes {
        return Err(ServerError::invalid(
            FIELD,
            format!(
                "is {} bytes, more than the limit of {max_bytes}",
                bytes.len()
            ),
        ));
    }
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(ServerError::invalid(FIELD, "is not gzip-compressed"));
    }
    let root = components(Path::new(project_root.trim_matches('/')), "project root")?;
    let unpacked_max = max_bytes.saturating_mul(UNPACKED_FACTOR);
    let mut unpacked: u64 = 0;
    let mut nodes: BTreeMap<Vec<String>, Node> = BTreeMap::new();
    let bad_tar = |e: std::io::Error| ServerError::invalid(FIELD, format!("is not a tar.gz: {e}"));
    let mut tar = tar::Archive::new(GzDecoder::new(bytes));
    for entry in tar.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        let path = entry.path().map_err(bad_tar)?.into_owned();
        let at = components(&path, "entry")?;
        let kind = entry.header().entry_type();
        if at.is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(ServerError::invalid(
                FIELD,
                format!("entry {} has no name", path.display()),
            ));
        }
        let node = if kind.is_dir() {
            Node::Dir
        } else if kind.is_file() {
            let size = entry.header().size().map_err(bad_tar)?;
            unpacked = unpacked.saturating_add(size);
            if unpacked > unpacked_max {
                return Err(ServerError::invalid(
                    FIELD,
                    format!("unpacks to more than {unpacked_max} bytes"),
                ));
            }
            let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
            entry.read_to_end(&mut data).map_err(bad_tar)?;
            let mode = entry.header().mode().map_err(bad_tar)?;
            Node::File {
                executable: mode & 0o111 != 0,
                data,
            }
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(bad_tar)?
                .ok_or_else(|| {
                    ServerError::invalid(FIELD, format!("symlink {} has no target", path.display()))
                })?
                .into_owned();
            if !link_stays_inside(&at, &target) {
                return Err(ServerError::invalid(
                    FIELD,
                    format!(
                        "symlink {} points out of the tree ({})",
                        path.display(),
                        target.display()
                    ),
                ));
            }
            Node::Symlink(target.to_str().map(str::to_string).ok_or_else(|| {
                ServerError::invalid(FIELD, format!("symlink {} is not UTF-8", path.display()))
            })?)
        } else if kind.is_hard_link() {
            return Err(ServerError::invalid(
                FIELD,
                format!("entry {} is a hard link (not supported)", path.display()),
            ));
        } else {
            return Err(ServerError::invalid(
                FIELD,
                format!(
                    "entry {} is not a file, directory or symlink",
                    path.display()
                ),
            ));
        };
        // Parents are implied; a later entry of the same path replaces an earlier one, as
        // when unpacking.
        for i in 1..at.len() {
            nodes.entry(at[..i].to_vec()).or_insert(Node::Dir);
        }
        nodes.insert(at, node);
    }
    let config_file = match nodes.get(&vec![cairn_core::deployment::CONFIG_FILE.to_string()]) {
        Some(Node::File { data, .. }) => Some(data.clone()),
        _ => None,
    };
    let archive =
        pack(&root, &nodes).map_err(|e| ServerError::io("normalizing the uploaded archive", e))?;
    let digest = crate::crypto::sha256_hex(&archive);
    Ok(Normalized {
        archive,
        digest,
        config_file,
    })
}

fn pack(root: &[String], nodes: &BTreeMap<Vec<String>, Node>) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for i in 1..=root.len() {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut h, root[..i].join("/"), std::io::empty())?;
    }
    for (at, node) in nodes {
        let path = root
            .iter()
            .chain(at.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join("/");
        match node {
            Node::Dir => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                builder.append_data(&mut h, path, std::io::empty())?;
            }
            Node::File { executable, data } => {
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
                builder.append_data(&mut h, path, data.as_slice())?;
            }
            Node::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                builder.append_link(&mut h, path, target)?;
            }
        }
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targz(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            // Header::set_path refuses `..`; write the raw name the way a hostile client would.
            let name = &mut h.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn reason(r: Result<Normalized>) -> String {
        match r {
            Err(ServerError::InvalidArgument { field, reason }) => {
                assert_eq!(field, FIELD);
                reason
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn same_files_give_the_same_digest_under_the_project_root() {
        let a = targz(&[
            ("main.tf", tar::EntryType::Regular, b"x", ""),
            (
                "cairn.toml",
                tar::EntryType::Regular,
                b"[deployments.dev]",
                "",
            ),
        ]);
        let b = targz(&[
            (
                "./cairn.toml",
                tar::EntryType::Regular,
                b"[deployments.dev]",
                "",
            ),
            ("./main.tf", tar::EntryType::Regular, b"x", ""),
        ]);
        let na = normalize(&a, 1 << 20, "infra/net").unwrap();
        let nb = normalize(&b, 1 << 20, "/infra/net/").unwrap();
        assert_eq!(na.digest, nb.digest);
        assert_eq!(na.config_file.as_deref(), Some(&b"[deployments.dev]"[..]));
        let mut names = Vec::new();
        let mut t = tar::Archive::new(GzDecoder::new(na.archive.as_slice()));
        for e in t.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(
            names,
            [
                "infra",
                "infra/net",
                "infra/net/cairn.toml",
                "infra/net/main.tf"
            ]
        );
        let other = targz(&[("main.tf", tar::EntryType::Regular, b"y", "")]);
        assert_ne!(normalize(&other, 1 << 20, "").unwrap().digest, na.digest);
    }

    #[test]
    fn hostile_archives_are_refused_with_the_reason() {
        assert!(reason(normalize(b"plain text", 1 << 20, "")).contains("not gzip"));
        let dots = targz(&[("../evil.tf", tar::EntryType::Regular, b"x", "")]);
        assert!(reason(normalize(&dots, 1 << 20, "")).contains("leaves the tree"));
        let abs = targz(&[("/etc/evil", tar::EntryType::Regular, b"x", "")]);
        assert!(reason(normalize(&abs, 1 << 20, "")).contains("absolute"));
        let out = targz(&[("sub/l", tar::EntryType::Symlink, b"", "../../etc")]);
        assert!(reason(normalize(&out, 1 << 20, "")).contains("points out of the tree"));
        let abs_link = targz(&[("l", tar::EntryType::Symlink, b"", "/etc/passwd")]);
        assert!(reason(normalize(&abs_link, 1 << 20, "")).contains("points out of the tree"));
        let inside = targz(&[("sub/l", tar::EntryType::Symlink, b"", "../main.tf")]);
        assert!(normalize(&inside, 1 << 20, "").is_ok());
        let big = targz(&[("main.tf", tar::EntryType::Regular, &[b'a'; 4096], "")]);
        assert!(reason(normalize(&big, 10, "")).contains("more than the limit"));
        // Compresses under the limit, unpacks far over it.
        let bomb = targz(&[("main.tf", tar::EntryType::Regular, &vec![0u8; 1 << 20], "")]);
        assert!(reason(normalize(&bomb, bomb.len() as u64, "")).contains("unpacks to more"));
        let gz_not_tar = {
            use std::io::Write;
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(&[7u8; 1024]).unwrap();
            e.finish().unwrap()
        };
        assert!(reason(normalize(&gz_not_tar, 1 << 20, "")).contains("not a tar.gz"));
    }
}
