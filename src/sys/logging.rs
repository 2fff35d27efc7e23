//! The daemon's log: env_logger on stderr, in the format `log.format` asks
//! for. `text` (the default) is `[time LEVEL target] message`; `json` is one
//! object per line with `ts`, `level`, `target`, `msg` and, when the message
//! names them, `session`, `account`, `swap_id`, `task` and `project` (read
//! off the message against the configured pools and accounts), for a log
//! aggregator. `RUST_LOG`, when set, chooses the levels; else `log.level`.
//!
//! The format can change after start (the config is read after the logger
//! is up, and again on reload): the formatter reads it at every line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use serde_json::{Map, Value};

static JSON: AtomicBool = AtomicBool::new(false);
/// (session name prefixes, account names) of the config in force.
static NAMES: RwLock<(Vec<String>, Vec<String>)> = RwLock::new((Vec::new(), Vec::new()));

/// Starts the logger (once, in `main`).
pub fn init() {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(
        // Without RUST_LOG every record reaches us and `log.level` (the
        // global max level) decides.
        "trace",
    ));
    b.format(|buf, record| {
        let msg = record.args().to_string();
        if JSON.load(Ordering::Relaxed) {
            let names = NAMES.read();
            let line = json_line(
                &crate::sys::time::rfc3339_millis(std::time::SystemTime::now()),
                record.level().as_str(),
                record.target(),
                &msg,
                &names.0,
                &names.1,
            );
            writeln!(buf, "{line}")
        } else {
            writeln!(
                buf,
                "[{} {:<5} {}] {msg}",
                crate::sys::time::rfc3339_millis(std::time::SystemTime::now()),
                record.level(),
                record.target()
            )
        }
    });
    let _ = b.try_init();
    if !from_env {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Applies `log` of the config (and its names, for the JSON fields).
pub fn configure(config: &crate::config::Config) {
    JSON.store(
        config.log.format == crate::config::LogFormat::Json,
        Ordering::Relaxed,
    );
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(config.log.level);
    }
    *NAMES.write() = (
        config.pools.iter().map(|p| p.prefix.clone()).collect(),
        config.accounts.iter().map(|a| a.name.clone()).collect(),
    );
    if json() {
        // A panic is one JSON line too, not a text block.
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            log::error!(
                "thread {} panicked{at}: {what}",
                std::thread::current().name().unwrap_or("?")
            );
        }));
    }
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A line for stderr outside the logger (a command's last words): JSON when
/// the log is.
pub fn last_words(line: &str) {
    if json() {
        log::error!("{line}");
    } else {
        eprintln!("{line}");
    }
}

/// One JSON log line. Pure: the fields it finds in `msg` are those the
/// daemon's messages carry by convention — `NAME: …` for a session whose
/// name starts with a pool's prefix, `swap-<ms>` for a swap, `task P/N`
/// for a task of project P, and an account named after `under`, `on`,
/// `to`, `→` or `account`.
pub fn json_line(
    ts: &str,
    level: &str,
    target: &str,
    msg: &str,
    prefixes: &[String],
    accounts: &[String],
) -> String {
    let mut o = Map::new();
    o.insert("ts".into(), ts.into());
    o.insert("level".into(), level.to_lowercase().into());
    o.insert("target".into(), target.into());
    o.insert("msg".into(), msg.into());
    if let Some((head, _)) = msg.split_once(": ") {
        if !head.contains(' ') && prefixes.iter().any(|p| head.starts_with(p.as_str())) {
            o.insert("session".into(), head.into());
        }
    }
    let words: Vec<&str> = msg
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    if let Some(id) = words.iter().find_map(|w| {
        let w = w.trim_end_matches(':');
        let digits = w.strip_prefix("swap-")?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(w)
    }) {
        o.insert("swap_id".into(), id.into());
    }
    for pair in words.windows(2) {
        if pair[0] == "task" {
            let t = pair[1].trim_end_matches(':');
            if let Some((p, n)) = t.split_once('/') {
                if !p.is_empty() && !n.is_empty() {
                    o.insert("project".into(), p.into());
                    o.insert("task".into(), n.into());
                    break;
                }
            }
        }
    }
    if !o.contains_key("project") {
        if let Some(p) = words
            .windows(2)
            .find(|w| w[0] == "project")
            .map(|w| w[1].trim_end_matches(':'))
        {
            o.insert("project".into(), p.into());
        }
    }
    if let Some(a) = words.windows(2).find_map(|w| {
        let a = w[1].trim_end_matches([':', '.']);
        (matches!(w[0], "under" | "on" | "to" | "→" | "account") && accounts.iter().any(|x| x == a))
            .then_some(a)
    }) {
        o.insert("account".into(), a.into());
    }
    Value::Object(o).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(msg: &str) -> Value {
        serde_json::from_str(&json_line(
            "2026-12-02T10:00:00.000Z",
            "WARN",
            "claude_failover::daemon",
            msg,
            &["ccl-auto-".into()],
            &["alpha".into(), "beta".into()],
        ))
        .unwrap()
    }

    #[test]
    fn every_line_has_the_four_fields_and_the_message_verbatim() {
        let msg = "a \"quoted\" word,\ttab and a newline\nhere";
        let v = line(msg);
        assert_eq!(v["ts"], "2026-12-02T10:00:00.000Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "claude_failover::daemon");
        assert_eq!(v["msg"], msg);
        assert!(v.get("session").is_none() && v.get("account").is_none());
    }

    #[test]
    fn the_known_fields_are_read_off_the_message() {
        let v = line("ccl-auto-12: launched under beta, resuming 0b5e");
        assert_eq!(
            (v["session"].as_str(), v["account"].as_str()),
            (Some("ccl-auto-12"), Some("beta"))
        );
        let v = line("swap swap-1796227456146: done in 8 ms, every session on beta");
        assert_eq!(v["swap_id"], "swap-1796227456146");
        assert_eq!(v["account"], "beta");
        assert!(v.get("session").is_none());
        let v = line("ccl-auto-11: task secuaas/fix-the-tests (attempt 1)");
        assert_eq!(
            (v["project"].as_str(), v["task"].as_str()),
            (Some("secuaas"), Some("fix-the-tests"))
        );
        let v = line("project secuaas: cannot claim x: busy");
        assert_eq!(v["project"], "secuaas");
        // Not a session of ours, not an account of ours.
        let v = line("tmux: launched under gamma");
        assert!(v.get("session").is_none() && v.get("account").is_none());
    }
}
