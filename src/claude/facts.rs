//! Everything the daemon knows about how Claude Code behaves, in one place.
//!
//! These are versioned facts, measured on the pinned Claude Code (see
//! `PINNED_VERSION` and ../shared/claude-code-facts.md). When Claude Code
//! changes a file name, an environment variable, a hook payload or a limit
//! message, this is the only module to edit.

/// The Claude Code release the tests and these facts are pinned to.
pub const PINNED_VERSION: &str = "2.1.332";

/// The Claude Code versions the end-to-end suite passed on; `check` warns
/// about any other.
///
/// From 2.1.329 to 2.1.332 (2026-12-02), the one change the suite saw: a
/// Stop hook's blocking feedback reaches the model as a user message that
/// is all `<system-reminder>` (a preamble, then `Stop hook feedback:` and
/// the hook's words) beside a `system` message naming the hook; before, it
/// was plain user text. The daemon reads the turn's end from the transcript
/// (`stop_hook_summary`), which did not change; only the stand-in's prompt
/// reading had to follow.
pub const TESTED_VERSIONS: [&str; 2] = ["2.1.329", PINNED_VERSION];

/// Settings reported to silence the hook path, so that a limit fires no
/// hook and a session looks healthy (claude-code-facts §10): environment
/// variables (in `claude.env` or a settings file's `env`), and a settings
/// key.
pub const HOOK_SILENCING_ENV: [&str; 1] = ["CLAUDE_CODE_RETRY_WATCHDOG"];
pub const SETTINGS_DISABLE_ALL_HOOKS: &str = "disableAllHooks";
/// The npm package that ships it.
pub const NPM_PACKAGE: &str = "@anthropic-ai/claude-code";

/// Environment variable that moves Claude Code's whole config directory.
pub const ENV_CONFIG_DIR: &str = "CLAUDE_CONFIG_DIR";
/// The signal that ends a Claude Code as `/exit` does: its `SessionEnd`
/// hooks run, the conversation stays resumable, the process exits (seen
/// here on 2.1.332: ten idle sessions signalled at once all fired
/// `SessionEnd` and were gone in about a second on two cores, where typed
/// `/exit` took 1–3 s). SIGHUP (what `tmux kill-session` sends) ends it too.
pub const STOP_SIGNAL: libc::c_int = libc::SIGTERM;
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

/// Claude Code's own sign-in, run by `claude-failover login` in the
/// foreground with the account's home as `CLAUDE_CONFIG_DIR`
/// (`claude auth login`, present since 2.1.201; `--claudeai`: a
/// subscription account, not the Console). It writes `.credentials.json`.
pub const LOGIN_ARGS: [&str; 3] = ["auth", "login", "--claudeai"];
/// OAuth credentials inside an account home. Never shared, never refreshed by us.
pub const CREDENTIALS_FILE: &str = ".credentials.json";
/// Onboarding flags and per-folder trust inside an account home.
pub const CLAUDE_JSON: &str = ".claude.json";
/// Claude Code's token-refresh lock in its config dir (claude-code-facts.md
/// §8): a directory made with mkdir (`proper-lockfile`), its mtime touched
/// every [`REFRESH_LOCK_TOUCH`] while held, stale after [`REFRESH_LOCK_STALE`],
/// with an owner file holding the holder's pid.
pub const REFRESH_LOCK: &str = ".oauth_refresh.lock";
pub const REFRESH_LOCK_OWNER: &str = ".oauth_refresh.lock.owner";
pub const REFRESH_LOCK_STALE: std::time::Duration = std::time::Duration::from_secs(60);
pub const REFRESH_LOCK_TOUCH: std::time::Duration = std::time::Duration::from_secs(5);
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
/// `PostToolUse` (or `PostToolUseFailure`, for a call that failed) fires
/// after every tool call of a turn: a sign that the
/// session works and that its hooks reach us (see the silent-hook canary);
/// the `hook` command keeps only its names, not the tool's input or output.
pub const HOOK_EVENTS: [&str; 8] = [
    "SessionStart",
    "UserPromptSubmit",
    "PostToolUse",
    "PostToolUseFailure",
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

/// The model families whose weekly caps Claude Code names in its limit
/// texts ("Opus weekly limit reached").
pub const MODEL_FAMILIES: &[&str] = &["Opus", "Sonnet", "Haiku"];

/// The model a limit text names, if any (`Opus`).
pub fn limit_text_model(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    MODEL_FAMILIES
        .iter()
        .find(|m| lower.contains(&m.to_lowercase()))
        .copied()
}

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
/// before it appears (right after `SessionStart`) can be lost. A dialog's
/// menu draws it too (`❯ No, exit` on the trust dialog), so
/// [`input_box_drawn`] looks for the input box itself.
pub const PROMPT_READY_MARK: &str = "❯";

/// The rule drawn above (and below) the input box, across the pane.
pub const INPUT_BOX_RULE: char = '─';

/// Whether `screen` (a pane capture) shows the TUI's input box, ready for a
/// prompt: a line that starts with [`PROMPT_READY_MARK`] right under a line
/// of [`INPUT_BOX_RULE`] (seen on the pinned version; a dialog's menu line
/// has text or a blank line above it, never the rule).
pub fn input_box_drawn(screen: &str) -> bool {
    let lines: Vec<&str> = screen.lines().map(str::trim).collect();
    lines.windows(2).any(|w| {
        w[0].chars().count() >= 10
            && w[0].chars().all(|c| c == INPUT_BOX_RULE)
            && w[1].starts_with(PROMPT_READY_MARK)
    })
}

/// How the TUI reports a large paste in `UserPromptSubmit.prompt` and passes
/// it to the model (seen on the pinned version, above about 800 characters or
/// 10 lines): `\n\n<pasted_content id="18d9">\n…\n</pasted_content id="18d9">\n`.
pub const PASTED_CONTENT_OPEN: &str = "<pasted_content id=";
pub const PASTED_CONTENT_CLOSE: &str = "</pasted_content id=";

/// First characters that switch the TUI's input mode when typed first:
/// `!` runs the rest in a shell (bash mode, no permission prompt, even for a
/// long paste), `#` once saved a memory. A leading space keeps them text; the
/// model gets the prompt trimmed, so the space never reaches it (seen here).
pub const MODE_CHARS: [char; 2] = ['!', '#'];

/// Why a task cannot be typed as text, or the text to type.
///
/// Task text is data, never keystrokes: control characters (an embedded
/// `ESC[201~` would end the bracketed paste and type the rest as keys) are
/// replaced by their visible Unicode "control pictures" (`␛`), line ends are
/// normalised to `\n`, and every prompt is typed after one space so a leading
/// `!` or `#` is text. A first word like `/exit` or `/review` is a slash
/// command even after the space (the TUI trims before it looks), so such a
/// task is refused unless its front matter asks for a slash command.
pub fn typed_form(task: &str, slash_command: bool) -> Result<String, String> {
    let mut out = String::with_capacity(task.len() + 1);
    // A byte-order mark is whitespace to the TUI's trim: drop it, so it can
    // hide neither a slash command nor a `!`.
    let text = task.replace("\r\n", "\n").replace('\u{feff}', "");
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => out.push('\n'),
            c if (c as u32) < 0x20 => {
                out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}'))
            }
            '\u{7f}' => out.push('\u{2421}'),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    let first_word = out.split_whitespace().next().unwrap_or("");
    if slash_command {
        // Typed as it is, so it must be a slash command: never a `!` line.
        return if looks_like_slash_command(first_word) {
            Ok(out.trim_start().to_string())
        } else {
            Err(
                "`slash_command: true`, but the task does not start with a slash command (`/name`)"
                    .into(),
            )
        };
    }
    if looks_like_slash_command(first_word) {
        return Err(format!(
            "starts with `{}`, which Claude Code would run as a slash command, not send as text; \
             put `slash_command: true` in the front matter to run it as one, or start the task with other words",
            first_word.chars().take(40).collect::<String>()
        ));
    }
    Ok(format!(" {out}"))
}

/// `/name` or `/plugin:name`: the shape of a slash command. A path such as
/// `/etc/passwd` is sent as text (seen here), so it does not count.
fn looks_like_slash_command(word: &str) -> bool {
    let Some(name) = word.strip_prefix('/') else {
        return false;
    };
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
}

/// The text a `UserPromptSubmit.prompt` (or a transcript's user message)
/// stands for: pasted-content wrappers removed, whitespace runs collapsed,
/// trimmed. Two prompts are the same when their canonical forms are.
pub fn canonical_prompt(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    for line in text.split('\n') {
        let t = line.trim();
        if (t.starts_with(PASTED_CONTENT_OPEN) || t.starts_with(PASTED_CONTENT_CLOSE))
            && t.ends_with("\">")
        {
            kept.push('\n');
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    let mut out = String::with_capacity(kept.len());
    for w in kept.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// Whether Claude Code's report of a submitted prompt is the text typed.
pub fn same_prompt(typed: &str, reported: &str) -> bool {
    canonical_prompt(typed) == canonical_prompt(reported)
}

/// Transcript entries that end a turn, or say it goes on (seen here, 2.1.329):
/// after the `Stop` hooks ran, a `system` entry `stop_hook_summary` lists
/// their `hookErrors` (a hook that answered `{"decision":"block"}`: the turn
/// goes on with its feedback), and a finished turn ends with a `system`
/// entry `turn_duration`.
pub const TRANSCRIPT_TURN_END: &str = "turn_duration";
pub const TRANSCRIPT_STOP_HOOK_SUMMARY: &str = "stop_hook_summary";

/// What the transcript says about the current turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnState {
    /// The turn ended (`turn_duration`).
    Over,
    /// A Stop hook blocked the end: the model goes on.
    GoesOn,
    /// Nothing conclusive yet (entries not written, or an unknown layout).
    Unknown,
}

/// What the transcript lines since an offset say about the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnReading {
    /// Over when the last marker is `turn_duration`; GoesOn when it is a
    /// blocking `stop_hook_summary`; else Unknown.
    pub state: TurnState,
    /// Where to read from next time: past the last blocking summary, so
    /// each one is taken once.
    pub next: u64,
    /// How many blocking summaries were read (each answers one `Stop`).
    pub blocks: u32,
    /// Whether any `stop_hook_summary` was read (this version writes them).
    pub saw_summary: bool,
}

/// Reads the turn's state from the transcript lines written since `offset`
/// (a byte offset at a line start, where the turn's earlier markers were
/// already read). The last marker decides: a non-blocking summary after a
/// blocking one means that later Stop was let through. Only whole lines
/// count; a line still being written is read next time.
pub fn turn_state_since(text: &str, offset: u64) -> TurnReading {
    let mut r = TurnReading {
        state: TurnState::Unknown,
        next: offset,
        blocks: 0,
        saw_summary: false,
    };
    let mut pos = offset;
    for line in text.split_inclusive('\n') {
        pos += line.len() as u64;
        if !line.ends_with('\n') {
            break;
        }
        if !line.contains("\"system\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("type").and_then(|t| t.as_str()) != Some("system") {
            continue;
        }
        match v.get("subtype").and_then(|t| t.as_str()).unwrap_or("") {
            TRANSCRIPT_TURN_END => r.state = TurnState::Over,
            TRANSCRIPT_STOP_HOOK_SUMMARY => {
                r.saw_summary = true;
                let blocked = v
                    .get("hookErrors")
                    .and_then(|e| e.as_array())
                    .is_some_and(|e| !e.is_empty())
                    && !v
                        .get("preventedContinuation")
                        .and_then(|p| p.as_bool())
                        .unwrap_or(false);
                if blocked {
                    r.state = TurnState::GoesOn;
                    r.blocks += 1;
                    r.next = pos;
                } else {
                    r.state = TurnState::Unknown;
                }
            }
            _ => {}
        }
    }
    r
}

/// Reads a transcript from `offset` (at most `max` bytes, the newest) for
/// [`turn_state_since`]; returns the text and the offset it starts at.
pub fn transcript_since(
    path: &std::path::Path,
    offset: u64,
    max: u64,
) -> std::io::Result<(String, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut start = offset.min(len);
    let cut = len - start > max;
    if cut {
        start = len - max;
    }
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    if cut {
        // Started mid-line (perhaps mid-character): skip to the next whole
        // line, counted in the file's bytes, not in the decoded text's.
        let skip = buf
            .iter()
            .position(|b| *b == b'\n')
            .map_or(buf.len(), |i| i + 1);
        buf.drain(..skip);
        start += skip as u64;
    }
    // Offsets stay the file's: a line that is not UTF-8 is decoded lossily
    // only after every offset is taken from the bytes.
    let text = match String::from_utf8(buf) {
        Ok(t) => t,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok((text, start))
}

/// A transcript's length now: where the next turn's entries will start.
pub fn transcript_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last conversation entry of a transcript, which says what the turn is
/// doing (seen here, 2.1.329): when `Stop` fires, the model's final answer
/// is written (an `assistant` entry with text and no `tool_use` block);
/// when `StopFailure` fires, an `assistant` entry with
/// `isApiErrorMessage: true`, the error in `error` (`rate_limit`) and its
/// message as text. While a tool runs, the last entry is the `tool_use`
/// (or, once the tool answered, the user entry with its result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastEntry {
    /// No conversation entry (or none readable).
    Nothing,
    /// A prompt, a tool's result or other user input: the model is next.
    User,
    /// The model asked for a tool: it is running.
    ToolCall,
    /// The model's answer, its text blocks joined.
    Answer(String),
    /// A request that failed (refused, overloaded, …).
    ApiError { error: Option<String>, text: String },
}

/// `isApiErrorMessage`: an assistant entry that is an API error.
pub const TRANSCRIPT_API_ERROR: &str = "isApiErrorMessage";

/// What the last conversation entry in `text` (whole lines) is.
pub fn last_entry(text: &str) -> LastEntry {
    let mut last = LastEntry::Nothing;
    // Claude Code writes one entry per content block: the text blocks of one
    // message (one `message.id`) are one answer.
    let mut last_message_id: Option<String> = None;
    for line in text.lines() {
        // A cheap filter before parsing (whatever the writer's spacing).
        if !line.contains("\"user\"") && !line.contains("\"assistant\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let blocks = match &v["message"]["content"] {
            serde_json::Value::Array(b) => b.clone(),
            serde_json::Value::String(s) => vec![serde_json::json!({"type": "text", "text": s})],
            _ => Vec::new(),
        };
        let text_of = || {
            blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        last = match v["type"].as_str() {
            Some("user") if v["isMeta"].as_bool() == Some(true) => continue,
            Some("user") => LastEntry::User,
            Some("assistant") if v[TRANSCRIPT_API_ERROR].as_bool() == Some(true) => {
                LastEntry::ApiError {
                    error: v["error"].as_str().map(String::from),
                    text: text_of(),
                }
            }
            Some("assistant") if blocks.iter().any(|b| b["type"] == "tool_use") => {
                LastEntry::ToolCall
            }
            Some("assistant") => {
                let id = v["message"]["id"].as_str().map(String::from);
                let text = text_of();
                match (&mut last, &last_message_id) {
                    (LastEntry::Answer(before), Some(prev)) if id.as_ref() == Some(prev) => {
                        if !before.is_empty() && !text.is_empty() {
                            before.push('\n');
                        }
                        before.push_str(&text);
                        continue;
                    }
                    _ => {
                        last_message_id = id;
                        LastEntry::Answer(text)
                    }
                }
            }
            _ => continue,
        };
        if !matches!(last, LastEntry::Answer(_)) {
            last_message_id = None;
        }
    }
    last
}

/// [`last_entry`] of the transcript at `path` (its last 4 MiB).
pub fn transcript_last_entry(path: &std::path::Path) -> LastEntry {
    const TAIL: u64 = 4 << 20;
    let len = transcript_len(path);
    match transcript_since(path, len.saturating_sub(TAIL), TAIL) {
        Ok((text, _)) => last_entry(&text),
        Err(_) => LastEntry::Nothing,
    }
}

/// Whether `id` can be a conversation id (a file name, nothing more).
pub fn plausible_conversation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The byte offset in `text` of the last (non-meta) user message whose
/// text is `typed`: proof that the prompt was submitted even when its
/// `UserPromptSubmit` event is late or lost, and where its turn starts.
pub fn prompt_line(text: &str, typed: &str) -> Option<usize> {
    let want = canonical_prompt(typed);
    let mut found = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let at = pos;
        pos += line.len();
        if !line.contains("\"type\":\"user\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("isMeta").and_then(|m| m.as_bool()) == Some(true) {
            continue;
        }
        let said = match &v["message"]["content"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => continue,
        };
        if canonical_prompt(&said) == want {
            found = Some(at);
        }
    }
    found
}

/// Where `typed` was submitted in the transcript at `path` (an absolute byte
/// offset), looking at enough of its end to hold the prompt whole.
pub fn find_prompt(path: &std::path::Path, typed: &str) -> Option<u64> {
    let max = (256u64 << 10).max(typed.len() as u64 * 4);
    let len = transcript_len(path);
    let (text, start) = transcript_since(path, len.saturating_sub(max), max).ok()?;
    prompt_line(&text, typed).map(|at| start + at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_box_is_told_from_a_dialog_menu() {
        // Pane captures of the pinned version: a session up at its prompt,
        // and one on the trust dialog (whose menu line starts with the mark).
        let ready = include_str!("../../tests/fixtures/screen-input-box.txt");
        let dialog = include_str!("../../tests/fixtures/screen-trust-dialog.txt");
        assert!(dialog.contains(PROMPT_READY_MARK));
        assert!(input_box_drawn(ready));
        assert!(!input_box_drawn(dialog));
        assert!(!input_box_drawn(""));
        // Typed text in the box, and a box narrower than the pane.
        assert!(input_box_drawn(
            "x\n  ──────────────\n❯ fix the build\n──────────────"
        ));
        // A transcript line quoting a prompt is not the box.
        assert!(!input_box_drawn("hello\n❯ an earlier prompt\n⏺ its answer"));
    }

    #[test]
    fn a_cut_in_the_middle_of_a_character_keeps_file_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        // "é" is two bytes; a cut one byte into it must not shift offsets.
        let first = "{\"x\":\"ééééé\"}\n";
        let second = "{\"type\":\"system\",\"subtype\":\"turn_duration\"}\n";
        std::fs::write(&path, format!("{first}{second}")).unwrap();
        let max = (second.len() + 4) as u64;
        let (text, start) = transcript_since(&path, 0, max).unwrap();
        assert_eq!(text, second);
        assert_eq!(start, first.len() as u64);
        let r = turn_state_since(&text, start);
        assert_eq!(r.state, TurnState::Over);
    }

    #[test]
    fn the_last_entry_tells_an_answer_a_tool_call_and_a_refusal_apart() {
        let prompt = r#"{"type":"user","message":{"role":"user","content":"do it"}}"#;
        let meta =
            r#"{"type":"user","isMeta":true,"message":{"role":"user","content":"reminder"}}"#;
        let tool = r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t","name":"Bash","input":{}}]}}"#;
        let result = r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t","content":"ok"}]}}"#;
        let answer = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"done"}],"stop_reason":"end_turn"}}"#;
        let refused = r#"{"type":"assistant","isApiErrorMessage":true,"error":"rate_limit","message":{"content":[{"type":"text","text":"You've hit your 5-hour limit"}]}}"#;
        let other = r#"{"type":"system","subtype":"turn_duration"}"#;
        let t = |lines: &[&str]| last_entry(&(lines.join("\n") + "\n"));
        assert_eq!(t(&[]), LastEntry::Nothing);
        assert_eq!(t(&[prompt]), LastEntry::User);
        assert_eq!(t(&[prompt, tool]), LastEntry::ToolCall);
        assert_eq!(t(&[prompt, tool, result]), LastEntry::User);
        assert_eq!(
            t(&[prompt, tool, result, answer, meta, other]),
            LastEntry::Answer("done".into())
        );
        let part = |text: &str| {
            format!(
                r#"{{"type":"assistant","message":{{"id":"m1","content":[{{"type":"text","text":"{text}"}}]}}}}"#
            )
        };
        let (one, two) = (part("first part"), part("second part"));
        assert_eq!(
            t(&[prompt, &one, &two]),
            LastEntry::Answer("first part\nsecond part".into()),
            "one message's text blocks are one answer"
        );
        assert_eq!(
            t(&[&one, prompt, &two]),
            LastEntry::Answer("second part".into())
        );
        assert_eq!(
            t(&[answer, prompt, refused]),
            LastEntry::ApiError {
                error: Some("rate_limit".into()),
                text: "You've hit your 5-hour limit".into()
            }
        );
        assert!(plausible_conversation_id(
            "51c9385e-bfdc-4879-b542-a1eeb3fdae1e"
        ));
        assert!(!plausible_conversation_id("../../etc/passwd"));
        assert!(!plausible_conversation_id(""));
    }

    #[test]
    fn a_pasted_content_report_is_the_typed_text() {
        let typed = " Paragraph 0: a b\nParagraph 1: c d\n";
        let reported = "\n\n<pasted_content id=\"18d9\">\n Paragraph 0: a b\nParagraph 1: c d\n\n</pasted_content id=\"18d9\">\n";
        assert!(same_prompt(typed, reported));
        assert!(!same_prompt(" Paragraph 0: a b", reported));
    }

    #[test]
    fn task_text_is_never_keystrokes() {
        assert_eq!(typed_form("!rm -rf x", false).unwrap(), " !rm -rf x");
        assert_eq!(typed_form("# note", false).unwrap(), " # note");
        let esc = typed_form("a\x1b[201~b\r\nc\x07", false).unwrap();
        assert_eq!(esc, " a\u{241b}[201~b\nc\u{2407}");
        assert!(!esc.contains('\x1b'));
        let refused = typed_form("/exit now", false).unwrap_err();
        assert!(refused.contains("/exit"), "{refused}");
        assert!(typed_form("  /plugin:review", false).is_err());
        assert_eq!(
            typed_form("/etc/passwd is a file", false).unwrap(),
            " /etc/passwd is a file"
        );
        assert_eq!(typed_form("/compact", true).unwrap(), "/compact");
        assert!(
            typed_form("!rm -rf x", true).is_err(),
            "slash_command is no way into bash mode"
        );
        assert!(
            typed_form("\u{feff}/exit", false).is_err(),
            "a BOM hides no slash command"
        );
    }

    #[test]
    fn a_blocked_stop_goes_on_and_a_turn_duration_ends_it() {
        let first = concat!(
            r#"{"type":"user","message":{"content":"x"}}"#,
            "\n",
            r#"{"type":"assistant","message":{}}"#,
            "\n",
            r#"{"type":"system","subtype":"stop_hook_summary","hookErrors":["run the tests first"],"preventedContinuation":false}"#,
            "\n",
            r#"{"type":"api-request"}"#,
            "\n"
        );
        let r = turn_state_since(first, 100);
        let (state, next) = (r.state, r.next);
        assert_eq!(state, TurnState::GoesOn);
        assert_eq!((r.blocks, r.saw_summary), (1, true));
        let summary_end = first.find("\n{\"type\":\"api-request").unwrap() as u64 + 1;
        assert_eq!(next, 100 + summary_end, "past the blocking summary");
        // Read again from there: that summary is not taken twice.
        let rest = &first[summary_end as usize..];
        assert_eq!(turn_state_since(rest, next).state, TurnState::Unknown);
        let end = concat!(
            r#"{"type":"assistant","message":{}}"#,
            "\n",
            r#"{"type":"system","subtype":"stop_hook_summary","hookErrors":[]}"#,
            "\n",
            r#"{"type":"system","subtype":"turn_duration","durationMs":3976}"#,
            "\n"
        );
        assert_eq!(
            turn_state_since(&format!("{rest}{end}"), next).state,
            TurnState::Over
        );
        // Both Stops read at once: one block, then the end.
        let both = turn_state_since(&format!("{first}{end}"), 0);
        assert_eq!((both.state, both.blocks), (TurnState::Over, 1));
        // A line still being written does not count yet.
        let partial = r#"{"type":"system","subtype":"turn_duration""#;
        let p = turn_state_since(partial, 0);
        assert_eq!((p.state, p.next, p.blocks), (TurnState::Unknown, 0, 0));
        let e = turn_state_since("", 7);
        assert_eq!(
            (e.state, e.next, e.saw_summary),
            (TurnState::Unknown, 7, false)
        );
    }

    #[test]
    fn the_transcript_shows_a_submitted_prompt() {
        let tail = concat!(
            r#"{"type":"user","promptId":"x","message":{"role":"user","content":" say hello"}}"#,
            "\n",
            r#"{"type":"user","isMeta":true,"message":{"role":"user","content":"Stop hook feedback"}}"#,
            "\n"
        );
        assert_eq!(prompt_line(tail, " say hello"), Some(0));
        assert_eq!(prompt_line(tail, "Stop hook feedback"), None);
        assert_eq!(prompt_line(tail, "say goodbye"), None);
        let later = format!(
            "{tail}{}",
            r#"{"type":"user","message":{"content":[{"type":"text","text":"say hello"}]}}"#
        );
        assert_eq!(prompt_line(&later, "say hello"), Some(tail.len()));
    }

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
