//! Tenants and bearer tokens.
//!
//! The tenant of a request comes from `X-Scope-OrgID`, or is `default` when absent. A tenant id
//! is 1 to 150 bytes of `[A-Za-z0-9!_.*'()-]` (Cortex's safe set), so it can appear in paths
//! and labels unescaped.
//!
//! With `--tokens-file`, every request needs `Authorization: Bearer TOKEN`. The file holds one
//! grant per line, `TOKEN TENANT ROLE`, separated by whitespace; blank lines and lines starting
//! with `#` are ignored. ROLE is `write` (remote-write only), `read` (queries and reports
//! only) or `admin` (the admin API only): roles do not imply one another. TENANT `*` lets the
//! token act for any tenant named by `X-Scope-OrgID` (and `default` without it). Rules:
//! missing or unknown token → 401; a valid token used for another role, or with an
//! `X-Scope-OrgID` naming a tenant other than its own → 403. All nodes of a cluster share
//! the file for now.

use std::collections::BTreeMap;

use sextant_core::series::DEFAULT_TENANT;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Write,
    Read,
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "write" => Some(Role::Write),
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Write => "write",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// One token's grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// A tenant id, or `*` for any.
    pub tenant: String,
    pub role: Role,
}

/// The parsed tokens file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    grants: BTreeMap<String, Grant>,
}

/// Why a request was not authorized, or named an invalid tenant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (Authorization: Bearer TOKEN)")]
    MissingToken,
    #[error("unknown bearer token")]
    UnknownToken,
    #[error("token has role {has}, this endpoint needs role {needs}")]
    WrongRole { has: &'static str, needs: &'static str },
    #[error("token belongs to tenant {token_tenant:?}, request names tenant {requested:?}")]
    WrongTenant { token_tenant: String, requested: String },
    #[error("invalid tenant id {tenant:?} in X-Scope-OrgID: 1 to 150 bytes of A-Z a-z 0-9 ! _ . * ' ( ) -")]
    InvalidTenant { tenant: String },
}

impl AuthError {
    /// 401, 403 or 400.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::MissingToken | AuthError::UnknownToken => 401,
            AuthError::WrongRole { .. } | AuthError::WrongTenant { .. } => 403,
            AuthError::InvalidTenant { .. } => 400,
        }
    }
}

/// Most bytes in a tenant id.
pub const TENANT_BYTES_MAX: usize = 150;

/// Checks a tenant id against the documented character set.
pub fn validate_tenant(tenant: &str) -> Result<(), AuthError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= TENANT_BYTES_MAX
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b"!_.*'()-".contains(&b))
        && tenant != "."
        && tenant != "..";
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidTenant { tenant: tenant.chars().take(160).collect() })
    }
}

impl Tokens {
    /// Parses the file's text. Errors name the line.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut grants = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, tenant, role] = fields.as_slice() else {
                return Err(format!("tokens file line {line_number}: expected `TOKEN TENANT ROLE`, found {} fields", fields.len()));
            };
            let role = Role::parse(role).ok_or_else(|| format!("tokens file line {line_number}: role {role:?} is not write, read or admin"))?;
            if *tenant != "*" {
                validate_tenant(tenant).map_err(|e| format!("tokens file line {line_number}: {e}"))?;
            }
            if grants.insert(token.to_string(), Grant { tenant: tenant.to_string(), role }).is_some() {
                return Err(format!("tokens file line {line_number}: token listed twice"));
            }
        }
        if grants.is_empty() {
            return Err("tokens file holds no tokens".into());
        }
        Ok(Tokens { grants })
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

/// Decides a request's tenant. `authorization` and `org_id` are the raw header values.
pub fn authorize(tokens: Option<&Tokens>, authorization: Option<&str>, org_id: Option<&str>, needs: Role) -> Result<String, AuthError> {
    let requested = match org_id {
        Some(tenant) => {
            let tenant = tenant.trim();
            validate_tenant(tenant)?;
            Some(tenant)
        }
        None => None,
    };
    let Some(tokens) = tokens else {
        return Ok(requested.unwrap_or(DEFAULT_TENANT).to_string());
    };
    let token = authorization
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::MissingToken)?;
    let grant = tokens.grants.get(token).ok_or(AuthError::UnknownToken)?;
    if grant.role != needs {
        return Err(AuthError::WrongRole { has: grant.role.as_str(), needs: needs.as_str() });
    }
    match (grant.tenant.as_str(), requested) {
        ("*", requested) => Ok(requested.unwrap_or(DEFAULT_TENANT).to_string()),
        (own, None) => Ok(own.to_string()),
        (own, Some(requested)) if own == requested => Ok(own.to_string()),
        (own, Some(requested)) => Err(AuthError::WrongTenant { token_tenant: own.to_string(), requested: requested.to_string() }),
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // case tables
mod tests {
    use super::*;

    // Goal: the 401/403/400 rules of the issue, and tenant selection. Method: one table.
    #[test]
    fn authorization_table() {
        let tokens = Tokens::parse("# comment\n\nw1 team-a write\nr1 team-a read\nadm * admin\nany * write\n").unwrap();
        assert_eq!(tokens.len(), 4);
        let t = Some(&tokens);
        let cases: Vec<(&str, Option<&Tokens>, Option<&str>, Option<&str>, Role, Result<&str, u16>)> = vec![
            ("no tokens, no header", None, None, None, Role::Write, Ok("default")),
            ("no tokens, header", None, None, Some("acme"), Role::Write, Ok("acme")),
            ("no tokens, bad tenant", None, None, Some("a/b"), Role::Write, Err(400)),
            ("missing token", t, None, None, Role::Write, Err(401)),
            ("unknown token", t, Some("Bearer nope"), None, Role::Write, Err(401)),
            ("not bearer", t, Some("Basic w1"), None, Role::Write, Err(401)),
            ("own tenant implied", t, Some("Bearer w1"), None, Role::Write, Ok("team-a")),
            ("own tenant named", t, Some("Bearer w1"), Some("team-a"), Role::Write, Ok("team-a")),
            ("other tenant", t, Some("Bearer w1"), Some("team-b"), Role::Write, Err(403)),
            ("read token writing", t, Some("Bearer r1"), None, Role::Write, Err(403)),
            ("write token reading", t, Some("Bearer w1"), None, Role::Read, Err(403)),
            ("admin token writing", t, Some("Bearer adm"), None, Role::Write, Err(403)),
            ("wildcard tenant", t, Some("Bearer any"), Some("team-z"), Role::Write, Ok("team-z")),
            ("wildcard default", t, Some("Bearer any"), None, Role::Write, Ok("default")),
        ];
        for (name, tokens, authorization, org, role, expected) in cases {
            let got = authorize(tokens, authorization, org, role).map_err(|e| e.status());
            assert_eq!(got.as_deref().map_err(|c| *c), expected, "{name}");
        }
    }

    // Goal: malformed token files are refused with the line number.
    #[test]
    fn tokens_file_errors() {
        for (text, needle) in [("a b", "line 1"), ("\nt x superuser", "line 2"), ("t a/b write", "line 1"), ("t a write\nt a read", "twice"), ("# only comments", "no tokens")] {
            let error = Tokens::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }
}
