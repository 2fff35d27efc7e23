//! Our entries in an account's `settings.json`: the hook commands (and,
//! later, the status line). Everything else in that file belongs to the
//! user and is kept exactly as it was, including their own hooks.

use serde_json::{json, Map, Value};

use crate::claude::facts;

/// The hook command line for `binary`: `'<binary>' hook`.
pub fn hook_command(binary: &str) -> String {
    format!("{} hook", shell_quote(binary))
}

/// True for a hook command this program installed (any install path).
pub fn is_ours(command: &str) -> bool {
    let Some(program) = command.strip_suffix(" hook") else {
        return false;
    };
    let program = program.trim_matches('\'');
    program.rsplit('/').next() == Some("claude-failover")
}

/// Returns `settings` with our hook command on every event of
/// [`facts::HOOK_EVENTS`], and whether anything changed. Our stale entries
/// (another install path) are replaced; the user's are left alone.
pub fn with_hooks(settings: &Value, command: &str) -> Result<(Value, bool), String> {
    let mut root = match settings {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        _ => return Err("settings.json is not a JSON object".into()),
    };
    let mut hooks = match root.remove("hooks") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("settings.json \"hooks\" is not an object".into()),
    };
    let mut changed = false;
    for event in facts::HOOK_EVENTS {
        let groups = match hooks.remove(event) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(format!("settings.json hooks.{event} is not a list")),
        };
        let mut present = false;
        let mut kept = Vec::with_capacity(groups.len() + 1);
        for mut group in groups {
            if let Some(list) = group.get_mut("hooks").and_then(Value::as_array_mut) {
                let before = list.len();
                list.retain(|h| {
                    let cmd = h.get("command").and_then(Value::as_str).unwrap_or("");
                    if cmd == command {
                        present = true;
                        true
                    } else {
                        !is_ours(cmd)
                    }
                });
                if list.len() != before {
                    changed = true;
                }
                if list.is_empty() && before > 0 {
                    // The group held only our stale entry: drop it.
                    continue;
                }
            }
            kept.push(group);
        }
        if !present {
            kept.push(json!({ "hooks": [ { "type": "command", "command": command } ] }));
            changed = true;
        }
        hooks.insert(event.to_string(), Value::Array(kept));
    }
    root.insert("hooks".into(), Value::Object(hooks));
    Ok((Value::Object(root), changed))
}

/// The status-line command line for `binary`: `'<binary>' statusline`.
pub fn statusline_command(binary: &str) -> String {
    format!("{} statusline", shell_quote(binary))
}

/// True for a status-line command this program installed (any install path).
pub fn is_our_statusline(command: &str) -> bool {
    command
        .strip_suffix(" statusline")
        .map(|p| p.trim_matches('\'').rsplit('/').next() == Some("claude-failover"))
        .unwrap_or(false)
}

/// The user's own status-line command, when they have one that is not ours.
pub fn users_statusline(settings: &Value) -> Option<String> {
    let cmd = settings.get("statusLine")?.get("command")?.as_str()?;
    (!is_our_statusline(cmd)).then(|| cmd.to_string())
}

/// Returns `settings` with our status line, and whether anything changed.
/// A status line of the user's is kept (then passive quota readings are off
/// for that account and the usage endpoint is polled instead).
pub fn with_statusline(settings: &Value, command: &str) -> Result<(Value, bool), String> {
    let mut root = match settings {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        _ => return Err("settings.json is not a JSON object".into()),
    };
    if users_statusline(settings).is_some() {
        return Ok((Value::Object(root), false));
    }
    let wanted = json!({ "type": "command", "command": command, "padding": 0 });
    if root.get("statusLine") == Some(&wanted) {
        return Ok((Value::Object(root), false));
    }
    root.insert("statusLine".into(), wanted);
    Ok((Value::Object(root), true))
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_user_hooks_and_keys_and_is_idempotent() {
        let user = json!({
            "model": "opus",
            "hooks": { "Stop": [ { "hooks": [ { "type": "command", "command": "notify-send done" } ] } ] }
        });
        let cmd = hook_command("/usr/bin/claude-failover");
        let (once, changed) = with_hooks(&user, &cmd).unwrap();
        assert!(changed);
        assert_eq!(once["model"], "opus");
        let stop = once["hooks"]["Stop"].as_array().unwrap();
        assert_eq!(stop.len(), 2);
        assert_eq!(stop[0]["hooks"][0]["command"], "notify-send done");
        assert_eq!(stop[1]["hooks"][0]["command"], cmd.as_str());
        for e in facts::HOOK_EVENTS {
            assert!(
                once["hooks"][e]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g["hooks"][0]["command"] == cmd.as_str()),
                "{e}"
            );
        }
        let (twice, changed) = with_hooks(&once, &cmd).unwrap();
        assert!(!changed);
        assert_eq!(twice, once);
    }

    #[test]
    fn replaces_our_stale_install_path_only() {
        let old = hook_command("/opt/old/claude-failover");
        let (first, _) = with_hooks(&Value::Null, &old).unwrap();
        let new = hook_command("/usr/local/bin/claude-failover");
        let (second, changed) = with_hooks(&first, &new).unwrap();
        assert!(changed);
        let text = second.to_string();
        assert!(!text.contains("/opt/old"), "{text}");
        assert_eq!(second["hooks"]["Stop"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn refuses_odd_shapes() {
        assert!(with_hooks(&json!([1]), "x hook").is_err());
        assert!(with_hooks(&json!({"hooks": 3}), "x hook").is_err());
        assert!(with_hooks(&json!({"hooks": {"Stop": {}}}), "x hook").is_err());
    }

    #[test]
    fn statusline_is_ours_unless_the_user_has_one() {
        let cmd = statusline_command("/usr/bin/claude-failover");
        let (v, changed) = with_statusline(&json!({"model": "x"}), &cmd).unwrap();
        assert!(changed);
        assert_eq!(v["statusLine"]["command"], cmd.as_str());
        assert_eq!(v["model"], "x");
        assert!(!with_statusline(&v, &cmd).unwrap().1);
        let users = json!({"statusLine": {"type": "command", "command": "~/bin/my-line"}});
        let (kept, changed) = with_statusline(&users, &cmd).unwrap();
        assert!(!changed);
        assert_eq!(kept, users);
        assert_eq!(users_statusline(&users).as_deref(), Some("~/bin/my-line"));
        let (moved, changed) = with_statusline(
            &with_statusline(&Value::Null, &statusline_command("/old/claude-failover"))
                .unwrap()
                .0,
            &cmd,
        )
        .unwrap();
        assert!(changed);
        assert_eq!(moved["statusLine"]["command"], cmd.as_str());
    }

    #[test]
    fn recognises_ours() {
        assert!(is_ours("/usr/bin/claude-failover hook"));
        assert!(is_ours("'/tmp/a b/claude-failover' hook"));
        assert!(!is_ours("claude-failover-other hook"));
        assert!(!is_ours("/usr/bin/claude-failover statusline"));
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
    }
}
