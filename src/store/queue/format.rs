//! Pure: what the queue's files hold: a task file (optional YAML front
//! matter, then the prompt verbatim), and the records written beside it
//! (the `.dispatched` marker, `result.json`, `error.json`, attempts). Parsing
//! and the formats only; `queue` does the moves on disk.

use super::*;

/// The YAML front matter of a task file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontMatter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `true`: the task is a slash command (`/compact`, `/review …`) and is
    /// typed as one. Otherwise a task whose first word looks like one is
    /// refused, since task text is data (see `claude::facts::typed_form`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slash_command: Option<bool>,
}

/// A task file that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTask {
    pub front: FrontMatter,
    /// Everything after the front matter, verbatim.
    pub body: String,
}

impl ParsedTask {
    pub fn priority(&self) -> i64 {
        self.front.priority.unwrap_or(DEFAULT_PRIORITY)
    }

    /// What is sent to the session: the body without surrounding blank space.
    pub fn prompt(&self) -> &str {
        self.body.trim()
    }
}

/// `active/<name>.md.dispatched`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub session: String,
    pub account: String,
    pub claude_session_id: Option<String>,
    /// 1-based number of the attempt under way.
    pub attempt: u32,
    /// RFC 3339.
    pub dispatched_at: String,
}

/// `done/<name>.result.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub last_assistant_message: Option<String>,
    pub claude_session_id: Option<String>,
    pub account: Option<String>,
    pub session: Option<String>,
    pub attempt: u32,
    /// RFC 3339: when the attempt that finished was dispatched.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: String,
}

/// `failed/<name>.error.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub reason: String,
    /// Failed attempts (0: refused before any was made).
    pub attempts: u32,
    /// RFC 3339.
    pub failed_at: String,
    /// Reasons of the attempts before the last, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_reasons: Vec<String>,
}

/// One entry of `attempts.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Failed attempts so far.
    pub attempts: u32,
    /// Their reasons, oldest first (the last few).
    #[serde(default)]
    pub reasons: Vec<String>,
}

pub(super) type Attempts = BTreeMap<String, AttemptRecord>;

/// Validates a task file's bytes: UTF-8, at most 1 MiB, well-formed front
/// matter, a non-empty prompt. The error is the reason written to
/// error.json.
pub fn parse_task(bytes: &[u8]) -> std::result::Result<ParsedTask, String> {
    if bytes.len() > MAX_TASK_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (front, body) = split_front_matter(text)?;
    if front.max_attempts == Some(0) {
        return Err("broken front matter: max_attempts must be at least 1".into());
    }
    if body.trim().is_empty() {
        return Err("no prompt: the task has no text after its front matter".into());
    }
    Ok(ParsedTask {
        front,
        body: body.to_string(),
    })
}

pub(super) fn too_big(len: u64) -> String {
    format!("too big: {len} bytes, the limit is {MAX_TASK_BYTES} bytes (1 MiB)")
}

pub(super) fn is_fence(line: &str) -> bool {
    line.trim_end_matches(['\n', '\r', ' ', '\t']) == "---"
}

/// `---\n<yaml>\n---\n<body>`; a file not starting with a `---` line has no
/// front matter.
pub(super) fn split_front_matter(text: &str) -> std::result::Result<(FrontMatter, &str), String> {
    let mut lines = text.split_inclusive('\n');
    match lines.next() {
        Some(first) if is_fence(first) => {
            let yaml_start = first.len();
            let mut offset = yaml_start;
            for line in lines {
                if offset - yaml_start > MAX_FRONT_MATTER_BYTES {
                    return Err(format!(
                        "broken front matter: longer than {MAX_FRONT_MATTER_BYTES} bytes, or its closing `---` line is missing (it holds only `priority` and `max_attempts`)"
                    ));
                }
                if is_fence(line) {
                    let front = parse_front_yaml(&text[yaml_start..offset])?;
                    return Ok((front, &text[offset + line.len()..]));
                }
                offset += line.len();
            }
            Err("broken front matter: the opening `---` has no closing `---` line".into())
        }
        _ => Ok((FrontMatter::default(), text)),
    }
}

pub(super) fn parse_front_yaml(yaml: &str) -> std::result::Result<FrontMatter, String> {
    let blank = yaml.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    });
    if blank {
        return Ok(FrontMatter::default());
    }
    serde_norway::from_str::<FrontMatter>(yaml).map_err(|e| {
        let mut msg = e.to_string();
        if let Some(l) = e.location() {
            msg = msg.replacen(
                &format!(" at line {} column {}", l.line(), l.column()),
                "",
                1,
            );
            // The YAML starts on the file's second line.
            msg = format!("{msg} (line {})", l.line() + 1);
        }
        let msg = msg
            .replace("expected i64", "expected an integer")
            .replace("expected u32", "expected a positive integer")
            .replace(
                "expected struct FrontMatter",
                "expected keys like `priority: 1`",
            );
        format!("broken front matter: {}", one_line(&msg))
    })
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
