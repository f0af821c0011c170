//! The workspace archive carried from plan to apply: tar + gzip of the whole work tree, sealed
//! with AES-256-GCM.
//!
//! Sealed layout: `nonce (12 bytes) || ciphertext || tag (16 bytes)`, with associated data
//! `cairn.workspace.v1:<run id>` so that an archive cannot be replayed into another run even if
//! a key were reused. The control plane only ever sees sealed bytes.

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

const NONCE_LEN: usize = 12;
/// Size of one UploadWorkspace / DownloadWorkspace chunk.
pub(crate) const CHUNK_SIZE: usize = 1 << 20;

fn aad(run_id: &str) -> Vec<u8> {
    format!("cairn.workspace.v1:{run_id}").into_bytes()
}

fn cipher(key: &[u8]) -> Result<Aes256Gcm> {
    if key.len() != 32 {
        return Err(Error::InvalidLease(format!(
            "the workspace key has {} bytes, AES-256 needs 32",
            key.len()
        )));
    }
    Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)))
}

/// Packs every file of `dir` (symlinks kept as links, modes kept) into a gzipped tar.
pub(crate) fn pack(dir: &Path) -> Result<Vec<u8>> {
    let encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .map_err(Error::io(format!("archiving {}", dir.display())))?;
    let encoder = builder
        .into_inner()
        .map_err(Error::io("finishing the workspace archive"))?;
    encoder
        .finish()
        .map_err(Error::io("compressing the workspace archive"))
}

/// Unpacks an archive made by [`pack`] into `dest`.
pub(crate) fn unpack(archive: &[u8], dest: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(GzDecoder::new(archive));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.unpack(dest).map_err(Error::io(format!(
        "restoring the workspace into {}",
        dest.display()
    )))
}

pub(crate) fn seal(key: &[u8], run_id: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let cipher = cipher(key)?;
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad(run_id),
            },
        )
        .map_err(|_| Error::Workspace {
            action: "encryption",
            detail: "AES-GCM refused the archive (too large)".into(),
        })?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

pub(crate) fn open(key: &[u8], run_id: &str, artifact_id: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let cipher = cipher(key)?;
    if sealed.len() < NONCE_LEN + 16 {
        return Err(Error::WorkspaceTampered(artifact_id.to_owned()));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad(run_id),
            },
        )
        .map_err(|_| Error::WorkspaceTampered(artifact_id.to_owned()))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_files_modes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("p/.terraform")).unwrap();
        std::fs::write(src.path().join("p/main.tf"), "resource").unwrap();
        std::fs::write(src.path().join("p/.terraform/provider"), "bin").unwrap();
        std::fs::set_permissions(
            src.path().join("p/.terraform/provider"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("main.tf", src.path().join("p/link.tf")).unwrap();

        let key = [7u8; 32];
        let sealed = seal(&key, "run-1", &pack(src.path()).unwrap()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        unpack(&open(&key, "run-1", "a", &sealed).unwrap(), dest.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.path().join("p/main.tf")).unwrap(),
            "resource"
        );
        let mode = std::fs::metadata(dest.path().join("p/.terraform/provider"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(
            std::fs::read_link(dest.path().join("p/link.tf")).unwrap(),
            Path::new("main.tf")
        );
    }

    #[test]
    fn tampering_wrong_key_and_wrong_run_fail() {
        let key = [1u8; 32];
        let mut sealed = seal(&key, "run-1", b"archive").unwrap();
        assert!(matches!(
            open(&[2u8; 32], "run-1", "a", &sealed),
            Err(Error::WorkspaceTampered(_))
        ));
        assert!(matches!(
            open(&key, "run-2", "a", &sealed),
            Err(Error::WorkspaceTampered(_))
        ));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            open(&key, "run-1", "a", &sealed),
            Err(Error::WorkspaceTampered(_))
        ));
        assert!(matches!(
            seal(&[0u8; 16], "r", b"x"),
            Err(Error::InvalidLease(_))
        ));
    }
}
