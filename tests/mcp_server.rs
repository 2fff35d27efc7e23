//! `claude-failover mcp` (issue 17). Over a pipe: the handshake (the
//! version Claude Code sends and the current one, `server/discover`),
//! `tools/list`, every tool with good and bad input, a daemon that is down,
//! protocol errors; the server never exits on one. End to end: the real
//! Claude Code as the MCP client (`claude -p` with the server configured)
//! against the stand-in scripted to call `fleet_status`, then
//! `enqueue_task`: the stand-in receives the fleet's real status as the
//! tool's result, and the task is queued and done by the pool.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{bin, queue_dir, wait_for, wait_task_ended, World};

struct Mcp {
    child: Child,
    stdin: ChildStdin,
    out: crossbeam_channel::Receiver<String>,
    next: u64,
}

impl Mcp {
    fn start(config: &std::path::Path) -> Mcp {
        let mut child = Command::new(bin())
            .args(["--config", &config.to_string_lossy(), "mcp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Mcp {
            child,
            stdin,
            out: rx,
            next: 1,
        }
    }

    fn send_raw(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn reply(&self) -> Value {
        let line = self
            .out
            .recv_timeout(Duration::from_secs(90))
            .expect("an answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send_raw(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        );
        let r = self.reply();
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["jsonrpc"], "2.0");
        r
    }

    fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        r["result"].clone()
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn handshake(m: &mut Mcp, version: &str) -> Value {
    let r = m.request(
        "initialize",
        json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
    );
    m.send_raw(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    r["result"].clone()
}

#[test]
fn the_protocol_over_a_pipe_every_tool_good_and_bad_and_a_daemon_that_is_down() {
    let mut h = support::Harness::new("mcp");
    let (sb, _pid) = support::fake_agent_daemon(&mut h, 2, Duration::from_secs(60));
    let mut m = Mcp::start(&sb.config_path);

    // The handshake: the version asked for when known, else the newest.
    let init = handshake(&mut m, "2025-06-18");
    assert_eq!(init["protocolVersion"], "2025-06-18");
    assert_eq!(init["serverInfo"]["name"], "claude-failover");
    assert!(init["capabilities"]["tools"].is_object());
    let init = handshake(&mut m, "2026-07-28");
    assert_eq!(init["protocolVersion"], "2026-07-28");
    let init = handshake(&mut m, "1999-01-01");
    assert_eq!(init["protocolVersion"], "2026-07-28");
    let d = m.request("server/discover", json!({}));
    assert!(d["result"]["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("2025-06-18")));
    assert_eq!(m.request("ping", json!({}))["result"], json!({}));

    // tools/list: six tools, each with a description and an input schema.
    let tools = m.request("tools/list", json!({}))["result"]["tools"].clone();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "fleet_status",
            "swap",
            "enqueue_task",
            "task_result",
            "list_tasks",
            "restart_session"
        ]
    );
    for t in tools.as_array().unwrap() {
        assert!(t["description"].as_str().unwrap().len() > 30, "{t}");
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
    }

    // Stateless (2026-07-28): a second server, no handshake at all, a
    // request carrying its version in `_meta`.
    let mut bare = Mcp::start(&sb.config_path);
    let r = bare.request(
        "tools/list",
        json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}),
    );
    assert_eq!(r["result"]["tools"].as_array().unwrap().len(), 6, "{r}");
    drop(bare);

    // fleet_status: text and structured content, the daemon's own.
    let s = m.call("fleet_status", json!({}));
    assert_eq!(s["isError"], false, "{s}");
    let t = text(&s);
    assert!(
        t.contains("active account: alpha") && t.contains("session ccl-auto-11: idle"),
        "{t}"
    );
    assert_eq!(s["structuredContent"]["active_account"], "alpha");

    // enqueue_task, then task_result and list_tasks see it.
    let project = sb.project_dirs[0].1.clone();
    let e = m.call(
        "enqueue_task",
        json!({"project": "demo", "prompt": "A task for the fake agent.", "priority": 3, "name": "from-mcp"}),
    );
    assert_eq!(e["isError"], false, "{e}");
    let task = e["structuredContent"]["task"].as_str().unwrap().to_string();
    assert!(task.contains("from-mcp"), "{task}");
    let r = m.call("task_result", json!({"project": "demo", "name": task}));
    assert_eq!(r["isError"], false, "{r}");
    assert!(
        ["inbox", "active", "done"].contains(&r["structuredContent"]["state"].as_str().unwrap()),
        "{r}"
    );
    let l = m.call("list_tasks", json!({"project": "demo"}));
    assert!(text(&l).contains(&task), "{l}");
    // The pool does it (the scripted fake agent here): done, with its answer.
    let done = wait_for(Duration::from_secs(60), "the task done", || {
        let r = m.call("task_result", json!({"project": "demo", "name": task}));
        std::thread::sleep(Duration::from_millis(300));
        (r["structuredContent"]["state"] == "done").then_some(r)
    });
    assert!(
        text(&done).starts_with(&format!("demo/{task}: done on alpha by ccl-auto-1")),
        "{done}"
    );
    for n in ["ccl-auto-11", "ccl-auto-12"] {
        wait_for(Duration::from_secs(60), "both sessions idle again", || {
            let s = m.call("fleet_status", json!({}));
            s["structuredContent"]["sessions"]
                .as_array()?
                .iter()
                .any(|x| x["name"] == n && x["state"] == "idle")
                .then_some(())
        });
    }

    // A task done (as the daemon leaves one: done/NAME.md and its
    // result): its answer; a failed one: its reason.
    let done = queue_dir(&project, "done");
    std::fs::write(done.join("answered.md"), "The question.\n").unwrap();
    std::fs::write(
        done.join("answered.result.json"),
        json!({"last_assistant_message": "The answer,\nin two lines.", "account": "alpha", "session": "ccl-auto-11", "finished_at": "2026-12-02T10:00:00Z"}).to_string(),
    )
    .unwrap();
    let r = m.call(
        "task_result",
        json!({"project": "demo", "name": "answered"}),
    );
    assert_eq!(r["structuredContent"]["state"], "done", "{r}");
    assert!(
        text(&r).contains("done on alpha by ccl-auto-11")
            && text(&r).ends_with("The answer,\nin two lines."),
        "{r}"
    );
    let failed = queue_dir(&project, "failed");
    std::fs::write(failed.join("broken.md"), "x\n").unwrap();
    std::fs::write(
        failed.join("broken.error.json"),
        json!({"reason": "refused 3 times"}).to_string(),
    )
    .unwrap();
    let r = m.call(
        "task_result",
        json!({"project": "demo", "name": "broken.md"}),
    );
    assert_eq!(text(&r), "demo/broken: failed: refused 3 times", "{r}");
    let l = m.call("list_tasks", json!({"project": "demo", "state": "done"}));
    assert_eq!(
        l["structuredContent"]["done"]["names"],
        json!([task, "answered"]),
        "{l}"
    );

    // Bad input: one line each, as tool errors; the server goes on.
    for (tool, args, says) in [
        (
            "enqueue_task",
            json!({"project": "nope", "prompt": "x"}),
            "no project named \"nope\" (known: demo)",
        ),
        (
            "enqueue_task",
            json!({"project": "demo"}),
            "needs `project` and a non-empty `prompt`",
        ),
        (
            "enqueue_task",
            json!({"project": "demo", "prompt": "x", "priority": "high"}),
            "priority must be an integer",
        ),
        (
            "task_result",
            json!({"project": "demo", "name": "no-such-task"}),
            "no task \"no-such-task\"",
        ),
        (
            "task_result",
            json!({"project": "demo", "name": "../etc/passwd"}),
            "is not a task name",
        ),
        (
            "list_tasks",
            json!({"project": "demo", "state": "lost"}),
            "state \"lost\"",
        ),
        ("swap", json!({"to": "gamma"}), "swap refused"),
        (
            "restart_session",
            json!({"name": "not-ours"}),
            "restart of not-ours refused (404)",
        ),
    ] {
        let r = m.call(tool, args.clone());
        assert_eq!(r["isError"], true, "{tool} {args}: {r}");
        let t = text(&r);
        assert!(t.contains(says) && !t.contains('\n'), "{tool} {args}: {t}");
    }
    // A good swap and a good restart.
    let sw = m.call("swap", json!({"to": "beta", "reason": "from the test"}));
    assert_eq!(sw["isError"], false, "{sw}");
    assert!(text(&sw).contains("alpha → beta done"), "{sw}");
    let rs = m.call("restart_session", json!({"name": "ccl-auto-12"}));
    assert_eq!(rs["isError"], false, "{rs}");

    // Protocol errors.
    let r = m.request(
        "tools/call",
        json!({"name": "no_such_tool", "arguments": {}}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = m.request("no/such/method", json!({}));
    assert_eq!(r["error"]["code"], -32601, "{r}");
    m.send_raw("{not json");
    assert_eq!(m.reply()["error"]["code"], -32700);
    // A line that is not UTF-8, a message that is not an object, a request
    // without a method: each answered, and the server goes on.
    {
        use std::io::Write as _;
        m.stdin.write_all(b"\xff\xfe{\n").unwrap();
        m.stdin.flush().unwrap();
    }
    assert_eq!(m.reply()["error"]["code"], -32700);
    m.send_raw("5");
    assert_eq!(m.reply()["error"]["code"], -32600);
    m.send_raw(r#"{"jsonrpc":"2.0","id":77,"params":{}}"#);
    let r = m.reply();
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(77), json!(-32600)),
        "{r}"
    );
    let r = m.request(
        "tools/call",
        json!({"name": "list_tasks", "arguments": null}),
    );
    assert_eq!(
        r["result"]["isError"], true,
        "null arguments are no arguments: {r}"
    );
    // A notification gets no answer: the next answer is the ping's.
    m.send_raw(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}"#);
    assert_eq!(m.request("ping", json!({}))["result"], json!({}));

    // The daemon goes away: the tools say so, the server stays.
    h.kill_children();
    let s = m.call("fleet_status", json!({}));
    assert_eq!(s["isError"], true);
    assert!(text(&s).contains("is unreachable"), "{s}");
    let e = m.call(
        "enqueue_task",
        json!({"project": "demo", "prompt": "queued while the daemon is down"}),
    );
    assert_eq!(e["isError"], false, "the queue is files: {e}");
    assert_eq!(m.request("ping", json!({}))["result"], json!({}));
}

/// The real Claude Code as the MCP client.
#[test]
fn claude_code_calls_fleet_status_then_enqueue_task_and_the_pool_does_the_task() {
    let Some(mut w) = World::new("mcp-e2e", |spec| {
        spec.pools[0].min = 1;
        spec.pools[0].max = 1;
    }) else {
        return;
    };
    w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", Duration::from_secs(90));
    let trace = w.h.path().join("mcp-trace.jsonl");
    let mcp_config = w.h.path().join("mcp.json");
    std::fs::write(
        &mcp_config,
        json!({"mcpServers": {"cf": {
            "command": bin(),
            "args": ["--config", w.sb.config_path, "mcp"],
            "env": {"CLAUDE_FAILOVER_MCP_TRACE": trace},
        }}})
        .to_string(),
    )
    .unwrap();
    let prompt = "Check the fleet, then queue a greeting.\n\nSTANDIN-SCRIPT tools=mcp__cf__fleet_status,mcp__cf__enqueue_task input2=project:demo,name:greeting,prompt:Say+hello+from+the+operator.";
    let mut cmd = Command::new(&w.claude);
    cmd.args([
        "-p",
        prompt,
        "--mcp-config",
        &mcp_config.to_string_lossy(),
        "--strict-mcp-config",
        "--allowedTools",
        "mcp__cf__fleet_status,mcp__cf__enqueue_task",
    ])
    .current_dir(&w.sb.pool_dirs[0].1)
    .stdin(Stdio::null());
    for (k, v) in w.sb.claude_env("alpha", &w.api.base_url()) {
        if k != claude_failover::claude::facts::ENV_STATE_DIR {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "claude -p: {out:?}");

    // The handshake Claude Code sent: 2.1.332 speaks the 2026-07-28
    // protocol: a `server/discover` probe and no `initialize`, every request
    // carrying its version in `_meta`.
    let traced = std::fs::read_to_string(&trace).unwrap();
    let sent: Vec<Value> = traced
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let methods: Vec<&str> = sent
        .iter()
        .map(|m| m["method"].as_str().unwrap_or(""))
        .collect();
    eprintln!("Claude Code sent: {methods:?}");
    let first = &sent[0];
    let version = first["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"]
        .as_str()
        .or(first["params"]["protocolVersion"].as_str())
        .unwrap_or_else(|| panic!("no version in {first}"))
        .to_string();
    eprintln!(
        "Claude Code's MCP client: {} with protocol version {version}",
        first["method"]
    );
    assert!(
        claude_failover::commands::mcp::PROTOCOL_VERSIONS.contains(&version.as_str()),
        "{version}"
    );
    assert!(
        methods.contains(&"tools/list")
            && methods.iter().filter(|m| **m == "tools/call").count() == 2,
        "{methods:?}"
    );

    // The stand-in got the fleet's real status as the first tool's result.
    // Claude Code hands the model a tool's structured content when there is
    // one (the JSON, not the text): the daemon's own /status fields.
    let reqs = w.api.requests();
    let results: Vec<Value> = reqs
        .iter()
        .flat_map(|r| r.tool_results.iter())
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect();
    let status = results
        .iter()
        .find(|v| v.get("active_account").is_some())
        .unwrap_or_else(|| panic!("no fleet status came back: {said}\n{results:#?}"));
    assert_eq!(status["active_account"], "alpha", "{status}");
    assert_eq!(status["sessions"][0]["name"], "ccl-auto-11", "{status}");
    assert_eq!(status["sessions"][0]["state"], "idle", "{status}");
    assert!(status["queues"]["demo"].is_object(), "{status}");
    assert_eq!(
        status["accounts"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    // Then the task was queued, and the pool did it.
    assert!(
        results
            .iter()
            .any(|v| v["project"] == "demo" && v["task"] == "greeting"),
        "{results:#?}"
    );
    let project = w.sb.project_dirs[0].1.clone();
    let name = wait_for(Duration::from_secs(30), "the greeting's name", || {
        ["inbox", "active", "done"].iter().find_map(|f| {
            std::fs::read_dir(queue_dir(&project, f))
                .ok()?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.contains("greeting") && n.ends_with(".md"))
                .map(|n| n.trim_end_matches(".md").to_string())
        })
    });
    assert_eq!(
        wait_task_ended(&project, &name, Duration::from_secs(120)),
        "done"
    );
}
