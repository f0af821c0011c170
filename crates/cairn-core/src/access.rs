//! Who is calling and what they may do.

use serde::{Deserialize, Serialize};

/// Roles, each including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An API key's owner and rights. The secret is stored only as a SHA-256 hash: keys are 256-bit
/// random values, so a slow password hash would add latency to every RPC without adding safety.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub login: String,
    pub name: String,
    pub teams: Vec<String>,
    pub machine: bool,
    pub role: Role,
    pub created_at: crate::Nanos,
    pub revoked: bool,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub login: String,
    pub name: String,
    pub teams: Vec<String>,
    pub machine: bool,
    pub role: Role,
}

impl Principal {
    pub fn from_key(k: &ApiKey) -> Principal {
        Principal {
            key_id: k.id.clone(),
            login: k.login.clone(),
            name: k.name.clone(),
            teams: k.teams.clone(),
            machine: k.machine,
            role: k.role,
        }
    }

    /// `user:<login>` or `machine:<login>`, as runs record it in `triggered_by`.
    pub fn trigger_label(&self) -> String {
        let kind = if self.machine { "machine" } else { "user" };
        format!("{kind}:{}", self.login)
    }

    pub fn creator_session(&self, ip: &str) -> crate::CreatorSession {
        crate::CreatorSession {
            admin: self.role == Role::Admin,
            creator_ip: ip.to_string(),
            login: self.login.clone(),
            name: self.name.clone(),
            teams: self.teams.clone(),
            machine: self.machine,
        }
    }
}
