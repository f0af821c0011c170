//! Encrypted workspace archives kept between plan and apply, and the wrapped data keys.
//!
//! Layout under the artifact directory: `<artifact id>.bin` (the archive exactly as the agent
//! encrypted it), `<artifact id>.sha256`, and `<run id>.key` (the run's data key wrapped by the
//! master key, bound to the run id). The server never sees a workspace in clear.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::crypto::{random_bytes, MasterKey};
use crate::error::{Result, ServerError};

/// Archives larger than this are refused (a workspace with providers is tens of MiB).
pub const MAX_ARTIFACT_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

/// An archive being received.
pub struct Upload {
    tmp: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub artifact_id: String,
    pub sha256: String,
    pub size: u64,
}

/// The artifact a plan lease of an uploaded configuration restores (one per run: each lease
/// re-seals it with its own data key).
pub fn source_artifact_id(run_id: &str) -> String {
    format!("src_{run_id}")
}

fn upload_aad(digest: &str) -> String {
    format!("cairn.upload.v1:{digest}")
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ArtifactStore {
    pub fn open(dir: &Path) -> Result<ArtifactStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ServerError::io(format!("creating {}", dir.display()), e))?;
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str, ext: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(ServerError::invalid("artifact_id", "malformed"));
        }
        Ok(self.dir.join(format!("{id}.{ext}")))
    }

    pub async fn begin(&self) -> Result<Upload> {
        let tmp = self
            .dir
            .join(format!("{}.part", cairn_core::ids::new_id("upload")));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ServerError::io(format!("creating {}", tmp.display()), e))?;
        Ok(Upload {
            tmp,
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Moves a complete upload in place under a new artifact id.
    pub async fn commit(&self, mut up: Upload) -> Result<Stored> {
        let io = |e| ServerError::io("storing workspace archive", e);
        up.file.flush().await.map_err(io)?;
        up.file.sync_all().await.map_err(io)?;
        drop(up.file);
        let artifact_id = cairn_core::ids::new_id("art");
        let sha256 = hex::encode(up.hasher.finalize());
        tokio::fs::write(self.path(&artifact_id, "sha256")?, &sha256)
            .await
            .map_err(io)?;
        tokio::fs::rename(&up.tmp, self.path(&artifact_id, "bin")?)
            .await
            .map_err(io)?;
        Ok(Stored {
            artifact_id,
            sha256,
            size: up.size,
        })
    }

    pub async fn open_read(&self, artifact_id: &str) -> Result<(tokio::fs::File, String)> {
        let not_found = || ServerError::NotFound {
            kind: "artifact",
            id: artifact_id.to_string(),
        };
        let sha = tokio::fs::read_to_string(self.path(artifact_id, "sha256")?)
            .await
            .map_err(|_| not_found())?;
        let f = tokio::fs::File::open(self.path(artifact_id, "bin")?)
            .await
            .map_err(|_| not_found())?;
        Ok((f, sha.trim().to_string()))
    }

    pub async fn delete(&self, artifact_id: &str) {
        for ext in ["bin", "sha256"] {
            if let Ok(p) = self.path(artifact_id, ext) {
                let _ = tokio::fs::remove_file(p).await;
            }
        }
    }

    /// A fresh data key for a run's next plan, stored wrapped; returns the plaintext for the
    /// lease.
    pub async fn new_data_key(&self, master: &MasterKey, run_id: &str) -> Result<Vec<u8>> {
        let key = random_bytes::<32>().to_vec();
        let wrapped = master.wrap(&key, run_id.as_bytes())?;
        tokio::fs::write(self.path(run_id, "key")?, wrapped)
            .await
            .map_err(|e| ServerError::io("storing a wrapped data key", e))?;
        Ok(key)
    }

    /// The run's data key, for the apply lease; `None` when the run has none (any more).
    pub async fn data_key(&self, master: &MasterKey, run_id: &str) -> Result<Option<Vec<u8>>> {
        let wrapped = match tokio::fs::read(self.path(run_id, "key")?).await {
            Ok(wrapped) => wrapped,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ServerError::io("reading a wrapped data key", e)),
        };
        master.unwrap(&wrapped, run_id.as_bytes()).map(Some)
    }

    /// Keeps a normalized uploaded configuration, sealed by the master key, under its digest.
    pub async fn store_upload(
        &self,
        master: &MasterKey,
        digest: &str,
        archive: &[u8],
    ) -> Result<()> {
        let sealed = master.wrap(archive, upload_aad(digest).as_bytes())?;
        let path = self.path(&format!("upload_{digest}"), "sealed")?;
        let tmp = self.path(&format!("upload_{digest}"), "part")?;
        let io = |e| ServerError::io("storing an uploaded configuration", e);
        tokio::fs::write(&tmp, sealed).await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)
    }

    /// Seals the uploaded configuration `digest` for one plan lease of `run_id` (with the data
    /// key of that lease) and stores it as the run's source artifact.
    pub async fn seal_upload_for_run(
        &self,
        master: &MasterKey,
        digest: &str,
        run_id: &str,
        data_key: &[u8],
    ) -> Result<String> {
        let sealed = tokio::fs::read(self.path(&format!("upload_{digest}"), "sealed")?)
            .await
            .map_err(|_| {
                ServerError::precondition(format!("uploaded configuration {digest} is not stored"))
            })?;
        let plain = master.unwrap(&sealed, upload_aad(digest).as_bytes())?;
        let for_run = crate::crypto::seal_workspace(data_key, run_id, &plain)?;
        let id = source_artifact_id(run_id);
        let io = |e| ServerError::io("storing a run's source archive", e);
        tokio::fs::write(
            self.path(&id, "sha256")?,
            crate::crypto::sha256_hex(&for_run),
        )
        .await
        .map_err(io)?;
        tokio::fs::write(self.path(&id, "bin")?, for_run)
            .await
            .map_err(io)?;
        Ok(id)
    }

    /// Removes a run's workspace (discard, after apply, after a failure).
    pub async fn delete_run(&self, run_id: &str, artifact_id: &str) {
        if !artifact_id.is_empty() {
            self.delete(artifact_id).await;
        }
        self.delete(&source_artifact_id(run_id)).await;
        if let Ok(p) = self.path(run_id, "key") {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.size += chunk.len() as u64;
        if self.size > MAX_ARTIFACT_BYTES {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(ServerError::invalid(
                "chunk",
                format!("workspace archive larger than {MAX_ARTIFACT_BYTES} bytes"),
            ));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ServerError::io("writing workspace archive", e))
    }

    /// Drops a partial upload.
    pub async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}
