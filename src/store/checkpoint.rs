//! Checkpoints: every `checkpoint.interval`, one file per session in
//! `<state_dir>/checkpoints/<session>.json` with what a person (or a
//! restarted daemon) needs to know where it stood: the conversation id, the
//! folder, the task, the last tool call and the last assistant message, read
//! from the tail of the conversation's transcript. Pruned after
//! `checkpoint.keep`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::store::atomic_file;

/// How much of a transcript's end is read (transcripts grow large).
const TAIL_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checkpoint {
    pub session: String,
    pub account: Option<String>,
    pub claude_session_id: Option<String>,
    pub cwd: String,
    pub task: Option<String>,
    pub state: String,
    pub last_tool_call: Option<Value>,
    pub last_assistant_message: Option<String>,
    /// RFC 3339.
    pub written_at: String,
}

/// The last assistant text and the last tool call in transcript lines
/// (JSONL: `{"type":"assistant","message":{"content":[{"type":"text",…},{"type":"tool_use",…}]}}`).
pub fn from_transcript_tail(tail: &str) -> (Option<String>, Option<Value>) {
    let mut text = None;
    let mut tool = None;
    for line in tail.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue; // the first line of a tail is usually cut
        };
        let message = v.get("message").unwrap_or(&Value::Null);
        if message.get("role").and_then(Value::as_str) != Some("assistant")
            && v.get("type").and_then(Value::as_str) != Some("assistant")
        {
            continue;
        }
        match message.get("content") {
            Some(Value::String(s)) => text = Some(s.clone()),
            Some(Value::Array(blocks)) => {
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            text = b
                                .get("text")
                                .and_then(Value::as_str)
                                .map(String::from)
                                .or(text.take())
                        }
                        Some("tool_use") => {
                            tool = Some(
                                serde_json::json!({"name": b.get("name"), "input": b.get("input")}),
                            );
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (text, tool)
}

/// The last `TAIL_BYTES` of a file as text.
pub fn read_tail(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Writes one checkpoint; `transcript` is read when it exists.
pub fn write(dir: &Path, mut cp: Checkpoint, transcript: Option<PathBuf>) -> std::io::Result<()> {
    if let Some(tail) = transcript.as_deref().and_then(read_tail) {
        let (text, tool) = from_transcript_tail(&tail);
        cp.last_assistant_message = text;
        // Else the one the session's last PostToolUse named stays.
        if tool.is_some() {
            cp.last_tool_call = tool;
        }
    }
    std::fs::create_dir_all(dir)?;
    atomic_file::write_json(&dir.join(format!("{}.json", cp.session)), &cp)
}

/// Removes checkpoints not rewritten for `keep` (sessions that are gone).
pub fn prune(dir: &Path, keep: Duration, now: SystemTime) -> usize {
    let mut removed = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > keep);
        if old && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_text_and_tool_call_and_skips_a_cut_first_line() {
        let tail = concat!(
            "ial\":\"cut\"}\n",
            "{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":\"do it\"}}\n",
            "{\"type\":\"assistant\",\"message\":{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"first\"},{\"type\":\"tool_use\",\"name\":\"Bash\",\"input\":{\"command\":\"ls\"}}]}}\n",
            "{\"type\":\"assistant\",\"message\":{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"done now\"}]}}\n",
        );
        let (text, tool) = from_transcript_tail(tail);
        assert_eq!(text.as_deref(), Some("done now"));
        assert_eq!(tool.unwrap()["input"]["command"], "ls");
        assert_eq!(from_transcript_tail("not json\n"), (None, None));
    }

    #[test]
    fn writes_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.jsonl");
        std::fs::write(
            &t,
            "{\"type\":\"assistant\",\"message\":{\"role\":\"assistant\",\"content\":\"hi\"}}\n",
        )
        .unwrap();
        let cp = Checkpoint {
            session: "ccl-1".into(),
            account: Some("a".into()),
            claude_session_id: Some("x".into()),
            cwd: "/srv".into(),
            task: None,
            state: "idle".into(),
            last_tool_call: None,
            last_assistant_message: None,
            written_at: "now".into(),
        };
        write(dir.path(), cp, Some(t)).unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("ccl-1.json")).unwrap()).unwrap();
        assert_eq!(v["last_assistant_message"], "hi");
        assert_eq!(
            prune(dir.path(), Duration::from_secs(3600), SystemTime::now()),
            0
        );
        assert!(
            prune(
                dir.path(),
                Duration::from_secs(0),
                SystemTime::now() + Duration::from_secs(5)
            ) >= 1
        );
    }
}
