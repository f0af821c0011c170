/// Replaces secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    // Longest first, so that a secret containing another one is masked whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    /// The secret values, longest first.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Redacts every string (object keys included) of a JSON document in place; redacting the
    /// serialized text instead could break it when a secret contains JSON escapes.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s)
                if self
                    .secrets
                    .iter()
                    .any(|secret| s.contains(secret.as_str())) =>
            {
                *s = self.redact(s);
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut child) in entries {
                    self.redact_json(&mut child);
                    map.insert(self.redact(&key), child);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Redactor;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let r = Redactor::new(["abc", "abcdef", ""]);
        assert_eq!(r.redact("x abcdef y abc z"), "x *** y *** z");
        assert_eq!(r.redact("nothing"), "nothing");
    }

    #[test]
    fn json_strings_and_keys_are_masked() {
        let r = Redactor::new(["se\"cret"]);
        let mut doc = serde_json::json!({"a": ["x se\"cret y", 1], "se\"cret": true});
        r.redact_json(&mut doc);
        assert_eq!(doc, serde_json::json!({"a": ["x *** y", 1], "***": true}));
    }
}
