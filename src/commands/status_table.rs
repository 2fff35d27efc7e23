//! The readable table `claude-failover status` prints from the daemon's
//! `GET /status` JSON: a header line, then ACCOUNTS, SESSIONS, QUEUES and
//! LAST SWAP.
//!
//! It reads the JSON loosely: any field may be missing, null or of another
//! type, and is then shown as `-` rather than failing.
//!
//! Times: the crate has no time-zone database, so a reset is shown both as
//! a relative time and as a UTC clock time, e.g. `resets in 2h13m (14:05 UTC)`,
//! with the weekday (`Tue 14:05 UTC`) when it is not today in UTC, or the
//! date when it is a week or more away. Other times (`since`, the last
//! swap) are relative: `5m ago`.
//!
//! Output is plain text; columns are aligned by character count and every
//! cell is stripped of control characters so one odd value cannot break
//! the layout.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::sys::time::{civil_from_days, parse_rfc3339, unix_secs};

const BAR_WIDTH: usize = 10;
const ERROR_WIDTH: usize = 60;
const TASK_WIDTH: usize = 40;

/// The whole table, ending with a newline.
pub fn render(status: &Value, now: SystemTime) -> String {
    let mut out = String::new();
    header(&mut out, status);
    out.push('\n');
    accounts(&mut out, status, now);
    out.push('\n');
    sessions(&mut out, status, now);
    out.push('\n');
    queues(&mut out, status);
    out.push('\n');
    last_swap(&mut out, status, now);
    fleet(&mut out, status);
    out
}

/// With `fleet.redis`: this machine's link and every machine's account.
fn fleet(out: &mut String, s: &Value) {
    let Some(f) = s.get("fleet").filter(|f| f.is_object()) else {
        return;
    };
    let me = text(f.get("machine")).unwrap_or_else(|| "?".into());
    out.push('\n');
    if flag(f.get("connected")) {
        out.push_str(&format!("FLEET (this machine: {me}, connected)\n"));
    } else {
        let why = text(f.get("error")).unwrap_or_default();
        out.push_str(&format!(
            "FLEET (this machine: {me}, DISCONNECTED: going on alone; {why})\n"
        ));
    }
    let rows = list(f.get("machines"))
        .iter()
        .map(|m| {
            vec![
                text(m.get("machine")).unwrap_or_default(),
                text(m.get("account")).unwrap_or_default(),
                number(m.get("sessions"))
                    .map(|n| format!("{n}"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(out, &["MACHINE", "ACCOUNT", "SESSIONS"], &[2], rows);
}

fn header(out: &mut String, s: &Value) {
    let version = text(s.get("version")).unwrap_or_else(|| "?".into());
    let active = text(s.get("active_account")).unwrap_or_else(|| "none".into());
    let mut line = format!("claude-failover {version}   active account: {active}");
    if flag(s.get("swap_in_progress")) {
        line.push_str("   swap in progress");
    }
    out.push_str(&line);
    out.push('\n');
    if flag(s.get("partial_swap")) {
        out.push_str("!!! PARTIAL SWAP: sessions are split between accounts; see LAST SWAP and the log !!!\n");
    }
    if let Some(e) = text(s.get("config_error")) {
        out.push_str(&format!(
            "CONFIG ERROR (last reload refused, old config still running): {e}\n"
        ));
    }
    for p in list(s.get("health_problems")) {
        if let Some(p) = text(Some(p)) {
            out.push_str(&format!("unhealthy: {p}\n"));
        }
    }
    if let Some(held) = s.get("held_pools").and_then(Value::as_object) {
        for (pool, why) in held {
            out.push_str(&format!(
                "pool {pool} holds its tasks: {}\n",
                text(Some(why)).unwrap_or_default()
            ));
        }
    }
    let unmanaged: Vec<String> = list(s.get("unmanaged_sessions"))
        .iter()
        .filter_map(|v| text(Some(v)))
        .collect();
    if !unmanaged.is_empty() {
        out.push_str(&format!(
            "unmanaged tmux sessions (not touched): {}\n",
            unmanaged.join(", ")
        ));
    }
}

fn accounts(out: &mut String, s: &Value, now: SystemTime) {
    out.push_str("ACCOUNTS\n");
    let active = text(s.get("active_account"));
    let rows: Vec<Vec<String>> = list(s.get("accounts"))
        .iter()
        .map(|a| {
            let name = text(a.get("name")).unwrap_or_else(|| "?".into());
            let marker = if active.as_deref() == Some(name.as_str()) {
                "*"
            } else {
                ""
            };
            let usable = match a.get("usable").and_then(Value::as_bool) {
                Some(true) => "usable".to_string(),
                Some(false) => text(a.get("reason")).unwrap_or_else(|| "not usable".into()),
                None => text(a.get("reason")).unwrap_or_else(|| "-".into()),
            };
            vec![
                name,
                marker.to_string(),
                usable,
                window(a.get("five_hour"), now),
                window(a.get("seven_day"), now),
                seen(a, now),
            ]
        })
        .collect();
    table(
        out,
        &["ACCOUNT", "", "STATUS", "5-HOUR", "7-DAY", "READING"],
        &[],
        rows,
    );
    // The model-scoped weekly limits, one row each, with the pools they keep.
    let scoped: Vec<Vec<String>> = list(s.get("accounts"))
        .iter()
        .flat_map(|a| {
            let name = text(a.get("name")).unwrap_or_else(|| "?".into());
            let blocked = a.get("blocked_pools").and_then(Value::as_object);
            list(a.get("limits"))
                .iter()
                .filter(|l| text(l.get("kind")).as_deref() == Some("weekly_scoped"))
                .map(|l| {
                    let model = text(l.get("model")).unwrap_or_else(|| "?".into());
                    let pools: Vec<String> = blocked
                        .map(|b| b.keys().cloned().collect())
                        .unwrap_or_default();
                    vec![
                        name.clone(),
                        model,
                        window(Some(l), now),
                        if pools.is_empty() {
                            "-".into()
                        } else {
                            pools.join(", ")
                        },
                    ]
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if !scoped.is_empty() {
        out.push('\n');
        out.push_str("MODEL LIMITS (weekly, per model)\n");
        table(
            out,
            &["ACCOUNT", "MODEL", "WEEK", "KEEPS POOLS"],
            &[],
            scoped,
        );
    }
}

/// `[######----]  62% resets in 2h13m (14:05 UTC)`, or `-` when unknown.
fn window(w: Option<&Value>, now: SystemTime) -> String {
    let Some(w) = w.filter(|w| w.is_object()) else {
        return "-".into();
    };
    let Some(u) = number(w.get("utilization")) else {
        return "-".into();
    };
    let mut cell = format!("{} {:>3.0}%", bar(u), u);
    if let Some(t) = w.get("resets_at").and_then(time_value) {
        cell.push_str(&format!(
            " resets {} ({})",
            relative(t, now),
            utc_clock(t, now)
        ));
    }
    cell
}

/// `[######----]`: ten cells, each 10%, rounded to the nearest.
pub fn bar(utilization: f64) -> String {
    let u = if utilization.is_finite() {
        utilization.clamp(0.0, 100.0)
    } else {
        0.0
    };
    let filled = ((u / 100.0) * BAR_WIDTH as f64).round() as usize;
    let filled = filled.min(BAR_WIDTH);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

/// Where and when the account's latest quota reading came from.
fn seen(a: &Value, now: SystemTime) -> String {
    let windows = [a.get("five_hour"), a.get("seven_day")];
    let latest = windows
        .iter()
        .flatten()
        .filter_map(|w| w.get("observed_at").and_then(time_value))
        .max();
    let source = windows.iter().flatten().find_map(|w| text(w.get("source")));
    match (source, latest) {
        (Some(src), Some(t)) => format!("{src} {}", relative(t, now)),
        (None, Some(t)) => relative(t, now),
        (Some(src), None) => src,
        (None, None) => "-".into(),
    }
}

fn sessions(out: &mut String, s: &Value, now: SystemTime) {
    out.push_str("SESSIONS\n");
    let rows: Vec<Vec<String>> = list(s.get("sessions"))
        .iter()
        .map(|x| {
            let since = match x.get("since") {
                Some(v) => time_value(v)
                    .map(|t| relative(t, now))
                    .or_else(|| text(Some(v))),
                None => None,
            };
            vec![
                text(x.get("name")).unwrap_or_else(|| "?".into()),
                dash(text(x.get("pool"))),
                dash(text(x.get("state"))),
                dash(text(x.get("account"))),
                dash(text(x.get("task")).map(|t| cut(&t, TASK_WIDTH))),
                dash(since),
                dash(text(x.get("restarts"))),
                dash(text(x.get("last_error")).map(|e| cut(&e, ERROR_WIDTH))),
            ]
        })
        .collect();
    table(
        out,
        &[
            "SESSION",
            "POOL",
            "STATE",
            "ACCOUNT",
            "TASK",
            "SINCE",
            "RESTARTS",
            "LAST ERROR",
        ],
        &[6],
        rows,
    );
}

fn queues(out: &mut String, s: &Value) {
    out.push_str("QUEUES\n");
    let rows: Vec<Vec<String>> = match s.get("queues").and_then(Value::as_object) {
        Some(m) => m
            .iter()
            .map(|(project, q)| {
                let mut row = vec![clean(project)];
                for k in ["inbox", "active", "done", "failed"] {
                    row.push(dash(text(q.get(k))));
                }
                row
            })
            .collect(),
        None => Vec::new(),
    };
    table(
        out,
        &["PROJECT", "INBOX", "ACTIVE", "DONE", "FAILED"],
        &[1, 2, 3, 4],
        rows,
    );
}

fn last_swap(out: &mut String, s: &Value, now: SystemTime) {
    out.push_str("LAST SWAP\n");
    let Some(l) = s.get("last_swap").filter(|l| l.is_object()) else {
        out.push_str("  (none)\n");
        return;
    };
    let from = text(l.get("from")).unwrap_or_else(|| "?".into());
    let to = text(l.get("to")).unwrap_or_else(|| "?".into());
    let result = text(l.get("result")).unwrap_or_else(|| "?".into());
    let mut line = format!("  {from} -> {to}   {}", result.to_uppercase());
    if let Some(ms) = number(l.get("duration_ms")) {
        line.push_str(&format!("   took {:.1}s", ms / 1000.0));
    }
    if let Some(t) = l.get("started_at").and_then(time_value) {
        line.push_str(&format!("   started {}", relative(t, now)));
    }
    out.push_str(&line);
    out.push('\n');
    if let Some(r) = text(l.get("reason")) {
        out.push_str(&format!("  reason: {r}\n"));
    }
    if let Some(d) = text(l.get("detail")) {
        out.push_str(&format!("  detail: {d}\n"));
    }
}

/// Left-aligned columns (right-aligned where `right` lists the index), two
/// spaces apart, no trailing blanks; `(none)` for no rows.
fn table(out: &mut String, headers: &[&str], right: &[usize], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::from("  ");
        for (i, w) in widths.iter().enumerate() {
            let c = r.get(i).map(String::as_str).unwrap_or("");
            let pad = w.saturating_sub(c.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// A JSON scalar as one clean line of text; `None` for null, missing,
/// arrays, objects and blank strings.
fn text(v: Option<&Value>) -> Option<String> {
    let s = match v? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    let s = clean(&s);
    (!s.is_empty()).then_some(s)
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

fn flag(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool).unwrap_or(false)
}

fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// An RFC 3339 string or Unix seconds.
fn time_value(v: &Value) -> Option<SystemTime> {
    match v {
        Value::String(s) => parse_rfc3339(s.trim()),
        Value::Number(n) => n
            .as_u64()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        _ => None,
    }
}

/// Control characters become spaces, runs of blanks collapse, ends trimmed.
fn clean(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    mapped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max` characters, ending in `...` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let kept: String = s.chars().take(max.saturating_sub(3)).collect();
    format!("{}...", kept.trim_end())
}

/// `in 2h13m`, `5m ago`, `now`.
pub fn relative(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(d) if d.as_secs() == 0 => "now".into(),
        Ok(d) => format!("in {}", span(d.as_secs())),
        Err(e) if e.duration().as_secs() == 0 => "now".into(),
        Err(e) => format!("{} ago", span(e.duration().as_secs())),
    }
}

/// `45s`, `12m`, `2h13m`, `3d4h`.
fn span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

/// `14:05 UTC` when `t` falls on today's UTC date, `Tue 14:05 UTC` within
/// the coming or past six days, `2026-01-09 14:05 UTC` otherwise.
pub fn utc_clock(t: SystemTime, now: SystemTime) -> String {
    let secs = unix_secs(t) as i64;
    let (day, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let today = (unix_secs(now) as i64).div_euclid(86_400);
    let clock = format!("{:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60);
    if day == today {
        clock
    } else if (day - today).abs() < 7 {
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        // 1970-01-01 was a Thursday.
        format!("{} {clock}", DAYS[(day + 4).rem_euclid(7) as usize])
    } else {
        let (y, m, d) = civil_from_days(day);
        format!("{y:04}-{m:02}-{d:02} {clock}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> SystemTime {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn the_fleet_shows_only_with_one_and_says_when_it_is_disconnected() {
        let now = at("2026-01-06T10:00:00Z");
        assert!(!render(&json!({}), now).contains("FLEET"));
        let s = json!({"fleet": {"machine": "vm-1", "connected": true, "machines": [
            {"machine": "vm-1", "account": "beta", "sessions": 10},
            {"machine": "vm-2", "account": "gamma", "sessions": 4}]}});
        let out = render(&s, now);
        assert!(
            out.contains("FLEET (this machine: vm-1, connected)"),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.contains("vm-2") && l.contains("gamma") && l.ends_with('4')),
            "{out}"
        );
        let s = json!({"fleet": {"machine": "vm-1", "connected": false, "error": "connection refused", "machines": []}});
        let out = render(&s, now);
        assert!(
            out.contains("DISCONNECTED: going on alone; connection refused"),
            "{out}"
        );
    }

    #[test]
    fn bars_round_and_clamp() {
        assert_eq!(bar(0.0), "[----------]");
        assert_eq!(bar(62.0), "[######----]");
        assert_eq!(bar(65.0), "[#######---]");
        assert_eq!(bar(100.0), "[##########]");
        assert_eq!(bar(250.0), "[##########]");
        assert_eq!(bar(-3.0), "[----------]");
        assert_eq!(bar(f64::NAN), "[----------]");
    }

    #[test]
    fn relative_and_clock_times() {
        let now = at("2026-01-06T10:00:00Z"); // a Tuesday
        assert_eq!(relative(at("2026-01-06T12:13:30Z"), now), "in 2h13m");
        assert_eq!(relative(at("2026-01-06T09:55:00Z"), now), "5m ago");
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(at("2026-01-09T14:00:00Z"), now), "in 3d4h");
        assert_eq!(utc_clock(at("2026-01-06T14:05:00Z"), now), "14:05 UTC");
        assert_eq!(utc_clock(at("2026-01-07T14:05:00Z"), now), "Wed 14:05 UTC");
        assert_eq!(
            utc_clock(at("2026-01-13T14:05:00Z"), now),
            "2026-01-13 14:05 UTC"
        );
    }

    #[test]
    fn tolerates_anything() {
        let now = at("2026-01-06T10:00:00Z");
        for v in [
            json!(null),
            json!(42),
            json!("x"),
            json!([]),
            json!({}),
            json!({"accounts": "nope", "sessions": {}, "queues": [], "last_swap": 3}),
            json!({"accounts": [null, 1, {"name": null, "five_hour": {"utilization": "abc"}, "seven_day": []}],
                   "sessions": [null, {"since": 5, "restarts": null, "last_error": {"x": 1}}],
                   "queues": {"p": null, "q": {"inbox": "3"}},
                   "last_swap": {"from": null, "duration_ms": "x", "started_at": 12}}),
        ] {
            let t = render(&v, now);
            assert!(
                t.contains("ACCOUNTS\n")
                    && t.contains("SESSIONS\n")
                    && t.contains("QUEUES\n")
                    && t.contains("LAST SWAP\n")
            );
        }
    }

    #[test]
    fn cuts_long_text() {
        let long = "e".repeat(100);
        let c = cut(&long, ERROR_WIDTH);
        assert_eq!(c.chars().count(), ERROR_WIDTH);
        assert!(c.ends_with("..."));
        assert_eq!(cut("short", 60), "short");
        assert_eq!(clean("a\nb\t\tc "), "a b c");
    }
}
