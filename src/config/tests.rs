use super::*;

const MINIMAL: &str = "accounts:\n  - name: main\n    home: /srv/acc/main\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/cf/config.yaml"))
}

fn invalid(text: &str) -> (String, Option<usize>, String) {
    match parse(text) {
        Err(ConfigError::Invalid { key, line, message }) => (key, line, message),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn durations_parse() {
    let ok = [
        ("0s", 0),
        ("500ms", 500),
        ("15s", 15_000),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("7d", 604_800_000),
        ("015s", 15_000),
    ];
    for (s, ms) in ok {
        assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
    }
    for s in [
        "",
        "15",
        "1.5s",
        "-1s",
        "+1s",
        "1x",
        "s",
        "1 s",
        " 1s",
        "1S",
        "1h30m",
        "1sec",
        "99999999999999999999d",
        "999999999999999d",
    ] {
        assert!(parse_duration(s).is_err(), "{s:?} should be refused");
    }
    assert!(parse_duration("15").unwrap_err().contains("no unit"));
}

#[test]
fn durations_format_with_the_largest_exact_unit() {
    for (ms, s) in [
        (0, "0s"),
        (1, "1ms"),
        (1500, "1500ms"),
        (15_000, "15s"),
        (90_000, "90s"),
        (120_000, "2m"),
        (3_600_000, "1h"),
        (86_400_000, "1d"),
        (90_000_000, "25h"),
    ] {
        let d = Duration::from_millis(ms);
        assert_eq!(format_duration(d), s);
        assert_eq!(parse_duration(s), Ok(d));
    }
}

#[test]
fn normalize_is_lexical() {
    assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
    assert_eq!(normalize(Path::new("/a/b/")), PathBuf::from("/a/b"));
}

#[test]
fn minimal_config_gets_the_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.source, PathBuf::from("/etc/cf/config.yaml"));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/claude-failover"));
    assert_eq!(c.claude.binary, "claude");
    assert_eq!(c.claude.startup_timeout, secs(60));
    assert_eq!(
        (c.tmux.socket.as_deref(), c.tmux.width, c.tmux.height),
        (None, 200, 50)
    );
    assert_eq!(c.shared, REQUIRED_SHARED);
    assert_eq!(c.active_link, None);
    assert_eq!(c.quota.usage_url, DEFAULT_USAGE_URL);
    assert_eq!(c.quota.poll_interval, secs(300));
    assert_eq!(
        (
            c.quota.five_hour_threshold,
            c.quota.seven_day_threshold,
            c.quota.hysteresis
        ),
        (90.0, 95.0, 10.0)
    );
    assert_eq!(c.quota.swap_cooldown, secs(120));
    assert!(c.pools.is_empty() && c.projects.is_empty());
    assert_eq!(c.lifecycle.interval, secs(15));
    assert_eq!(
        c.lifecycle.restart_backoff,
        [secs(1), secs(5), secs(30), secs(120)]
    );
    assert_eq!(
        (c.swap.drain_timeout, c.swap.stop_timeout),
        (secs(120), secs(10))
    );
    assert_eq!(
        (c.checkpoint.interval, c.checkpoint.keep),
        (secs(60), secs(DAY))
    );
    assert_eq!(c.janitor.interval, secs(300));
    assert_eq!(c.janitor.stale_task_after, secs(2 * HOUR));
    assert_eq!(c.janitor.done_retention, secs(7 * DAY));
    assert_eq!(c.janitor.max_attempts, 3);
    assert_eq!(
        c.http.listen,
        "127.0.0.1:7878".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.http.token_file, c.state_dir.join("http.token"));
    assert_eq!(c.notify.telegram, None);
    assert_eq!(c.notify.webhook_url, None);
    assert_eq!(c.notify.min_level, Level::Info);
}

#[test]
fn pool_defaults_and_relative_paths() {
    let text = format!(
            "{MINIMAL}pools:\n  - name: auto\n    prefix: a-\n    cwd: ../agents\nprojects:\n  - name: p\n    path: ./p/\n    pool: auto\n"
        );
    let c = parse(&text).expect("valid");
    let p = &c.pools[0];
    assert_eq!((p.start_index, p.min, p.max, p.dispatch), (0, 1, 10, true));
    assert_eq!(p.idle_shrink_after, secs(15 * MINUTE));
    assert_eq!(p.cwd, PathBuf::from("/etc/agents"));
    assert_eq!(c.projects[0].path, PathBuf::from("/etc/cf/p"));
}

#[test]
fn serde_errors_name_the_key_and_line() {
    let (key, line, msg) = invalid("accounts:\n  - name: main\n    home: /h\n    colour: red\n");
    assert_eq!((key.as_str(), line), ("accounts[0].colour", Some(4)));
    assert_eq!(msg, "unknown key; expected name or home");

    let (key, line, msg) = invalid(&format!("{MINIMAL}tmux:\n  width: wide\n"));
    assert_eq!((key.as_str(), line), ("tmux.width", Some(5)));
    assert!(msg.contains("expected an integer"), "{msg}");

    let (key, line, _) = invalid(&format!("{MINIMAL}bogus: 1\n"));
    assert_eq!((key.as_str(), line), ("bogus", Some(4)));

    let (key, line, msg) = invalid("accounts:\n  - name: a\n   home: x\n");
    assert_eq!((key.as_str(), line), ("", Some(3)));
    assert!(msg.starts_with("invalid YAML"), "{msg}");

    let (key, _, msg) = invalid("- 1\n");
    assert_eq!(key, "");
    assert!(msg.contains("expected a mapping"), "{msg}");
}

#[test]
fn duplicate_keys_point_at_the_second_occurrence() {
    let (key, line, _) = invalid("accounts:\n  - name: main\n    name: other\n    home: /h\n");
    assert_eq!((key.as_str(), line), ("accounts[0].name", Some(3)));
    let (key, line, _) = invalid(&format!("{MINIMAL}claude:\n  env:\n    A: x\n    A: y\n"));
    assert_eq!((key.as_str(), line), ("claude.env.A", Some(7)));
}

#[test]
fn display_is_key_line_message() {
    let e = ConfigError::Invalid {
        key: "pools[1].start_index".into(),
        line: Some(23),
        message: "must be ≥ 0".into(),
    };
    assert_eq!(e.to_string(), "pools[1].start_index (line 23): must be ≥ 0");
    let (key, line, msg) = invalid(&format!(
            "{MINIMAL}pools:\n  - name: a\n    prefix: a-\n    cwd: /x\n  - name: b\n    prefix: b-\n    cwd: /x\n    start_index: -1\n"
        ));
    assert_eq!(
        (key.as_str(), line, msg.as_str()),
        ("pools[1].start_index", Some(11), "must be ≥ 0")
    );
}

#[test]
fn session_name_collisions_are_found() {
    let (key, line, msg) = invalid(&format!(
            "{MINIMAL}pools:\n  - name: a\n    prefix: ccl-\n    start_index: 5\n    cwd: /x\n  - name: b\n    prefix: ccl-1\n    cwd: /x\n"
        ));
    assert_eq!((key.as_str(), line), ("pools[1].prefix", Some(10)));
    assert!(msg.contains("`ccl-10`"), "{msg}");
}

#[test]
fn localhost_listen_is_loopback() {
    let c = parse(&format!("{MINIMAL}http:\n  listen: localhost:9000\n")).expect("valid");
    assert_eq!(
        c.http.listen,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
}
