//! Field validation. Every error names the field as the API spells it.

use crate::error::CoreError;

pub fn max_len(field: &str, v: &str, max: usize) -> Result<(), CoreError> {
    if v.len() > max {
        return Err(CoreError::invalid(
            field,
            format!("too long: {} bytes, at most {max}", v.len()),
        ));
    }
    Ok(())
}

pub fn non_empty(field: &str, v: &str, max: usize) -> Result<(), CoreError> {
    if v.trim().is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    max_len(field, v, max)
}

/// Slugs: lowercase ASCII letters, digits and dashes; starts with a letter or digit; 1..=63.
pub fn slug(field: &str, v: &str) -> Result<(), CoreError> {
    if v.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    max_len(field, v, 63)?;
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !v.chars().all(ok_char) || v.starts_with('-') || v.ends_with('-') {
        return Err(CoreError::invalid(
            field,
            format!("{v:?} is not a slug (lowercase letters, digits and inner dashes)"),
        ));
    }
    Ok(())
}

pub fn stack_id(field: &str, v: &str) -> Result<(), CoreError> {
    slug(field, v)
}

/// Run ids are 32 lowercase hex digits (UUIDv7, simple form).
pub fn run_id(field: &str, v: &str) -> Result<(), CoreError> {
    if v.len() != 32
        || !v
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err(CoreError::invalid(
            field,
            format!("{v:?} is not a run id (32 lowercase hex digits)"),
        ));
    }
    Ok(())
}

/// Git branch names, after `git check-ref-format --branch`'s main rules.
pub fn branch(field: &str, v: &str) -> Result<(), CoreError> {
    non_empty(field, v, 255)?;
    let bad = v.starts_with('-')
        || v.starts_with('/')
        || v.ends_with('/')
        || v.ends_with('.')
        || v.ends_with(".lock")
        || v.contains("..")
        || v.contains("//")
        || v.contains("@{")
        || v.chars()
            .any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c));
    if bad {
        return Err(CoreError::invalid(
            field,
            format!("{v:?} is not a valid Git branch name"),
        ));
    }
    Ok(())
}

/// Project roots are relative paths inside the repository; empty means the root.
pub fn project_root(field: &str, v: &str) -> Result<(), CoreError> {
    max_len(field, v, 1024)?;
    if v.starts_with('/') {
        return Err(CoreError::invalid(
            field,
            "must be relative to the repository root",
        ));
    }
    if v.split('/').any(|seg| seg == "..") {
        return Err(CoreError::invalid(field, "must stay inside the repository"));
    }
    if v.contains('\0') {
        return Err(CoreError::invalid(field, "must not contain NUL"));
    }
    Ok(())
}

/// Vendors name a runner plugin (`cairn-runner-<vendor>`): a slug.
pub fn vendor(field: &str, v: &str) -> Result<(), CoreError> {
    slug(field, v)
}

pub fn glob(field: &str, v: &str) -> Result<(), CoreError> {
    non_empty(field, v, 1024)?;
    globset::Glob::new(v)
        .map(|_| ())
        .map_err(|e| CoreError::invalid(field, e.kind().to_string()))
}

/// Environment variable names: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_name(field: &str, v: &str) -> Result<(), CoreError> {
    non_empty(field, v, 256)?;
    let mut chars = v.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(CoreError::invalid(
            field,
            format!("{v:?} is not a valid environment variable name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(slug("f", "a").is_ok());
        assert!(slug("f", "net-prod-2").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a b", &"a".repeat(64)] {
            assert!(slug("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_ids() {
        assert!(run_id("run_id", &crate::ids::new_run_id()).is_ok());
        assert!(run_id("run_id", "nope").is_err());
    }

    #[test]
    fn env_names() {
        assert!(env_name("f", "TF_VAR_x").is_ok());
        assert!(env_name("f", "1X").is_err());
        assert!(env_name("f", "A-B").is_err());
    }
}
