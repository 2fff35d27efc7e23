//! `claude-failover events [--follow] [--json] [--since DURATION]`: the
//! daemon's event stream (`GET /events`) in a terminal, one line per event,
//! like `journalctl -f`. Without `--follow` it prints what the daemon keeps
//! (its bounded backlog, from `--since` ago when given) and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{exit, Failed, Outcome};
use crate::config::Config;

pub fn events_command(config: &Config, follow: bool, json: bool, since: Option<&str>) -> Outcome {
    let fail = |line: String| {
        Err(Failed::new(
            exit::FAILURE,
            format!("claude-failover events: {line}"),
        ))
    };
    let since_ms = match since.map(crate::config::durations::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(UNIX_EPOCH)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        ),
        Some(Err(e)) => return fail(format!("--since: {e}")),
    };
    let token = match super::read_token(config) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let addr = config.http.listen;
    let stream = match TcpStream::connect_timeout(&addr, crate::daemon::http::CLIENT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return fail(format!("the daemon at {addr} is unreachable: {e}")),
    };
    let mut query = Vec::new();
    if !follow {
        query.push("once=1".to_string());
        // The whole backlog unless --since says from when.
        query.push(format!("since_ms={}", since_ms.unwrap_or(0)));
    } else if let Some(ms) = since_ms {
        query.push(format!("since_ms={ms}"));
    }
    let mut req = format!(
        "GET /events?{} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n",
        query.join("&")
    );
    if let Some(t) = &token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    if let Err(e) = (&stream).write_all(req.as_bytes()) {
        return fail(format!("cannot ask {addr}: {e}"));
    }
    // Following, a ping comes every 15 s: three missed say the daemon (or
    // the way to it) is gone. Without --follow the answer is quick.
    let _ = stream.set_read_timeout(Some(if follow {
        crate::daemon::event_stream::PING_EVERY * 3
    } else {
        Duration::from_secs(30)
    }));
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    if reader.read_line(&mut status).is_err() || !status.starts_with("HTTP/1.1 200") {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut body);
        let why = body
            .split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| status.trim().to_string());
        return fail(format!("{addr} refused: {why}"));
    }
    // The head.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(exit::OK),
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
            Err(e) => return fail(format!("reading from {addr}: {e}")),
        }
    }
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return fail(format!(
                    "{addr} sent nothing, not even a ping, for {}s",
                    if follow {
                        crate::daemon::event_stream::PING_EVERY.as_secs() * 3
                    } else {
                        30
                    }
                ));
            }
            Err(e) => return fail(format!("reading from {addr}: {e}")),
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if json {
            outln!("{data}");
        } else {
            outln!("{}", render(&v));
        }
    }
    if follow {
        return fail(format!("the daemon at {addr} closed the stream"));
    }
    Ok(exit::OK)
}

/// One event as a reader wants it: local time, kind, what happened.
pub fn render(v: &serde_json::Value) -> String {
    let at = v["at_ms"].as_u64().unwrap_or(0);
    let when = crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_millis(at));
    let kind = v["kind"].as_str().unwrap_or("?");
    let d = &v["data"];
    let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
    let what = match kind {
        "session" => {
            let mut t = format!("{} {}", s("name"), s("state"));
            if let Some(a) = d["account"].as_str() {
                t.push_str(&format!(" on {a}"));
            }
            if let Some(task) = d["task"].as_str() {
                t.push_str(&format!(", task {task}"));
            }
            if let Some(e) = d["last_error"].as_str() {
                t.push_str(&format!(" ({e})"));
            }
            t
        }
        "task_claimed" => format!(
            "{}/{} → {} on {}",
            s("project"),
            s("task"),
            s("session"),
            s("account")
        ),
        "task_done" => format!(
            "{}/{} done by {}{}",
            s("project"),
            s("task"),
            s("session"),
            d["answer"]
                .as_str()
                .map(|a| format!(": {a}"))
                .unwrap_or_default()
        ),
        "task_failed" => format!("{}/{} failed: {}", s("project"), s("task"), s("reason")),
        "queue" => {
            let c = &d["counts"];
            format!(
                "{}: {} waiting, {} active, {} done, {} failed",
                s("project"),
                c["inbox"],
                c["active"],
                c["done"],
                c["failed"]
            )
        }
        "quota" => {
            let pct = |w: &serde_json::Value| {
                w["utilization"]
                    .as_f64()
                    .map(|u| format!("{u:.0}%"))
                    .unwrap_or_else(|| "–".into())
            };
            format!(
                "{}: 5-hour {}, weekly {}{}",
                s("name"),
                pct(&d["quota"]["five_hour"]),
                pct(&d["quota"]["seven_day"]),
                if d["usable"] == false {
                    format!(", not usable: {}", s("reason"))
                } else {
                    String::new()
                }
            )
        }
        "swap_started" => format!(
            "{} {} → {}: {}",
            s("swap_id"),
            s("from"),
            s("to"),
            s("reason")
        ),
        "swap_phase" => format!("{} {}", s("swap_id"), s("phase")),
        "swap_ended" => format!(
            "{} {} → {} {} in {} ms{}",
            s("id"),
            s("from"),
            s("to"),
            s("result"),
            d["duration_ms"],
            d["detail"]
                .as_str()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        ),
        "notification" => format!("{}: {}", s("kind"), s("text")),
        "fleet" => format!(
            "machine {} {} {} → {}{}",
            s("machine"),
            s("kind").replace('_', " "),
            s("from"),
            s("to"),
            d["result"]
                .as_str()
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        ),
        "fleet_machines" => d["machines"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|m| {
                        format!(
                            "{} on {} ({} sessions)",
                            m["machine"].as_str().unwrap_or(""),
                            m["account"].as_str().unwrap_or(""),
                            m["sessions"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        "config_reloaded" => match d["error"].as_str() {
            Some(e) => format!("refused: {e}"),
            None => "applied".into(),
        },
        _ => d.to_string(),
    };
    // What Claude Code answered, or an error's text, may hold escape
    // sequences: none reaches the terminal.
    let what: String = what
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{when} {kind:<15} {what}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_line_carries_no_control_character() {
        let v = serde_json::json!({"at_ms": 0, "kind": "task_done", "data": {
            "project": "p", "task": "t", "session": "s", "answer": "ok\u{1b}]52;c;ZXZpbA==\u{7}\nnext"}});
        let line = super::render(&v);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("p/t done by s: ok ]52;c;ZXZpbA==  next"),
            "{line}"
        );
    }

    #[test]
    fn another_machines_swap_reads_as_one_line() {
        let v = serde_json::json!({"at_ms": 0, "kind": "fleet", "data": {
            "machine": "vm-2", "kind": "swap_ended", "from": "alpha", "to": "gamma", "result": "done"}});
        let line = super::render(&v);
        assert!(
            line.contains("machine vm-2 swap ended alpha → gamma done"),
            "{line}"
        );
    }
}
