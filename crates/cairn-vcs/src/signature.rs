//! Webhook authentication: GitHub signs the raw body with HMAC-SHA256
//! (`X-Hub-Signature-256: sha256=<hex>`); GitLab sends the shared secret itself
//! (`X-Gitlab-Token`). Both comparisons are constant-time so response timing does not reveal
//! how much of a forged value was right.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Result, VcsError};

pub const GITHUB_SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
pub const GITLAB_TOKEN_HEADER: &str = "X-Gitlab-Token";

const SHA256_PREFIX: &str = "sha256=";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// The `X-Hub-Signature-256` value GitHub sends for `body` signed with `secret`.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(body);
    format!("{SHA256_PREFIX}{}", hex::encode(m.finalize().into_bytes()))
}

/// Verifies a GitHub delivery: `header` is the `X-Hub-Signature-256` value (None when absent),
/// `body` the raw request body exactly as received.
pub fn verify_github_signature(secret: &[u8], header: Option<&str>, body: &[u8]) -> Result<()> {
    if secret.is_empty() {
        return Err(VcsError::EmptySecret);
    }
    let value = header.ok_or(VcsError::MissingSignature {
        header: GITHUB_SIGNATURE_HEADER,
    })?;
    let bad = |reason: &str| VcsError::BadSignature {
        header: GITHUB_SIGNATURE_HEADER,
        reason: reason.to_string(),
    };
    let hex_digest = value
        .trim()
        .strip_prefix(SHA256_PREFIX)
        .ok_or_else(|| bad("expected a value of the form sha256=<hex>"))?;
    let digest = hex::decode(hex_digest).map_err(|_| bad("digest is not hexadecimal"))?;
    if digest.len() != 32 {
        return Err(bad("digest is not 32 bytes long"));
    }
    let mut m = mac(secret);
    m.update(body);
    // `verify_slice` compares in constant time.
    m.verify_slice(&digest)
        .map_err(|_| bad("digest does not match the body"))
}

/// Verifies a GitLab delivery: `header` is the `X-Gitlab-Token` value (None when absent).
pub fn verify_gitlab_token(secret: &[u8], header: Option<&str>) -> Result<()> {
    if secret.is_empty() {
        return Err(VcsError::EmptySecret);
    }
    let token = header.ok_or(VcsError::MissingSignature {
        header: GITLAB_TOKEN_HEADER,
    })?;
    // Comparing digests rather than the raw values keeps the comparison constant-time even
    // when the lengths differ (a length mismatch would otherwise return early).
    let expected = Sha256::digest(secret);
    let got = Sha256::digest(token.as_bytes());
    if bool::from(expected.ct_eq(&got)) {
        Ok(())
    } else {
        Err(VcsError::BadSignature {
            header: GITLAB_TOKEN_HEADER,
            reason: "token does not match the configured secret".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_example() {
        // The example from GitHub's "Validating webhook deliveries" page.
        let sig = github_signature(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            sig,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        verify_github_signature(b"It's a Secret to Everybody", Some(&sig), b"Hello, World!")
            .expect("valid");
    }

    #[test]
    fn github_errors_are_distinct() {
        let s = b"secret";
        assert!(matches!(
            verify_github_signature(s, None, b"{}"),
            Err(VcsError::MissingSignature { .. })
        ));
        for bad in ["sha1=00", "sha256=zz", "sha256=abcd", "garbage"] {
            assert!(
                matches!(
                    verify_github_signature(s, Some(bad), b"{}"),
                    Err(VcsError::BadSignature { .. })
                ),
                "{bad}"
            );
        }
        let other = github_signature(b"other", b"{}");
        assert!(matches!(
            verify_github_signature(s, Some(&other), b"{}"),
            Err(VcsError::BadSignature { .. })
        ));
        assert!(matches!(
            verify_github_signature(b"", Some(&other), b"{}"),
            Err(VcsError::EmptySecret)
        ));
    }

    #[test]
    fn gitlab_token() {
        verify_gitlab_token(b"tok", Some("tok")).expect("valid");
        assert!(matches!(
            verify_gitlab_token(b"tok", Some("tok2")),
            Err(VcsError::BadSignature { .. })
        ));
        assert!(matches!(
            verify_gitlab_token(b"tok", Some("")),
            Err(VcsError::BadSignature { .. })
        ));
        assert!(matches!(
            verify_gitlab_token(b"tok", None),
            Err(VcsError::MissingSignature { .. })
        ));
        assert!(matches!(
            verify_gitlab_token(b"", Some("")),
            Err(VcsError::EmptySecret)
        ));
    }
}
