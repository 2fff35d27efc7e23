//! Scripted agentic turns for the API stand-in.
//!
//! A task's prompt may carry a directive, on a line of its own:
//!
//! ```text
//! STANDIN-SCRIPT steps=8 file=out-a.txt delay_ms=200 refuse_at=3 overload_at=5
//! ```
//!
//! The stand-in then answers the turn's requests as an agent would: step k
//! (1-based) is a Bash tool call `echo step-k >> FILE` in the session's
//! folder, and once every step's `tool_result` came back, a final text
//! answer. The progress is read from the conversation itself (the tool
//! results after the newest user text that carries the directive), so a
//! turn resumed on another account (`--resume`, then the continuation
//! prompt) goes on from the step it reached. `refuse_at=k` refuses the
//! request for step k with a 429 once per script (the account is exhausted
//! then, as a real refusal would be); `overload_at=k` answers it 529 once;
//! `unauth_at=k` answers it 401 once (a token the server stopped taking).
//! Only requests that offer the Bash tool follow a script: Claude Code's
//! side requests (titles, summaries) get plain answers.
//!
//! `tools=A,B` makes step k a call of tool k (e.g. an MCP tool,
//! `mcp__cf__fleet_status`) instead of Bash, with `inputK=key:value,…`
//! (`+` for a space) as its input; `steps` is then the number of tools.

use serde_json::Value;
use std::time::Duration;

/// The directive's first word.
pub const SCRIPT_MARK: &str = "STANDIN-SCRIPT";

/// What a scripted turn does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub steps: u32,
    /// The file each step appends its line to (relative: the session's folder).
    pub file: String,
    /// How long each step's answer takes before it is sent.
    pub delay: Duration,
    pub refuse_at: Option<u32>,
    pub overload_at: Option<u32>,
    pub unauth_at: Option<u32>,
    /// The step whose command needs a person's permission (Claude Code
    /// shows its prompt and fires `Notification` `permission_prompt`).
    pub ask_at: Option<u32>,
    /// `tools=`: step k calls `tools[k-1]` with `inputs[k]` (an object).
    pub tools: Vec<String>,
    pub inputs: std::collections::BTreeMap<u32, Value>,
}

/// Where a request stands in its script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub script: Script,
    /// Steps whose tool result came back.
    pub done: u32,
    /// The directive's line: which script this is (for once-only events).
    pub key: String,
    /// The tool results the request carries (its last user message).
    pub tool_results: Vec<String>,
}

impl Progress {
    /// The step this request asks for (`steps + 1`: the final answer).
    pub fn next(&self) -> u32 {
        self.done + 1
    }

    pub fn finished(&self) -> bool {
        self.done >= self.script.steps
    }
}

/// The directive in `text`, if a line carries one. Unknown or malformed
/// keys are ignored; `steps` defaults to 1 and `file` to `out.txt`.
pub fn parse_script(text: &str) -> Option<(Script, String)> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(SCRIPT_MARK))?;
    let mut script = Script {
        steps: 1,
        file: "out.txt".into(),
        delay: Duration::ZERO,
        refuse_at: None,
        overload_at: None,
        unauth_at: None,
        ask_at: None,
        tools: Vec::new(),
        inputs: Default::default(),
    };
    for word in line[SCRIPT_MARK.len()..].split_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "steps" => script.steps = v.parse().unwrap_or(script.steps),
            // A plain name only: the command is built from it.
            "file"
                if !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                script.file = v.into()
            }
            "delay_ms" => script.delay = Duration::from_millis(v.parse().unwrap_or(0)),
            "refuse_at" => script.refuse_at = v.parse().ok(),
            "overload_at" => script.overload_at = v.parse().ok(),
            "unauth_at" => script.unauth_at = v.parse().ok(),
            "ask_at" => script.ask_at = v.parse().ok(),
            "tools" => {
                script.tools = v
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect();
                script.steps = script.tools.len() as u32;
            }
            k if k.starts_with("input") => {
                if let Ok(n) = k["input".len()..].parse::<u32>() {
                    let mut o = serde_json::Map::new();
                    for pair in v.split(',') {
                        if let Some((key, val)) = pair.split_once(':') {
                            o.insert(key.into(), Value::String(val.replace('+', " ")));
                        }
                    }
                    script.inputs.insert(n, Value::Object(o));
                }
            }
            _ => {}
        }
    }
    Some((script, line.to_string()))
}

/// The text blocks of a message's content (a string is one block).
fn texts(content: Option<&Value>) -> Vec<&str> {
    match content {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

/// The `tool_result` blocks of a message's content, as text.
fn tool_results(content: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(blocks)) = content else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|b| match b.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => texts(Some(&Value::Array(parts.clone()))).join("\n"),
            _ => String::new(),
        })
        .collect()
}

/// Whether the request offers the Bash tool (the agent's own requests do).
fn offers_bash(request: &Value) -> bool {
    request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| {
            tools
                .iter()
                .any(|t| t.get("name").and_then(Value::as_str) == Some("Bash"))
        })
}

/// The script a `/v1/messages` request follows and how far it got, if any.
pub fn progress(request: &Value) -> Option<Progress> {
    if !offers_bash(request) {
        return None;
    }
    let messages = request.get("messages")?.as_array()?;
    // The newest user text with a directive starts the script.
    let (start, (script, key)) = messages.iter().enumerate().rev().find_map(|(i, m)| {
        if m.get("role").and_then(Value::as_str) != Some("user") {
            return None;
        }
        texts(m.get("content"))
            .into_iter()
            .find_map(parse_script)
            .map(|found| (i, found))
    })?;
    let done = messages[start + 1..]
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| tool_results(m.get("content")).len() as u32)
        .sum();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    Some(Progress {
        script,
        done,
        key,
        tool_results: last_user
            .map(|m| tool_results(m.get("content")))
            .unwrap_or_default(),
    })
}

/// The Bash command of step `k`.
pub fn step_command(script: &Script, k: u32) -> String {
    if script.ask_at == Some(k) {
        return format!("echo step-{k} >> {} && {}", script.file, asking_command());
    }
    format!("echo step-{k} >> {}", script.file)
}

/// A command Claude Code asks a person about before it runs
/// (`$STANDIN_ASK` overrides it, to probe another).
pub fn asking_command() -> String {
    std::env::var("STANDIN_ASK").unwrap_or_else(|_| "curl -s http://127.0.0.1:9/ || true".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bash() -> Value {
        json!([{"name": "Bash", "input_schema": {}}])
    }

    #[test]
    fn a_directive_is_read_from_its_own_line() {
        let (s, key) = parse_script(
            "Write the steps.\n\nSTANDIN-SCRIPT steps=8 file=out-a.txt delay_ms=250 refuse_at=3 unauth_at=5\nthanks",
        )
        .unwrap();
        assert_eq!(
            s,
            Script {
                steps: 8,
                file: "out-a.txt".into(),
                delay: Duration::from_millis(250),
                refuse_at: Some(3),
                overload_at: None,
                unauth_at: Some(5),
                ask_at: None,
                tools: vec![],
                inputs: Default::default(),
            }
        );
        assert!(key.starts_with(SCRIPT_MARK));
        // Tool calls other than Bash, with their inputs.
        let (s, _) = parse_script(
            "STANDIN-SCRIPT tools=mcp__cf__fleet_status,mcp__cf__enqueue_task input2=project:demo,prompt:Say+hi",
        )
        .unwrap();
        assert_eq!(s.steps, 2);
        assert_eq!(s.tools, ["mcp__cf__fleet_status", "mcp__cf__enqueue_task"]);
        assert_eq!(
            s.inputs[&2],
            serde_json::json!({"project": "demo", "prompt": "Say hi"})
        );
        assert_eq!(parse_script("no directive here"), None);
        // A file name that is not a plain name is ignored, not run.
        let (s, _) = parse_script("STANDIN-SCRIPT file=a;rm").unwrap();
        assert_eq!(s.file, "out.txt");
    }

    #[test]
    fn progress_counts_the_tool_results_since_the_directive_across_a_resume() {
        let req = json!({
            "tools": bash(),
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "task\nSTANDIN-SCRIPT steps=3"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok 1"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "refused"}]},
                {"role": "user", "content": "Continue the task you were working on."},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok 2"}]}]},
            ]
        });
        let p = progress(&req).unwrap();
        assert_eq!((p.done, p.next(), p.finished()), (2, 3, false));
        assert_eq!(p.tool_results, vec!["ok 2".to_string()]);
        // A side request (no Bash offered) follows no script.
        let mut side = req.clone();
        side["tools"] = json!([]);
        assert_eq!(progress(&side), None);
    }

    #[test]
    fn a_new_directive_starts_over() {
        let req = json!({
            "tools": bash(),
            "messages": [
                {"role": "user", "content": "STANDIN-SCRIPT steps=2 file=a.txt"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": ""}]},
                {"role": "user", "content": "STANDIN-SCRIPT steps=4 file=b.txt"},
            ]
        });
        let p = progress(&req).unwrap();
        assert_eq!((p.script.file.as_str(), p.done), ("b.txt", 0));
        assert_eq!(step_command(&p.script, 1), "echo step-1 >> b.txt");
    }
}
