//! `claude-failover mcp`: an MCP server on stdio for the operator's own
//! Claude Code (or any MCP client). JSON-RPC 2.0, one message per line.
//! Written on serde_json: the official Rust SDK needs tokio, and the daemon
//! has no async runtime; the protocol's part a tool server needs is small.
//!
//! It talks to the running daemon through its HTTP API (`http.listen`, the
//! token from `http.token_file`) for the fleet's status, a swap and a
//! session's restart, and to the projects' queues on disk (as `enqueue`
//! does) for tasks: the queue files are the contract (SPEC.md), and the
//! daemon picks a new task up from its inbox by itself.
//!
//! Every failure (daemon down, unknown project, a swap under way) is a tool
//! result with `isError` and one line saying why; the server never exits on
//! one. It ends when its input ends.

use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::{exit, Outcome};
use crate::config::Config;
use crate::store::queue::{self, Folder, Queue};

/// Protocol versions answered, newest first. Claude Code 2.1.332's client
/// speaks `2026-07-28`, the current specification (recorded by
/// tests/mcp_server.rs's end-to-end test): it probes with `server/discover`,
/// sends no `initialize`, and puts the version in each request's `_meta`.
/// Older clients begin with `initialize`; both are answered, and no request
/// needs a handshake first.
pub const PROTOCOL_VERSIONS: [&str; 5] = [
    "2026-07-28",
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "2024-11-05",
];

pub fn mcp_command(config: &Config) -> Outcome {
    let trace = std::env::var_os("CLAUDE_FAILOVER_MCP_TRACE").map(std::path::PathBuf::from);
    let server = Server { config };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bytes, not a String: a line that is not UTF-8 is answered as a
        // parse error, not the end of the server.
        match input.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        if line.trim().is_empty() {
            continue;
        }
        if let Some(t) = &trace {
            // What the client sent, for the record (methods and versions;
            // task prompts are the operator's own text, never credentials).
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(t)
            {
                let _ = writeln!(f, "{line}");
            }
        }
        if let Some(reply) = server.handle_line(&line) {
            if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    }
    Ok(exit::OK)
}

pub struct Server<'a> {
    pub config: &'a Config,
}

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn rpc_result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A tool's answer: text for a reader, the same as structured content.
fn tool_ok(text: String, structured: Value) -> Value {
    json!({"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": false})
}

fn tool_err(why: impl Into<String>) -> Value {
    let why = why.into();
    json!({"content": [{"type": "text", "text": why}], "isError": true})
}

impl Server<'_> {
    /// One incoming line: the reply to send, if any (notifications get none).
    pub fn handle_line(&self, line: &str) -> Option<Value> {
        let msg: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return Some(rpc_error(Value::Null, -32700, &format!("parse error: {e}"))),
        };
        if msg.is_array() {
            return Some(rpc_error(Value::Null, -32600, "batches are not supported"));
        }
        if !msg.is_object() {
            return Some(rpc_error(Value::Null, -32600, "a message is a JSON object"));
        }
        let method = msg["method"].as_str();
        let id = msg.get("id").cloned();
        let is_response = msg.get("result").is_some() || msg.get("error").is_some();
        match (method, id) {
            // A notification, or a response to us: nothing to answer.
            (Some(_), None) => None,
            (None, _) if is_response => None,
            (None, id) => Some(rpc_error(
                id.unwrap_or(Value::Null),
                -32600,
                "a request needs a string `method`",
            )),
            (Some(m), Some(id)) => Some(self.request(m, id, &msg["params"])),
        }
    }

    fn request(&self, method: &str, id: Value, params: &Value) -> Value {
        match method {
            "initialize" => {
                let asked = params["protocolVersion"].as_str().unwrap_or("");
                let version = PROTOCOL_VERSIONS
                    .iter()
                    .find(|v| **v == asked)
                    .copied()
                    .unwrap_or(PROTOCOL_VERSIONS[0]);
                rpc_result(id, self.server_description(version))
            }
            // The 2026-07-28 specification's discovery: what this server
            // speaks, before (or instead of) a handshake.
            "server/discover" => {
                let mut d = self.server_description(PROTOCOL_VERSIONS[0]);
                d["supportedVersions"] = json!(PROTOCOL_VERSIONS);
                rpc_result(id, d)
            }
            "ping" => rpc_result(id, json!({})),
            "tools/list" => rpc_result(id, json!({"tools": tools()})),
            "tools/call" => {
                let name = params["name"].as_str().unwrap_or("");
                let args = match params.get("arguments") {
                    None | Some(Value::Null) => json!({}),
                    Some(a) => a.clone(),
                };
                if !args.is_object() {
                    return rpc_error(id, -32602, "arguments must be an object");
                }
                match self.call(name, &args) {
                    Some(result) => rpc_result(id, result),
                    None => rpc_error(id, -32602, &format!("unknown tool: {name}")),
                }
            }
            "resources/list" => rpc_result(id, json!({"resources": []})),
            "prompts/list" => rpc_result(id, json!({"prompts": []})),
            other => rpc_error(id, -32601, &format!("method not found: {other}")),
        }
    }

    fn server_description(&self, version: &str) -> Value {
        json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "claude-failover", "version": env!("CARGO_PKG_VERSION")},
            "instructions": "Controls the claude-failover daemon on this machine: the fleet's status (accounts, quota, sessions, queues, last swap), fail over now, enqueue a task for a project, read a task's result, list tasks, restart a session.",
        })
    }

    /// A tool call's result (`None`: no such tool).
    pub fn call(&self, name: &str, args: &Value) -> Option<Value> {
        let s = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
        Some(match name {
            "fleet_status" => self.fleet_status(),
            "swap" => self.swap(s("to"), s("reason")),
            "enqueue_task" => match (s("project"), s("prompt")) {
                (Some(p), Some(t)) if !t.trim().is_empty() => {
                    let priority = match args.get("priority") {
                        None | Some(Value::Null) => None,
                        Some(v) => match v.as_i64() {
                            Some(n) => Some(n),
                            None => return Some(tool_err("priority must be an integer")),
                        },
                    };
                    self.enqueue(&p, &t, priority, s("name"))
                }
                _ => tool_err("enqueue_task needs `project` and a non-empty `prompt`"),
            },
            "task_result" => match (s("project"), s("name")) {
                (Some(p), Some(n)) => self.task_result(&p, &n),
                _ => tool_err("task_result needs `project` and `name`"),
            },
            "list_tasks" => match s("project") {
                Some(p) => self.list_tasks(&p, s("state").as_deref()),
                None => tool_err("list_tasks needs `project`"),
            },
            "restart_session" => match s("name") {
                Some(n) => self.restart(&n),
                None => tool_err("restart_session needs `name`"),
            },
            _ => return None,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.config.http.listen)
    }

    /// A daemon request: (status, JSON body), or why it could not be made.
    fn ask(&self, method: &str, path: &str, timeout: Duration) -> Result<(u16, Value), String> {
        let mut req = ureq::request(method, &self.url(path)).timeout(timeout);
        let token = match method {
            "GET" => super::read_token(self.config),
            _ => super::token(self.config).map(Some),
        };
        match token {
            Ok(Some(t)) => req = req.set("Authorization", &format!("Bearer {t}")),
            Ok(None) => {}
            Err(e) => return Err(format!("no token: {e}")),
        }
        let (code, body) = match req.call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => {
                return Err(format!(
                    "the daemon at {} is unreachable: {e}",
                    self.config.http.listen
                ))
            }
        };
        Ok((
            code,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        ))
    }

    fn fleet_status(&self) -> Value {
        let s = match self.ask("GET", "/status", Duration::from_secs(10)) {
            Ok((200, s)) => s,
            Ok((code, body)) => {
                return tool_err(format!("the daemon answered {code}: {}", one_line(&body)))
            }
            Err(e) => return tool_err(e),
        };
        let pct = |w: &Value| {
            w["utilization"]
                .as_f64()
                .map(|u| format!("{u:.0}%"))
                .unwrap_or_else(|| "–".into())
        };
        let mut text = format!(
            "active account: {}{}\n",
            s["active_account"].as_str().unwrap_or("none"),
            if s["swap_in_progress"] == true {
                " (a swap is under way)"
            } else {
                ""
            }
        );
        for a in s["accounts"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "account {}: {}, 5-hour {}, weekly {}{}\n",
                a["name"].as_str().unwrap_or("?"),
                if a["usable"] == true {
                    "usable"
                } else {
                    "not usable"
                },
                pct(&a["five_hour"]),
                pct(&a["seven_day"]),
                a["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
        for x in s["sessions"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "session {}: {} on {}{}\n",
                x["name"].as_str().unwrap_or("?"),
                x["state"].as_str().unwrap_or("?"),
                x["account"].as_str().unwrap_or("?"),
                x["task"]
                    .as_str()
                    .map(|t| format!(", task {t}"))
                    .unwrap_or_default()
            ));
        }
        for (p, q) in s["queues"].as_object().into_iter().flatten() {
            text.push_str(&format!(
                "queue {p}: {} waiting, {} active, {} done, {} failed\n",
                q["inbox"], q["active"], q["done"], q["failed"]
            ));
        }
        if let Some(l) = s["last_swap"].as_object() {
            text.push_str(&format!(
                "last swap: {} → {} {} ({})\n",
                l.get("from").and_then(Value::as_str).unwrap_or("?"),
                l.get("to").and_then(Value::as_str).unwrap_or("?"),
                l.get("result").and_then(Value::as_str).unwrap_or("?"),
                l.get("started_at").and_then(Value::as_str).unwrap_or("?")
            ));
        }
        for h in s["health_problems"].as_array().into_iter().flatten() {
            text.push_str(&format!("problem: {}\n", h.as_str().unwrap_or("")));
        }
        let structured = json!({
            "active_account": s["active_account"],
            "swap_in_progress": s["swap_in_progress"],
            "partial_swap": s["partial_swap"],
            "accounts": s["accounts"],
            "sessions": s["sessions"],
            "queues": s["queues"],
            "last_swap": s["last_swap"],
            "health_problems": s["health_problems"],
        });
        tool_ok(text, structured)
    }

    fn swap(&self, to: Option<String>, reason: Option<String>) -> Value {
        let mut path = "/swap?".to_string();
        if let Some(to) = &to {
            path.push_str(&format!("to={}&", super::percent_encode(to)));
        }
        path.push_str(&format!(
            "reason={}",
            super::percent_encode(reason.as_deref().unwrap_or("asked from Claude Code (MCP)"))
        ));
        let wait = self.config.swap.drain_timeout
            + self.config.swap.stop_timeout
            + self.config.claude.startup_timeout
            + Duration::from_secs(60);
        match self.ask("POST", &path, wait) {
            Ok((200, v)) => tool_ok(
                format!(
                    "swap {}: {} → {} {} in {} ms",
                    v["id"].as_str().unwrap_or("?"),
                    v["from"].as_str().unwrap_or("?"),
                    v["to"].as_str().unwrap_or("?"),
                    v["result"].as_str().unwrap_or("?"),
                    v["duration_ms"]
                ),
                v,
            ),
            Ok((code, v)) => tool_err(format!(
                "swap refused ({code}): {}",
                v["detail"]
                    .as_str()
                    .or(v["error"].as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| one_line(&v))
            )),
            Err(e) => tool_err(e),
        }
    }

    fn restart(&self, name: &str) -> Value {
        let path = format!("/sessions/{}/restart", super::percent_encode(name));
        match self.ask("POST", &path, Duration::from_secs(30)) {
            Ok((200, v)) => tool_ok(format!("{name}: restarting"), v),
            Ok((code, v)) => tool_err(format!(
                "restart of {name} refused ({code}): {}",
                v["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| one_line(&v))
            )),
            Err(e) => tool_err(e),
        }
    }

    fn project(&self, name: &str) -> Result<Queue, Value> {
        self.config
            .projects
            .iter()
            .find(|p| p.name == name)
            .map(Queue::for_project)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .config
                    .projects
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                tool_err(format!(
                    "no project named {name:?} (known: {})",
                    known.join(", ")
                ))
            })
    }

    fn enqueue(
        &self,
        project: &str,
        prompt: &str,
        priority: Option<i64>,
        name: Option<String>,
    ) -> Value {
        let q = match self.project(project) {
            Ok(q) => q,
            Err(e) => return e,
        };
        let hint = name.map(|n| format!("{n}.md"));
        match queue::enqueue(
            q.project_path(),
            priority,
            prompt.as_bytes(),
            hint.as_deref(),
            SystemTime::now(),
        ) {
            Ok(path) => {
                let task = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                tool_ok(
                    format!("task {project}/{task} is in the inbox; the pool takes it from there"),
                    json!({"project": project, "task": task, "path": path}),
                )
            }
            Err(e) => tool_err(format!("cannot enqueue into {project}: {e}")),
        }
    }

    fn task_result(&self, project: &str, name: &str) -> Value {
        let q = match self.project(project) {
            Ok(q) => q,
            Err(e) => return e,
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return tool_err(format!("{name:?} is not a task name"));
        }
        // The name as listed, or with its `.md`: one suffix off, no more.
        let name = match q.locate(name) {
            Some(_) => name,
            None => name.strip_suffix(".md").unwrap_or(name),
        };
        let Some(folder) = q.locate(name) else {
            return tool_err(format!("no task {name:?} in project {project}"));
        };
        let side = |suffix: &str| -> Value {
            std::fs::read(q.folder(folder).join(format!("{name}{suffix}")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null)
        };
        match folder {
            Folder::Done | Folder::Archive => {
                let r = side(".result.json");
                let answer = r["last_assistant_message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                tool_ok(
                    format!(
                        "{project}/{name}: done on {} by {} at {}\n\n{answer}",
                        r["account"].as_str().unwrap_or("?"),
                        r["session"].as_str().unwrap_or("?"),
                        r["finished_at"].as_str().unwrap_or("?")
                    ),
                    json!({"project": project, "task": name, "state": "done", "result": r}),
                )
            }
            Folder::Failed => {
                let e = side(".error.json");
                tool_ok(
                    format!(
                        "{project}/{name}: failed: {}",
                        e["reason"].as_str().unwrap_or("no reason recorded")
                    ),
                    json!({"project": project, "task": name, "state": "failed", "error": e}),
                )
            }
            f => tool_ok(
                format!("{project}/{name}: {} (no result yet)", f.as_str()),
                json!({"project": project, "task": name, "state": f.as_str()}),
            ),
        }
    }

    fn list_tasks(&self, project: &str, state: Option<&str>) -> Value {
        let q = match self.project(project) {
            Ok(q) => q,
            Err(e) => return e,
        };
        let folders: Vec<Folder> = match state {
            None | Some("") | Some("all") => {
                vec![Folder::Inbox, Folder::Active, Folder::Done, Folder::Failed]
            }
            Some(s) => match Folder::ALL.into_iter().find(|f| f.as_str() == s) {
                Some(f) => vec![f],
                None => {
                    return tool_err(format!(
                        "state {s:?}: inbox, active, done, failed, archive or all"
                    ))
                }
            },
        };
        const MAX: usize = 100;
        let mut text = String::new();
        let mut structured = serde_json::Map::new();
        for f in folders {
            let mut names: Vec<String> = std::fs::read_dir(q.folder(f))
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| {
                            let n = e.file_name().to_string_lossy().into_owned();
                            n.strip_suffix(".md").map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            // Newest first (generated names start with the time): a busy
            // done/ shows what just finished.
            names.sort();
            names.reverse();
            let total = names.len();
            names.truncate(MAX);
            text.push_str(&format!(
                "{}: {total}{}{}\n",
                f.as_str(),
                if total > 0 { ": " } else { "" },
                names.join(", ")
            ));
            structured.insert(f.as_str().into(), json!({"count": total, "names": names}));
        }
        tool_ok(text, Value::Object(structured))
    }
}

fn one_line(v: &Value) -> String {
    let t = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    t.lines().next().unwrap_or("").chars().take(300).collect()
}

/// The tools, each with its input schema and a description for a model.
pub fn tools() -> Value {
    json!([
        {
            "name": "fleet_status",
            "description": "How the Claude Code fleet on this machine stands: the active account and each account's quota (5-hour and weekly use, usable or why not), every managed session's state, account and task, each project's queue counts, the last swap, and any health problem.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false},
        },
        {
            "name": "swap",
            "description": "Fail every managed session over to another account now. Without `to`, the best other usable account. Refused while a swap is under way.",
            "inputSchema": {"type": "object", "properties": {
                "to": {"type": "string", "description": "The account to move to (its name in the config)."},
                "reason": {"type": "string", "description": "Why, for the log and notifications."}
            }, "additionalProperties": false},
        },
        {
            "name": "enqueue_task",
            "description": "Queue a task (a prompt) for a project; a session of the project's pool takes it when free and the answer is kept as the task's result.",
            "inputSchema": {"type": "object", "properties": {
                "project": {"type": "string", "description": "The project's name in the config."},
                "prompt": {"type": "string", "description": "The task, as it is typed into Claude Code."},
                "priority": {"type": "integer", "description": "Higher runs first (default 0)."},
                "name": {"type": "string", "description": "A name for the task file (default: from the time)."}
            }, "required": ["project", "prompt"], "additionalProperties": false},
        },
        {
            "name": "task_result",
            "description": "A task's state and, once done, its answer (or, once failed, why).",
            "inputSchema": {"type": "object", "properties": {
                "project": {"type": "string"},
                "name": {"type": "string", "description": "The task's name (its file name without .md)."}
            }, "required": ["project", "name"], "additionalProperties": false},
        },
        {
            "name": "list_tasks",
            "description": "The tasks of a project by state (inbox, active, done, failed, archive; default all but archive), at most the 100 newest names each, newest first.",
            "inputSchema": {"type": "object", "properties": {
                "project": {"type": "string"},
                "state": {"type": "string", "enum": ["inbox", "active", "done", "failed", "archive", "all"]}
            }, "required": ["project"], "additionalProperties": false},
        },
        {
            "name": "restart_session",
            "description": "Relaunch one managed Claude Code session (it resumes its conversation).",
            "inputSchema": {"type": "object", "properties": {
                "name": {"type": "string", "description": "The tmux session's name, e.g. ccl-auto-11."}
            }, "required": ["name"], "additionalProperties": false},
        }
    ])
}
