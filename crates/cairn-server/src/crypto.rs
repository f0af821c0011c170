//! Secrets: token generation and hashing, the master key, and data-key wrapping.
//!
//! Each run's workspace archive is encrypted by the agent with a per-run 256-bit data key. The
//! server keeps that key only wrapped (AES-256-GCM) by a master key that never leaves the data
//! directory, and hands the plaintext key to the agent inside the lease, over the authenticated
//! session stream.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Result, ServerError};

/// Seals `plain` with a run's data key exactly as the agent seals a plan's workspace
/// (`cairn-agent` workspace.rs: nonce ‖ ciphertext ‖ tag, associated data
/// `cairn.workspace.v1:<run id>`), so that the agent restores it like one.
pub fn seal_workspace(data_key: &[u8], run_id: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let cipher = Aes256Gcm::new_from_slice(data_key)
        .map_err(|_| ServerError::Crypto("a data key must have 32 bytes".into()))?;
    let nonce = random_bytes::<NONCE_LEN>();
    let aad = format!("cairn.workspace.v1:{run_id}");
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            aes_gcm::aead::Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| ServerError::Crypto("sealing a workspace archive failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Hex SHA-256, the form in which API keys and pool tokens are stored.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A new 256-bit secret, hex encoded, with a readable prefix (`cairn_…`, `cairnpool_…`).
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(random_bytes::<32>()))
}

/// Writes a secret to a new file readable by its owner only. Never overwrites: an existing file
/// may be the only copy of a key.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ServerError::io(format!("creating {}", dir.display()), e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| ServerError::io(format!("creating {}", path.display()), e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| ServerError::io(format!("writing {}", path.display()), e))
}

/// The server's master key.
#[derive(Clone)]
pub struct MasterKey(Key<Aes256Gcm>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

const NONCE_LEN: usize = 12;

impl MasterKey {
    /// Reads the hex key at `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<MasterKey> {
        if !path.exists() {
            write_secret_file(path, hex::encode(random_bytes::<32>()).as_bytes())?;
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::io(format!("reading {}", path.display()), e))?;
        let bytes = hex::decode(text.trim())
            .map_err(|_| ServerError::Crypto(format!("{} is not hex", path.display())))?;
        if bytes.len() != 32 {
            return Err(ServerError::Crypto(format!(
                "{} must hold 32 bytes, has {}",
                path.display(),
                bytes.len()
            )));
        }
        Ok(MasterKey(*Key::<Aes256Gcm>::from_slice(&bytes)))
    }

    /// Encrypts a data key: nonce ‖ ciphertext ‖ tag. `aad` binds it to its run.
    pub fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let nonce = random_bytes::<NONCE_LEN>();
        let ct = Aes256Gcm::new(&self.0)
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload { msg: data_key, aad },
            )
            .map_err(|_| ServerError::Crypto("wrapping a data key failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        if wrapped.len() < NONCE_LEN {
            return Err(ServerError::Crypto("wrapped key too short".into()));
        }
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        Aes256Gcm::new(&self.0)
            .decrypt(
                Nonce::from_slice(nonce),
                aes_gcm::aead::Payload { msg: ct, aad },
            )
            .map_err(|_| ServerError::Crypto("unwrapping a data key failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_binds_to_its_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let k = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        let data = random_bytes::<32>();
        let w = k.wrap(&data, b"run-1").unwrap();
        assert_eq!(again.unwrap(&w, b"run-1").unwrap(), data);
        assert!(k.unwrap(&w, b"run-2").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn secret_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_secret_file(&path, b"one").unwrap();
        assert!(write_secret_file(&path, b"two").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
    }
}
