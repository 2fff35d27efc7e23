//! Everything the daemon knows about how Claude Code behaves, in one place.
//!
//! These are versioned facts, measured on the pinned Claude Code (see
//! `PINNED_VERSION` and ../shared/claude-code-facts.md). When Claude Code
//! changes a file name, an environment variable, a hook payload or a limit
//! message, this is the only module to edit.

/// The Claude Code release the tests and these facts are pinned to.
pub const PINNED_VERSION: &str = "2.1.329";
/// The npm package that ships it.
pub const NPM_PACKAGE: &str = "@anthropic-ai/claude-code";

/// Environment variable that moves Claude Code's whole config directory.
pub const ENV_CONFIG_DIR: &str = "CLAUDE_CONFIG_DIR";
/// Set on every managed session so its hooks know which session they belong to.
pub const ENV_SESSION: &str = "CLAUDE_FAILOVER_SESSION";
/// Set on every managed session so `hook`/`statusline` know where to write.
pub const ENV_STATE_DIR: &str = "CLAUDE_FAILOVER_STATE_DIR";
/// Points Claude Code at another API server (the stand-in, in tests and demo).
pub const ENV_BASE_URL: &str = "ANTHROPIC_BASE_URL";
/// Needed to run offline against a stand-in: no telemetry, no update checks.
pub const ENV_OFFLINE: [(&str, &str); 2] = [
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
];

/// OAuth credentials inside an account home. Never shared, never refreshed by us.
pub const CREDENTIALS_FILE: &str = ".credentials.json";
/// Onboarding flags and per-folder trust inside an account home.
pub const CLAUDE_JSON: &str = ".claude.json";
/// Hooks and status line inside an account home.
pub const SETTINGS_JSON: &str = "settings.json";

/// `.claude.json`: onboarding is done when this is `true`; without it the TUI
/// tries to reach api.anthropic.com and stops on a connection error.
pub const KEY_ONBOARDING_DONE: &str = "hasCompletedOnboarding";
pub const KEY_ONBOARDING_VERSION: &str = "lastOnboardingVersion";
/// `.claude.json` `projects.<abs path>.hasTrustDialogAccepted`: without it the
/// TUI stops on a trust dialog that swallows pasted text.
pub const KEY_PROJECTS: &str = "projects";
pub const KEY_TRUST_ACCEPTED: &str = "hasTrustDialogAccepted";

/// The folders that must be shared between account homes for `--resume` to
/// work under another account.
pub const REQUIRED_SHARED: [&str; 3] = ["projects", "file-history", "session-env"];

/// The `projects/` folder name Claude Code uses for a working directory:
/// every non-alphanumeric character replaced by `-`.
pub fn transcript_folder_name(cwd: &std::path::Path) -> String {
    cwd.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Where Claude Code keeps conversation `id` started in `cwd` under the
/// account home `home`: `projects/<cwd folder name>/<id>.jsonl`.
pub fn transcript_path(
    home: &std::path::Path,
    cwd: &std::path::Path,
    id: &str,
) -> std::path::PathBuf {
    home.join("projects")
        .join(transcript_folder_name(cwd))
        .join(format!("{id}.jsonl"))
}

/// Transcript line `type`s that are conversation messages. Every other line
/// (`summary`, `file-history-snapshot`, …) is metadata: a transcript made of
/// metadata alone (it exists from a conversation's first request, before
/// any message is written) cannot be resumed (claude-code-facts §6).
pub const TRANSCRIPT_MESSAGE_TYPES: [&str; 2] = ["user", "assistant"];

/// What `claude --resume <id>` prints, before exiting 1, for a conversation
/// it cannot resume.
pub const RESUME_NOT_FOUND: &str = "No conversation found with session ID";

/// Most of a transcript read to find its first message: messages come
/// first, so a file this far without one is taken as metadata only.
const TRANSCRIPT_SCAN_LIMIT: u64 = 64 << 20;

/// Whether the transcript at `path` holds a conversation `--resume` can
/// continue: at least one line whose `type` is a message type and which
/// carries a `message`. A missing or unreadable file holds none.
pub fn transcript_is_resumable(path: &std::path::Path) -> bool {
    use std::io::{BufRead, Read};
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let reader = std::io::BufReader::new(file.take(TRANSCRIPT_SCAN_LIMIT));
    reader.split(b'\n').map_while(Result::ok).any(|line| {
        serde_json::from_slice::<serde_json::Value>(&line).is_ok_and(|v| {
            v.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| TRANSCRIPT_MESSAGE_TYPES.contains(&t))
                && v.get("message").is_some_and(|m| m.is_object())
        })
    })
}

/// Hook events the daemon installs and listens to.
pub const HOOK_EVENTS: [&str; 6] = [
    "SessionStart",
    "UserPromptSubmit",
    "Stop",
    "StopFailure",
    "Notification",
    "SessionEnd",
];

/// `StopFailure.error` for a refused request.
pub const STOP_FAILURE_RATE_LIMIT: &str = "rate_limit";

/// Unified quota headers on every Messages API answer. Utilisation is a
/// fraction 0..1, resets are Unix seconds.
pub mod headers {
    pub const STATUS: &str = "anthropic-ratelimit-unified-status";
    pub const FIVE_HOUR_UTILIZATION: &str = "anthropic-ratelimit-unified-5h-utilization";
    pub const SEVEN_DAY_UTILIZATION: &str = "anthropic-ratelimit-unified-7d-utilization";
    pub const FIVE_HOUR_RESET: &str = "anthropic-ratelimit-unified-5h-reset";
    pub const SEVEN_DAY_RESET: &str = "anthropic-ratelimit-unified-7d-reset";
    pub const REPRESENTATIVE_CLAIM: &str = "anthropic-ratelimit-unified-representative-claim";
    pub const RESET: &str = "anthropic-ratelimit-unified-reset";
}

/// What the TUI prints when the account refuses a request, seen on the pinned
/// version; the first line also arrives as `StopFailure.last_assistant_message`.
pub const LIMIT_TEXT_FIVE_HOUR: &str = "You've hit your 5-hour limit";

/// The kinds of refusal Claude Code reports, told apart because each is
/// handled differently: a window waits for its reset, login and billing need
/// a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    FiveHour,
    Weekly,
    /// A weekly cap on one model (Opus, Sonnet): other models may still work.
    ModelWeekly,
    Login,
    Billing,
}

/// Every known wording of a refusal on the screen or in
/// `StopFailure.last_assistant_message`, newest first, with its kind. Text
/// matching is the last resort: `StopFailure.error` and the quota headers
/// come first. Matched case-insensitively as substrings.
pub const LIMIT_TEXTS: &[(&str, LimitKind)] = &[
    ("you've hit your 5-hour limit", LimitKind::FiveHour),
    ("you've hit your session limit", LimitKind::FiveHour),
    ("5-hour limit reached", LimitKind::FiveHour),
    ("claude ai usage limit reached", LimitKind::FiveHour),
    ("usage limit reached", LimitKind::FiveHour),
    ("opus weekly limit reached", LimitKind::ModelWeekly),
    ("sonnet weekly limit reached", LimitKind::ModelWeekly),
    ("you've hit your opus limit", LimitKind::ModelWeekly),
    ("you've hit your weekly limit", LimitKind::Weekly),
    ("weekly limit reached", LimitKind::Weekly),
    ("invalid api key", LimitKind::Login),
    ("please run /login", LimitKind::Login),
    ("oauth token has expired", LimitKind::Login),
    ("credit balance is too low", LimitKind::Billing),
];

/// `StopFailure.error` values and what they mean.
pub fn stop_failure_kind(error: &str) -> Option<LimitKind> {
    match error {
        "rate_limit" => Some(LimitKind::FiveHour),
        "authentication_failed" => Some(LimitKind::Login),
        "billing_error" => Some(LimitKind::Billing),
        _ => None,
    }
}

/// The refusal a text describes, by [`LIMIT_TEXTS`].
pub fn classify_limit_text(text: &str) -> Option<LimitKind> {
    let lower = text.to_lowercase();
    LIMIT_TEXTS
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map(|(_, k)| *k)
}

/// The usage endpoint's beta header (claude-code-facts §5).
pub const USAGE_BETA_HEADER: (&str, &str) = ("anthropic-beta", "oauth-2025-04-20");

/// The input prompt's mark: drawn when the TUI takes typed input. Text pasted
/// before it appears (right after `SessionStart`) can be lost.
pub const PROMPT_READY_MARK: &str = "❯";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcript_of_metadata_alone_is_not_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-1.jsonl");
        assert!(!transcript_is_resumable(&path), "missing file");
        std::fs::write(
            &path,
            concat!(
                r#"{"type":"file-history-snapshot","messageId":"m","snapshot":{}}"#,
                "\n",
                r#"{"type":"summary","summary":"x","leafUuid":"u"}"#,
                "\n",
                "not json at all\n",
                r#"{"type":"user"}"#,
                "\n",
            ),
        )
        .unwrap();
        assert!(!transcript_is_resumable(&path));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(
            r#"{"type":"user","sessionId":"s-1","message":{"role":"user","content":"hi"}}"#,
        );
        std::fs::write(&path, text).unwrap();
        assert!(transcript_is_resumable(&path), "last line, no newline");
    }
}
