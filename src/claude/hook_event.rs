//! Pure: the hook payloads Claude Code sends, as a typed enum.
//!
//! A payload is parsed once, where it enters the daemon (the event socket,
//! or the replay of an event file): every role after that matches on
//! [`HookEvent`] and never on a field name. The payload's names and values
//! (claude-code-facts §1) are spelled here and nowhere else.

use std::path::PathBuf;

/// What one hook (or status-line) event says, common fields included.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hook {
    /// The conversation (`session_id`).
    pub conversation: Option<String>,
    /// The conversation's transcript (`transcript_path`).
    pub transcript: Option<PathBuf>,
    pub event: HookEvent,
}

/// The events claude-failover reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum HookEvent {
    /// A conversation starts: a launch, a `--resume`, a `/clear`.
    SessionStart {
        source: StartSource,
    },
    /// A tool call of the turn ended (`tool_name`).
    PostToolUse {
        tool: String,
    },
    /// A prompt was submitted (a long paste arrives wrapped in
    /// `<pasted_content>`; `claude::facts::same_prompt` sees through that).
    UserPromptSubmit {
        prompt: String,
    },
    /// A turn ended with an answer (empty when the answer had no text).
    Stop {
        answer: Option<String>,
    },
    /// A turn ended in an API error (`rate_limit` for a refused request).
    StopFailure {
        error: String,
        message: String,
    },
    Notification {
        kind: NotificationKind,
    },
    /// The process is ending, or `/clear` starts a new conversation.
    SessionEnd,
    /// A status-line call: its payload carries the quota reading.
    Statusline,
    /// A hook name we install no handler for (empty: none at all).
    Other(String),
}

/// `SessionStart`'s `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartSource {
    Startup,
    Resume,
    Clear,
    /// `compact`, or a source this version does not know.
    Other(String),
}

/// `Notification`'s `notification_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationKind {
    /// Claude Code asks the person at the keyboard for a permission.
    PermissionPrompt,
    /// Claude Code waits for input.
    IdlePrompt,
    Other(String),
}

impl Default for HookEvent {
    fn default() -> HookEvent {
        HookEvent::Other(String::new())
    }
}

impl HookEvent {
    /// The hook's name as Claude Code spells it (for logs).
    pub fn name(&self) -> &str {
        match self {
            HookEvent::SessionStart { .. } => "SessionStart",
            HookEvent::UserPromptSubmit { .. } => "UserPromptSubmit",
            HookEvent::PostToolUse { .. } => "PostToolUse",
            HookEvent::Stop { .. } => "Stop",
            HookEvent::StopFailure { .. } => "StopFailure",
            HookEvent::Notification { .. } => "Notification",
            HookEvent::SessionEnd => "SessionEnd",
            HookEvent::Statusline => "statusline",
            HookEvent::Other(name) => name,
        }
    }

    /// A `Stop` or a `StopFailure`: a turn's end, which the event socket
    /// checks against the transcript.
    pub fn ends_a_turn(&self) -> bool {
        matches!(self, HookEvent::Stop { .. } | HookEvent::StopFailure { .. })
    }
}

/// Parses what `claude-failover hook` (kind `hook`) or `statusline` (kind
/// `statusline`) recorded.
pub fn parse(kind: &str, payload: &serde_json::Value) -> Hook {
    let s = |key: &str| payload.get(key).and_then(|v| v.as_str());
    let conversation = s("session_id").map(String::from);
    let transcript = s("transcript_path").map(PathBuf::from);
    let event = if kind == "statusline" {
        HookEvent::Statusline
    } else {
        match s("hook_event_name").unwrap_or("") {
            "SessionStart" => HookEvent::SessionStart {
                source: match s("source").unwrap_or("") {
                    "startup" => StartSource::Startup,
                    "resume" => StartSource::Resume,
                    "clear" => StartSource::Clear,
                    other => StartSource::Other(other.to_string()),
                },
            },
            "UserPromptSubmit" => HookEvent::UserPromptSubmit {
                prompt: s("prompt").unwrap_or("").to_string(),
            },
            "PostToolUse" | "PostToolUseFailure" => HookEvent::PostToolUse {
                tool: s("tool_name").unwrap_or("").to_string(),
            },
            "Stop" => HookEvent::Stop {
                answer: s("last_assistant_message").map(String::from),
            },
            "StopFailure" => HookEvent::StopFailure {
                error: s("error").unwrap_or("unknown").to_string(),
                message: s("last_assistant_message").unwrap_or("").to_string(),
            },
            "Notification" => HookEvent::Notification {
                kind: match s("notification_type").unwrap_or("") {
                    "permission_prompt" => NotificationKind::PermissionPrompt,
                    "idle_prompt" => NotificationKind::IdlePrompt,
                    other => NotificationKind::Other(other.to_string()),
                },
            },
            "SessionEnd" => HookEvent::SessionEnd,
            other => HookEvent::Other(other.to_string()),
        }
    };
    Hook {
        conversation,
        transcript,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_hook_we_install_parses_to_its_variant() {
        let cases = [
            (
                json!({"hook_event_name": "SessionStart", "source": "resume", "session_id": "c1", "transcript_path": "/t/c1.jsonl"}),
                HookEvent::SessionStart {
                    source: StartSource::Resume,
                },
            ),
            (
                json!({"hook_event_name": "UserPromptSubmit", "prompt": "hi"}),
                HookEvent::UserPromptSubmit {
                    prompt: "hi".into(),
                },
            ),
            (
                json!({"hook_event_name": "Stop", "last_assistant_message": "done"}),
                HookEvent::Stop {
                    answer: Some("done".into()),
                },
            ),
            (
                json!({"hook_event_name": "StopFailure", "error": "rate_limit"}),
                HookEvent::StopFailure {
                    error: "rate_limit".into(),
                    message: String::new(),
                },
            ),
            (
                json!({"hook_event_name": "Notification", "notification_type": "permission_prompt"}),
                HookEvent::Notification {
                    kind: NotificationKind::PermissionPrompt,
                },
            ),
            (
                json!({"hook_event_name": "SessionEnd"}),
                HookEvent::SessionEnd,
            ),
            (
                json!({"hook_event_name": "PreCompact"}),
                HookEvent::Other("PreCompact".into()),
            ),
            (json!("not json"), HookEvent::Other(String::new())),
        ];
        for (payload, want) in cases {
            assert_eq!(parse("hook", &payload).event, want, "{payload}");
        }
        let h = parse(
            "hook",
            &json!({"hook_event_name": "SessionStart", "source": "compact", "session_id": "c1", "transcript_path": "/t/c1.jsonl"}),
        );
        assert_eq!(h.conversation.as_deref(), Some("c1"));
        assert_eq!(h.transcript, Some(PathBuf::from("/t/c1.jsonl")));
        assert_eq!(
            h.event,
            HookEvent::SessionStart {
                source: StartSource::Other("compact".into())
            }
        );
    }

    #[test]
    fn a_status_line_call_is_a_reading_whatever_its_payload_says() {
        let h = parse("statusline", &json!({"hook_event_name": "Stop"}));
        assert_eq!(h.event, HookEvent::Statusline);
    }

    #[test]
    fn a_stop_failure_without_an_error_field_is_unknown_not_a_refusal() {
        let h = parse("hook", &json!({"hook_event_name": "StopFailure"}));
        assert_eq!(
            h.event,
            HookEvent::StopFailure {
                error: "unknown".into(),
                message: String::new()
            }
        );
    }
}
