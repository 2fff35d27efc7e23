//! What the daemon may know about an account home without changing it: its
//! OAuth credentials (read fresh every time, never refreshed: refresh tokens
//! are single-use and belong to Claude Code), its onboarding flag and which
//! folders it trusts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::claude::facts;

/// The parts of `.credentials.json` the daemon uses.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_token: String,
    /// Milliseconds since the epoch, as Claude Code writes it.
    pub expires_at_ms: Option<u64>,
    pub scopes: Vec<String>,
    /// Claude Code can renew an expired access token itself with it.
    pub has_refresh_token: bool,
    /// The file's permission bits.
    pub mode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path} is missing")]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid credentials JSON: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

impl Credentials {
    pub fn path(home: &Path) -> PathBuf {
        home.join(facts::CREDENTIALS_FILE)
    }

    /// Reads the account's credentials file as it is on disk now.
    pub fn read(home: &Path) -> Result<Credentials, CredentialsError> {
        let path = Credentials::path(home);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CredentialsError::Missing { path })
            }
            Err(source) => return Err(CredentialsError::Unreadable { path, source }),
        };
        let text =
            std::fs::read_to_string(&path).map_err(|source| CredentialsError::Unreadable {
                path: path.clone(),
                source,
            })?;
        let malformed = |reason: &str| CredentialsError::Malformed {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let json: Value = serde_json::from_str(&text).map_err(|e| malformed(&e.to_string()))?;
        let oauth = json
            .get("claudeAiOauth")
            .ok_or_else(|| malformed("no claudeAiOauth object"))?;
        let access_token = oauth
            .get("accessToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| malformed("no claudeAiOauth.accessToken"))?
            .to_string();
        let expires_at_ms = oauth.get("expiresAt").and_then(Value::as_u64);
        let scopes = oauth
            .get("scopes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let has_refresh_token = oauth
            .get("refreshToken")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        Ok(Credentials {
            has_refresh_token,
            access_token,
            expires_at_ms,
            scopes,
            mode: meta.permissions().mode() & 0o777,
        })
    }

    /// True when group or others may read the file.
    pub fn too_open(&self) -> bool {
        self.mode & 0o077 != 0
    }

    /// True when the access token's expiry has passed at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        matches!(self.expires_at_ms, Some(t) if t <= now_ms)
    }
}

/// The parts of `.claude.json` the daemon uses.
#[derive(Debug, Clone, Default)]
pub struct ClaudeJson {
    pub onboarding_done: bool,
    /// Absolute folders with the trust dialog accepted.
    pub trusted: Vec<PathBuf>,
}

impl ClaudeJson {
    pub fn path(home: &Path) -> PathBuf {
        home.join(facts::CLAUDE_JSON)
    }

    /// Reads `.claude.json`; a missing file reads as "nothing done yet".
    pub fn read(home: &Path) -> Result<ClaudeJson, String> {
        let path = ClaudeJson::path(home);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClaudeJson::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
        let onboarding_done = json
            .get(facts::KEY_ONBOARDING_DONE)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let trusted = json
            .get(facts::KEY_PROJECTS)
            .and_then(Value::as_object)
            .map(|projects| {
                projects
                    .iter()
                    .filter(|(_, v)| {
                        v.get(facts::KEY_TRUST_ACCEPTED).and_then(Value::as_bool) == Some(true)
                    })
                    .map(|(k, _)| PathBuf::from(k))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ClaudeJson {
            onboarding_done,
            trusted,
        })
    }

    /// Claude Code accepts trust given to a folder for every folder below it.
    pub fn trusts(&self, folder: &Path) -> bool {
        self.trusted.iter().any(|t| folder.starts_with(t))
    }
}
