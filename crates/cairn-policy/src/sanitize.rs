//! Spacelift's secret sanitization, exposed to policies as `sanitized(x)`.
//!
//! Spacelift hashes a value with SHA-256 and keeps the last 8 hex characters (its documentation
//! shows `"mysql"` becoming `"eae35047"`). Plan-policy inputs carry sanitized attribute values, so
//! a policy compares them against `sanitized("constant")`.

use sha2::{Digest, Sha256};

/// Sanitizes one string the way Spacelift sanitizes secrets.
pub fn sanitize(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex[hex.len() - 8..].to_string()
}

/// Sanitizes every string inside a JSON document (Spacelift's "default sanitization" of resource
/// attributes). Numbers, booleans and nulls are kept, so policies can still compare them.
pub fn sanitize_strings(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(sanitize(s)),
        Value::Array(items) => Value::Array(items.iter().map(sanitize_strings).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), sanitize_strings(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The `sanitized` extension: strings are hashed as they are; any other value is hashed through
/// its JSON text so that the function is total.
pub(crate) fn sanitized_extension(args: Vec<regorus::Value>) -> anyhow::Result<regorus::Value> {
    let Some(arg) = args.into_iter().next() else {
        anyhow::bail!("sanitized expects one argument");
    };
    let text = match &arg {
        regorus::Value::String(s) => s.to_string(),
        other => other.to_json_str()?,
    };
    Ok(regorus::Value::from(sanitize(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_spacelift_documented_hashes() {
        // Values from Spacelift's resource-sanitization page.
        assert_eq!(sanitize("exampledb"), "59832d41");
        assert_eq!(sanitize("mysql"), "eae35047");
        assert_eq!(sanitize("5.7"), "fc40d152");
        assert_eq!(sanitize("db.t3.micro"), "4f8189cd");
        assert_eq!(sanitize("default.mysql5.7"), "bead1390");
    }

    #[test]
    fn sanitizes_nested_strings_only() {
        let doc = serde_json::json!({"engine": "mysql", "size": 10, "tags": ["5.7"], "on": true});
        assert_eq!(
            sanitize_strings(&doc),
            serde_json::json!({"engine": "eae35047", "size": 10, "tags": ["fc40d152"], "on": true})
        );
    }
}
