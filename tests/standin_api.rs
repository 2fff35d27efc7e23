//! The stand-in Anthropic API (`testkit::standin`) over real HTTP:
//! what Claude Code sees, and the control a test or the demo uses.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use testkit::standin::{
    answer_text, StandIn, StandInAccount, StandInOptions, UsageMode, UsageShape, RATE_LIMIT_MESSAGE,
};

const TOKEN_A: &str = "sk-ant-oat01-test-a";
const TOKEN_B: &str = "sk-ant-oat01-test-b";

fn options() -> StandInOptions {
    StandInOptions {
        accounts: vec![
            StandInAccount::new("a", TOKEN_A),
            StandInAccount::new("b", TOKEN_B),
        ],
        ..StandInOptions::default()
    }
}

fn start() -> StandIn {
    StandIn::start(options()).expect("start stand-in")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A request body shaped like Claude Code's: content blocks with a system
/// reminder before the prompt.
fn body(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [{
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>\nSome context.\n</system-reminder>"},
                {"type": "text", "text": prompt},
            ],
        }],
    })
}

/// Posts and returns (status, response) whatever the status.
fn post(url: &str, token: Option<&str>, body: &str) -> (u16, ureq::Response) {
    let mut rq = ureq::post(url).set("content-type", "application/json");
    if let Some(t) = token {
        rq = rq.set("authorization", &format!("Bearer {t}"));
    }
    match rq.send_string(body) {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn get(url: &str, token: Option<&str>) -> (u16, ureq::Response) {
    let mut rq = ureq::get(url);
    if let Some(t) = token {
        rq = rq.set("authorization", &format!("Bearer {t}"));
    }
    match rq.call() {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn messages(si: &StandIn, token: &str, prompt: &str, stream: bool) -> (u16, ureq::Response) {
    post(
        &format!("{}/v1/messages?beta=true", si.base_url()),
        Some(token),
        &body(prompt, stream).to_string(),
    )
}

fn header_f64(r: &ureq::Response, name: &str) -> f64 {
    r.header(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .parse()
        .unwrap_or_else(|_| panic!("header {name} is not a number"))
}

/// Reads server-sent events one by one, noting when each arrived.
fn read_events(r: ureq::Response) -> Vec<(String, Value, Instant)> {
    let mut reader = BufReader::new(r.into_reader());
    let mut events = Vec::new();
    let mut name = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(n) = l.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = l.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(d).expect("event data is JSON");
            assert_eq!(data["type"], name.as_str(), "event name matches its type");
            events.push((name.clone(), data, Instant::now()));
        }
    }
    events
}

#[test]
fn streaming_answer_comes_event_by_event() {
    let mut opts = options();
    opts.token_delay = Duration::from_millis(150);
    let si = StandIn::start(opts).unwrap();
    let sent = Instant::now();
    let (status, r) = messages(&si, TOKEN_A, "hello there", true);
    assert_eq!(status, 200);
    assert!(r.content_type().starts_with("text/event-stream"));
    assert!(r.header("request-id").is_some());
    let events = read_events(r);
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!(deltas >= 3, "a few deltas: {names:?}");
    let mut expected = vec!["message_start", "ping", "content_block_start"];
    expected.extend(vec!["content_block_delta"; deltas]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);

    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-sonnet-4-5");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    let text: String = events
        .iter()
        .filter(|(n, _, _)| n == "content_block_delta")
        .map(|(_, d, _)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "STANDIN-ANSWER[a]: hello there");
    assert_eq!(text, answer_text("a", "hello there"));
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);

    // Flushed per event: the start arrived long before the last delta.
    let first = events[0].2.duration_since(sent);
    let last = events.last().unwrap().2.duration_since(sent);
    assert!(
        last >= first + Duration::from_millis(250),
        "events were not streamed: first {first:?}, last {last:?}"
    );

    let rec = si.requests();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].account.as_deref(), Some("a"));
    assert_eq!(rec[0].token, TOKEN_A);
    assert_eq!(rec[0].path, "/v1/messages?beta=true");
    assert!(rec[0].stream);
    assert_eq!(rec[0].prompt, "hello there");
    assert_eq!(rec[0].status, 200);
    assert_eq!(rec[0].messages[0]["role"], "user");
}

#[test]
fn plain_answer() {
    let si = start();
    let (status, r) = post(
        &format!("{}/v1/messages", si.base_url()),
        Some(TOKEN_B),
        &json!({"model": "m1", "max_tokens": 1, "messages": [
            {"role": "user", "content": "  say hi  "}
        ]})
        .to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(r.content_type(), "application/json");
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "m1");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["content"][0]["text"], "STANDIN-ANSWER[b]: say hi");
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let rec = si.requests_for("b");
    assert_eq!(rec.len(), 1);
    assert!(!rec[0].stream);
    assert!(si.requests_for("a").is_empty());
}

#[test]
fn unified_headers_rise_per_request() {
    let si = start();
    let t = now();
    for i in 1..=3 {
        let (status, r) = messages(&si, TOKEN_A, "count", i % 2 == 0);
        assert_eq!(status, 200);
        let five = header_f64(&r, "anthropic-ratelimit-unified-5h-utilization");
        let seven = header_f64(&r, "anthropic-ratelimit-unified-7d-utilization");
        assert!((five - 0.01 * i as f64).abs() < 1e-9, "5h {five} at {i}");
        assert!((seven - 0.002 * i as f64).abs() < 1e-9, "7d {seven} at {i}");
        assert_eq!(
            r.header("anthropic-ratelimit-unified-status"),
            Some("allowed")
        );
        assert_eq!(
            r.header("anthropic-ratelimit-unified-representative-claim"),
            Some("five_hour")
        );
        let reset5 = header_f64(&r, "anthropic-ratelimit-unified-5h-reset") as u64;
        let reset7 = header_f64(&r, "anthropic-ratelimit-unified-7d-reset") as u64;
        assert!(reset5.abs_diff(t + 5 * 3600) <= 5);
        assert!(reset7.abs_diff(t + 7 * 86400) <= 5);
        assert_eq!(
            header_f64(&r, "anthropic-ratelimit-unified-reset") as u64,
            reset5
        );
        assert!(r.header("request-id").is_some());
        // Drain so the connection is reusable.
        let _ = r.into_string();
    }
    let (five, seven) = si.usage("a").unwrap();
    assert!((five - 3.0).abs() < 1e-9 && (seven - 0.6).abs() < 1e-9);
    assert_eq!(si.usage("b"), Some((0.0, 0.0)));

    // 80 % on either window is a warning; the fuller window is representative.
    si.set_usage("a", 10.0, 85.0).unwrap();
    let (status, r) = messages(&si, TOKEN_A, "warn", false);
    assert_eq!(status, 200);
    assert_eq!(
        r.header("anthropic-ratelimit-unified-status"),
        Some("allowed_warning")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-representative-claim"),
        Some("seven_day")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-reset"),
        r.header("anthropic-ratelimit-unified-7d-reset")
    );

    // Steps are per account and adjustable.
    si.set_steps("b", 50.0, 0.0).unwrap();
    let (_, r) = messages(&si, TOKEN_B, "big", false);
    assert_eq!(
        header_f64(&r, "anthropic-ratelimit-unified-5h-utilization"),
        0.5
    );
    assert_eq!(
        header_f64(&r, "anthropic-ratelimit-unified-7d-utilization"),
        0.0
    );
    let (_, r) = messages(&si, TOKEN_B, "big", false);
    assert_eq!(
        header_f64(&r, "anthropic-ratelimit-unified-5h-utilization"),
        1.0
    );
    let (status, _) = messages(&si, TOKEN_B, "big", false);
    assert_eq!(status, 429, "the window filled up");
}

#[test]
fn exhausted_account_gets_429_with_refusal_headers() {
    let si = start();
    si.exhaust("a").unwrap();
    let reset5 = now() + 3600;
    si.set_resets("a", reset5, now() + 86400).unwrap();
    let (status, r) = messages(&si, TOKEN_A, "refused", true);
    assert_eq!(status, 429);
    assert_eq!(
        r.header("anthropic-ratelimit-unified-status"),
        Some("rejected")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-representative-claim"),
        Some("five_hour")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-reset"),
        Some(reset5.to_string().as_str())
    );
    assert_eq!(
        header_f64(&r, "anthropic-ratelimit-unified-5h-utilization"),
        1.0
    );
    let retry = header_f64(&r, "retry-after");
    assert!((3590.0..=3600.0).contains(&retry), "retry-after {retry}");
    assert!(r.header("request-id").is_some());
    let v: Value = r.into_json().unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": RATE_LIMIT_MESSAGE}})
    );
    // A refusal costs nothing.
    assert_eq!(si.usage("a"), Some((100.0, 0.0)));
    let rec = si.requests_for("a");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].status, 429);
    assert_eq!(rec[0].prompt, "refused");

    // The seven-day window exhausted: that is the claim.
    si.set_usage("b", 20.0, 100.0).unwrap();
    let (status, r) = messages(&si, TOKEN_B, "weekly", false);
    assert_eq!(status, 429);
    assert_eq!(
        r.header("anthropic-ratelimit-unified-representative-claim"),
        Some("seven_day")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-reset"),
        r.header("anthropic-ratelimit-unified-7d-reset")
    );

    // Reset brings the account back.
    si.reset("a").unwrap();
    assert_eq!(si.usage("a"), Some((0.0, 0.0)));
    assert_eq!(messages(&si, TOKEN_A, "back", false).0, 200);

    // A reset time that has passed clears that window, as the real one does.
    si.set_usage("b", 100.0, 0.0).unwrap();
    si.set_resets("b", now() - 1, now() + 86400).unwrap();
    assert_eq!(messages(&si, TOKEN_B, "rolled", false).0, 200);
    assert_eq!(si.usage("b"), Some((1.0, 0.2)));
}

#[test]
fn unknown_or_missing_token_is_401() {
    let si = start();
    let url = format!("{}/v1/messages", si.base_url());
    let b = body("x", false).to_string();
    for token in [Some("sk-ant-oat01-nobody"), None] {
        let (status, r) = post(&url, token, &b);
        assert_eq!(status, 401);
        let v: Value = r.into_json().unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
        );
    }
    // x-api-key is accepted too.
    let r = ureq::post(&url)
        .set("x-api-key", TOKEN_B)
        .send_string(&b)
        .unwrap();
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["content"][0]["text"], "STANDIN-ANSWER[b]: x");

    let rec = si.requests();
    assert_eq!(rec.len(), 3);
    assert_eq!(rec[0].account, None);
    assert_eq!(rec[0].status, 401);
    assert_eq!(rec[1].token, "");
    assert_eq!(rec[2].account.as_deref(), Some("b"));
}

#[test]
fn usage_endpoint_per_account() {
    let si = start();
    si.set_usage("a", 24.0, 50.5).unwrap();
    // 2026-01-02T19:59:59Z and 2026-01-07T00:00:00Z.
    si.set_resets(
        "a",
        1_767_383_999 + 10 * 365 * 86400,
        1_767_744_000 + 10 * 365 * 86400,
    )
    .unwrap();
    let url = format!("{}/api/oauth/usage", si.base_url());
    let (status, r) = get(&url, Some(TOKEN_A));
    assert_eq!(status, 200);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["five_hour"]["utilization"], json!(24.0));
    assert_eq!(v["seven_day"]["utilization"], json!(50.5));
    assert_eq!(
        v["five_hour"]["resets_at"],
        "2035-12-31T19:59:59.000000+00:00"
    );
    assert_eq!(
        v["seven_day"]["resets_at"],
        "2036-01-05T00:00:00.000000+00:00"
    );
    for key in ["seven_day_opus", "seven_day_sonnet", "extra_usage"] {
        assert!(v.get(key).is_some_and(Value::is_null), "{key} is null");
    }

    let (status, r) = get(&url, Some(TOKEN_B));
    assert_eq!(status, 200);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["five_hour"]["utilization"], json!(0.0));
    let resets = v["seven_day"]["resets_at"].as_str().unwrap();
    assert_eq!(resets.len(), "2026-01-02T19:59:59.000000+00:00".len());
    assert!(resets.ends_with("+00:00"));

    assert_eq!(get(&url, Some("sk-ant-oat01-nobody")).0, 401);
    assert_eq!(get(&url, None).0, 401);

    si.set_usage_mode("a", UsageMode::RateLimited).unwrap();
    let (status, r) = get(&url, Some(TOKEN_A));
    assert_eq!(status, 429);
    assert!(header_f64(&r, "retry-after") > 0.0);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");

    si.set_usage_mode("a", UsageMode::Forbidden).unwrap();
    let (status, r) = get(&url, Some(TOKEN_A));
    assert_eq!(status, 403);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "permission_error");
    // Other accounts are unaffected.
    assert_eq!(get(&url, Some(TOKEN_B)).0, 200);

    si.set_usage_mode("a", UsageMode::Normal).unwrap();
    assert_eq!(get(&url, Some(TOKEN_A)).0, 200);
    // Reading usage is not a message: it costs nothing and is not recorded.
    assert_eq!(si.usage("a"), Some((24.0, 50.5)));
    assert!(si.requests().is_empty());
}

/// The usage answer's three shapes (old keys, `limits[]`, both), as the
/// daemon's own parser reads them; a full model-scoped limit refuses that
/// model's requests and no other's.
#[test]
fn usage_limits_shapes_and_a_model_scoped_refusal() {
    use claude_failover::decide::quota::{from_usage, LimitScope};
    let si = start();
    si.set_usage("a", 10.0, 20.0).unwrap();
    si.set_scoped("a", "Opus", Some(100.0)).unwrap();
    let url = format!("{}/api/oauth/usage", si.base_url());
    let read = || -> Value { get(&url, Some(TOKEN_A)).1.into_json().unwrap() };

    let both = read();
    assert!(
        both.get("five_hour").is_some() && both.get("limits").is_some(),
        "{both}"
    );
    assert_eq!(both["seven_day_opus"]["utilization"], json!(100.0));
    let (f, w, limits) = from_usage(&both);
    assert_eq!(
        (f.unwrap().utilization, w.unwrap().utilization),
        (10.0, 20.0)
    );
    let kinds: Vec<LimitScope> = limits.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        vec![
            LimitScope::Session,
            LimitScope::WeeklyAll,
            LimitScope::WeeklyScoped
        ]
    );
    let opus = &limits[2];
    assert_eq!(opus.model.as_deref(), Some("Opus"));
    assert_eq!(opus.utilization, 100.0);
    assert_eq!(opus.is_active, Some(true));
    assert_eq!(opus.severity.as_deref(), Some("critical"));

    si.set_usage_shape("a", UsageShape::Limits).unwrap();
    let only = read();
    assert!(only.get("five_hour").is_none(), "{only}");
    let (f, w, limits) = from_usage(&only);
    assert_eq!(
        (f.unwrap().utilization, w.unwrap().utilization),
        (10.0, 20.0)
    );
    assert_eq!(limits.len(), 3);

    si.set_usage_shape("a", UsageShape::Old).unwrap();
    let old = read();
    assert!(old.get("limits").is_none(), "{old}");
    let (f, _, limits) = from_usage(&old);
    assert_eq!(f.unwrap().utilization, 10.0);
    assert_eq!(
        limits.len(),
        1,
        "the old shape's seven_day_opus is a scoped limit"
    );
    assert_eq!(limits[0].model.as_deref(), Some("Opus"));

    // Opus requests are refused, Sonnet ones answered, on the same account.
    let mut opus_body = body("hello", false);
    opus_body["model"] = json!("claude-opus-4-5-20251101");
    let (status, r) = post(
        &format!("{}/v1/messages", si.base_url()),
        Some(TOKEN_A),
        &opus_body.to_string(),
    );
    assert_eq!(status, 429);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["error"]["message"], "Opus weekly limit reached");
    assert_eq!(messages(&si, TOKEN_A, "hello", false).0, 200);
    // Lifting it (null) answers Opus again.
    si.set_scoped("a", "Opus", None).unwrap();
    let (status, _) = post(
        &format!("{}/v1/messages", si.base_url()),
        Some(TOKEN_A),
        &opus_body.to_string(),
    );
    assert_eq!(status, 200);
    // Over HTTP: a bad scoped value is refused and changes nothing.
    let control = format!("{}/_standin/accounts/a", si.base_url());
    assert_eq!(
        post(&control, None, r#"{"scoped": {"Opus": "lots"}}"#).0,
        400
    );
    assert_eq!(post(&control, None, r#"{"usage_shape": "square"}"#).0, 400);
    let (status, r) = post(
        &control,
        None,
        r#"{"scoped": {"Sonnet": 97}, "usage_shape": "both"}"#,
    );
    assert_eq!(status, 200);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["scoped"], json!({"Sonnet": 97.0}));
    assert_eq!(v["usage_shape"], "both");
}

/// A scripted turn's failures at step k, each once per script: 529
/// (overloaded), 401 (a token the server stopped taking), 429 (refused, and
/// the account exhausted from there on); the step is then answered.
#[test]
fn scripted_failures_at_step_k_come_once_each() {
    let si = start();
    let url = format!("{}/v1/messages", si.base_url());
    let turn = |directive: &str, results: usize| {
        let mut messages = vec![json!({"role": "user", "content": [
            {"type": "text", "text": format!("Do it.\n\n{directive}")}]})];
        for k in 0..results {
            messages.push(json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": format!("t{k}"), "name": "Bash", "input": {}}]}));
            messages.push(json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": format!("t{k}"), "content": "ok"}]}));
        }
        json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": false,
               "tools": [{"name": "Bash", "input_schema": {}}], "messages": messages})
        .to_string()
    };
    let d = "STANDIN-SCRIPT steps=3 overload_at=1 unauth_at=2";
    let (status, r) = post(&url, Some(TOKEN_A), &turn(d, 0));
    assert_eq!(status, 529);
    assert_eq!(
        r.into_json::<Value>().unwrap()["error"]["type"],
        "overloaded_error"
    );
    let (status, r) = post(&url, Some(TOKEN_A), &turn(d, 0));
    assert_eq!(status, 200, "the retry of step 1 is answered");
    assert_eq!(r.into_json::<Value>().unwrap()["stop_reason"], "tool_use");
    let (status, r) = post(&url, Some(TOKEN_A), &turn(d, 1));
    assert_eq!(status, 401);
    assert_eq!(
        r.into_json::<Value>().unwrap()["error"]["type"],
        "authentication_error"
    );
    assert_eq!(post(&url, Some(TOKEN_A), &turn(d, 1)).0, 200);
    assert_eq!(post(&url, Some(TOKEN_A), &turn(d, 2)).0, 200);
    // Every step answered: the final text.
    let (status, r) = post(&url, Some(TOKEN_A), &turn(d, 3));
    assert_eq!(status, 200);
    assert_eq!(r.into_json::<Value>().unwrap()["stop_reason"], "end_turn");
    let steps: Vec<(Option<u32>, u16)> = si.requests().iter().map(|r| (r.step, r.status)).collect();
    assert_eq!(
        steps,
        vec![
            (Some(1), 529),
            (Some(1), 200),
            (Some(2), 401),
            (Some(2), 200),
            (Some(3), 200),
            (Some(4), 200)
        ]
    );
    // refuse_at: a 429, and the account is exhausted from then on.
    let (status, _) = post(
        &url,
        Some(TOKEN_B),
        &turn("STANDIN-SCRIPT steps=2 refuse_at=1", 0),
    );
    assert_eq!(status, 429);
    assert_eq!(messages(&si, TOKEN_B, "hello", false).0, 429);
}

#[test]
fn control_over_http() {
    let si = start();
    let base = si.base_url();
    let url_a = format!("{base}/_standin/accounts/a");
    let reset = now() + 1234;
    let (status, r) = post(
        &url_a,
        None,
        &json!({"five_hour": 42.0, "seven_day": 7, "five_hour_resets_at": reset,
                "five_hour_step": 2.5, "seven_day_step": 1, "usage_mode": "403"})
        .to_string(),
    );
    assert_eq!(status, 200);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["name"], "a");
    assert_eq!(v["five_hour"], json!(42.0));
    assert_eq!(v["seven_day"], json!(7.0));
    assert_eq!(v["five_hour_resets_at"], json!(reset));
    assert_eq!(v["usage_mode"], "403");
    assert_eq!(v["exhausted"], false);
    assert_eq!(si.usage("a"), Some((42.0, 7.0)));
    let state = si.account("a").unwrap();
    assert_eq!(state.five_hour_step, 2.5);
    assert_eq!(state.usage_mode, UsageMode::Forbidden);
    assert_eq!(
        get(&format!("{base}/api/oauth/usage"), Some(TOKEN_A)).0,
        403
    );
    assert_eq!(messages(&si, TOKEN_A, "one", false).0, 200);
    assert_eq!(si.usage("a"), Some((44.5, 8.0)));

    // Exhaust, then lift it.
    let (_, r) = post(&url_a, None, r#"{"exhausted": true}"#);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["exhausted"], true);
    assert_eq!(messages(&si, TOKEN_A, "two", false).0, 429);
    let (_, r) = post(
        &url_a,
        None,
        r#"{"exhausted": false, "usage_mode": "normal"}"#,
    );
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["exhausted"], false);
    assert_eq!(v["five_hour"], json!(0.0));
    assert_eq!(messages(&si, TOKEN_A, "three", false).0, 200);

    // reset is applied before the other fields.
    let (_, r) = post(&url_a, None, r#"{"reset": true, "seven_day": 50}"#);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["five_hour"], json!(0.0));
    assert_eq!(v["seven_day"], json!(50.0));

    // Listing and the recorded requests.
    let (status, r) = get(&format!("{base}/_standin/accounts"), None);
    assert_eq!(status, 200);
    let v: Value = r.into_json().unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let (_, r) = get(&format!("{base}/_standin/accounts/b"), None);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["five_hour"], json!(0.0));

    let (status, r) = get(&format!("{base}/_standin/requests"), None);
    assert_eq!(status, 200);
    let v: Value = r.into_json().unwrap();
    let prompts: Vec<(&str, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["prompt"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(prompts, [("one", 200), ("two", 429), ("three", 200)]);
    assert_eq!(v[0]["account"], "a");
    assert!(v[0]["at"].as_f64().unwrap() > 1e9);

    // Global timing.
    let (_, r) = post(
        &format!("{base}/_standin/config"),
        None,
        r#"{"latency_ms": 5, "token_delay_ms": 1}"#,
    );
    let v: Value = r.into_json().unwrap();
    assert_eq!(v, json!({"latency_ms": 5, "token_delay_ms": 1}));

    // Errors: unknown account, bad fields (nothing applied), bad JSON.
    let (status, r) = post(&format!("{base}/_standin/accounts/zed"), None, "{}");
    assert_eq!(status, 404);
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["type"], "error");
    let (status, _) = post(
        &url_a,
        None,
        r#"{"seven_day": 1, "usage_mode": "sometimes"}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(si.usage("a"), Some((0.0, 50.0)));
    assert_eq!(post(&url_a, None, r#"{"five_hour": "lots"}"#).0, 400);
    assert_eq!(post(&url_a, None, "not json").0, 400);

    // In-process calls on an unknown account say so.
    assert!(si.exhaust("zed").is_err());
    assert_eq!(si.usage("zed"), None);
}

#[test]
fn slow_stream_does_not_block_other_requests() {
    let mut opts = options();
    opts.token_delay = Duration::from_millis(400);
    let si = StandIn::start(opts).unwrap();
    let base = si.base_url();

    // A slow stream: three or more deltas 400 ms apart.
    let (tx, rx) = mpsc::channel();
    let slow_url = format!("{base}/v1/messages?beta=true");
    let slow = thread::spawn(move || {
        let (status, r) = post(
            &slow_url,
            Some(TOKEN_A),
            &body("slow one", true).to_string(),
        );
        let events = read_events(r);
        tx.send(()).unwrap();
        (status, events.len())
    });
    assert!(si
        .wait_for_request(|r| r.prompt == "slow one", Duration::from_secs(5))
        .is_some());

    // Meanwhile, several others are answered at once.
    let t = Instant::now();
    for i in 0..4 {
        let (status, r) = messages(&si, TOKEN_B, &format!("quick {i}"), false);
        assert_eq!(status, 200);
        let _ = r.into_string();
    }
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "quick requests waited {:?}",
        t.elapsed()
    );
    assert!(
        rx.try_recv().is_err(),
        "the slow stream should still be running"
    );
    let (status, n) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(n >= 9);

    // Latency delays the first byte, and concurrent requests wait it out
    // side by side rather than in turn.
    si.set_latency(Duration::from_millis(700));
    si.set_token_delay(Duration::ZERO);
    let t = Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let url = format!("{base}/v1/messages");
            thread::spawn(move || {
                let (status, r) = post(
                    &url,
                    Some(TOKEN_A),
                    &body(&format!("p{i}"), i % 2 == 0).to_string(),
                );
                let _ = r.into_string();
                status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1800),
        "six requests with 700 ms latency took {took:?}"
    );
}

#[test]
fn bad_json_is_400_and_odd_shapes_are_answered() {
    let si = start();
    let url = format!("{}/v1/messages", si.base_url());
    for bad in ["{not json", "", "[1,2,3]", "\"text\"", "\u{0}\u{1}"] {
        let (status, r) = post(&url, Some(TOKEN_A), bad);
        assert_eq!(status, 400, "body {bad:?}");
        let v: Value = r.into_json().unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // Valid JSON of any odd shape still gets an answer, never a crash.
    let odd = [
        json!({}),
        json!({"messages": 5}),
        json!({"messages": [{"role": "user", "content": 7}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "text"}, 3, null]}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}], "stream": "yes", "model": 9}),
        json!({"messages": [null, {"role": "assistant", "content": "no user"}], "max_tokens": 0}),
    ];
    for o in &odd {
        let (status, r) = post(&url, Some(TOKEN_A), &o.to_string());
        assert_eq!(status, 200, "body {o}");
        let v: Value = r.into_json().unwrap();
        assert_eq!(v["content"][0]["text"], "STANDIN-ANSWER[a]: ");
    }
    // count_tokens: rough but present; bad JSON is 400 there too.
    let ct = format!("{}/v1/messages/count_tokens?beta=true", si.base_url());
    let (status, r) = post(&ct, Some(TOKEN_A), &body("count me", false).to_string());
    assert_eq!(status, 200);
    let v: Value = r.into_json().unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(post(&ct, Some(TOKEN_A), "nope").0, 400);
    assert_eq!(post(&ct, Some("sk-nobody"), "{}").0, 401);

    // Still serving.
    assert_eq!(messages(&si, TOKEN_A, "after", false).0, 200);
    let statuses: Vec<u16> = si.requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..5], &[400; 5]);
}

#[test]
fn other_paths_are_quick_404s() {
    let si = start();
    let base = si.base_url();
    let t = Instant::now();
    for (method, path) in [
        ("GET", "/v1/models"),
        ("GET", "/"),
        ("POST", "/api/event_logging/batch"),
        ("GET", "/v1/messages"),
        ("DELETE", "/_standin/accounts/a"),
    ] {
        let res = ureq::request(method, &format!("{base}{path}"))
            .set("authorization", &format!("Bearer {TOKEN_A}"))
            .send_string("{\"x\":1}");
        match res {
            Err(ureq::Error::Status(404, r)) => {
                let v: Value = r.into_json().unwrap();
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "not_found_error");
            }
            other => panic!("{method} {path}: {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    let hits = si.hits();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].path, "/v1/models");
    assert_eq!(hits[0].status, 404);
    assert_eq!(hits[0].account.as_deref(), Some("a"));
    assert!(si.requests().is_empty());
}

#[test]
fn wait_for_request_is_bounded() {
    let si = start();
    let t = Instant::now();
    assert!(si
        .wait_for_request(|_| true, Duration::from_millis(200))
        .is_none());
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(190) && waited < Duration::from_secs(2));

    let url = format!("{}/v1/messages", si.base_url());
    let sender = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        for p in ["first", "second"] {
            let (_, r) = post(&url, Some(TOKEN_B), &body(p, false).to_string());
            let _ = r.into_string();
        }
    });
    let got = si
        .wait_for_request(|r| r.prompt == "second", Duration::from_secs(10))
        .expect("the second request arrives");
    assert_eq!(got.account.as_deref(), Some("b"));
    sender.join().unwrap();
    // Already recorded requests match at once.
    let t = Instant::now();
    let got = si
        .wait_for_request(|r| r.prompt == "first", Duration::from_secs(10))
        .unwrap();
    assert_eq!(got.prompt, "first");
    assert!(t.elapsed() < Duration::from_millis(100));
}

#[test]
fn stop_ends_streams_and_frees_the_port() {
    let mut opts = options();
    opts.token_delay = Duration::from_secs(30);
    let mut si = StandIn::start(opts).unwrap();
    let url = format!("{}/v1/messages", si.base_url());
    let client = thread::spawn(move || {
        // The stream is cut short; whatever the client makes of it is fine.
        if let Ok(r) = ureq::post(&url)
            .set("authorization", &format!("Bearer {TOKEN_A}"))
            .send_string(&body("endless", true).to_string())
        {
            let mut sink = Vec::new();
            let _ = r.into_reader().read_to_end(&mut sink);
        }
    });
    si.wait_for_request(|_| true, Duration::from_secs(5))
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    si.stop();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    si.stop(); // idempotent
    let base = si.base_url();
    drop(si);
    client.join().unwrap();
    let res = ureq::get(&format!("{base}/_standin/accounts"))
        .timeout(Duration::from_secs(2))
        .call();
    assert!(res.is_err(), "still answering after stop");
}

#[test]
fn given_port_is_used() {
    // Find a free port, then ask for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = options();
    opts.port = port;
    let si = StandIn::start(opts).unwrap();
    assert_eq!(si.port(), port);
    assert_eq!(si.base_url(), format!("http://127.0.0.1:{port}"));
    // A second one on the same port fails cleanly.
    let mut opts = options();
    opts.port = port;
    assert!(StandIn::start(opts).is_err());
}

// ----- the real Claude Code -----

/// Runs `claude -p PROMPT` against the stand-in with account `a`'s made-up
/// OAuth credentials; returns (exit code, stdout, stderr).
fn run_claude(
    bin: &str,
    si: &StandIn,
    dir: &std::path::Path,
    prompt: &str,
) -> (i32, String, String) {
    let config = dir.join("config");
    let project = dir.join("project");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&project).unwrap();
    let project = project.canonicalize().unwrap();
    let creds = config.join(".credentials.json");
    std::fs::write(
        &creds,
        json!({"claudeAiOauth": {
            "accessToken": TOKEN_A,
            "refreshToken": "sk-ant-ort01-test-a",
            "expiresAt": 4102444800000u64,
            "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x",
        }})
        .to_string(),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut projects = serde_json::Map::new();
    projects.insert(
        project.to_string_lossy().into_owned(),
        json!({"hasTrustDialogAccepted": true}),
    );
    std::fs::write(
        config.join(".claude.json"),
        json!({"hasCompletedOnboarding": true, "lastOnboardingVersion": "2.1.329",
               "projects": projects})
        .to_string(),
    )
    .unwrap();

    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(prompt)
        .current_dir(&project)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Nothing of the host's own Claude set-up may leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("ANTHROPIC_") || key.starts_with("CLAUDE") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("HOME", dir)
        .env("CLAUDE_CONFIG_DIR", &config)
        .env("ANTHROPIC_BASE_URL", si.base_url())
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1");
    let mut child = cmd.spawn().expect("spawn claude");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("claude -p {prompt:?} did not finish within 120 s");
        }
        thread::sleep(Duration::from_millis(100));
    };
    (
        status.code().unwrap_or(-1),
        out_reader.join().unwrap(),
        err_reader.join().unwrap(),
    )
}

/// A quick smoke test with the real Claude Code: it gets the echo answer,
/// and with the account exhausted it prints the limit message and exits 0.
/// Set `CLAUDE_FAILOVER_CLAUDE_BIN` to the `claude` binary and run with
/// `cargo test --test standin_api -- --ignored --nocapture`.
#[test]
#[ignore]
fn real_claude_code_smoke() {
    let Ok(bin) = std::env::var("CLAUDE_FAILOVER_CLAUDE_BIN") else {
        eprintln!("CLAUDE_FAILOVER_CLAUDE_BIN is not set: skipping");
        return;
    };
    let si = start();
    let dir = tempfile::tempdir().unwrap();

    let (code, out, err) = run_claude(&bin, &si, dir.path(), "hello there");
    eprintln!("answer run: exit {code}\nstdout: {out}\nstderr: {err}");
    for hit in si.hits() {
        eprintln!("  {} {} -> {}", hit.method, hit.path, hit.status);
    }
    assert_eq!(code, 0);
    assert!(
        out.contains(&answer_text("a", "hello there")),
        "no echo answer in {out:?}"
    );
    assert!(si
        .requests_for("a")
        .iter()
        .any(|r| r.prompt == "hello there" && r.status == 200));

    si.clear_records();
    si.exhaust("a").unwrap();
    let (code, out, err) = run_claude(&bin, &si, dir.path(), "hello again");
    eprintln!("limit run: exit {code}\nstdout: {out}\nstderr: {err}");
    for hit in si.hits() {
        eprintln!("  {} {} -> {}", hit.method, hit.path, hit.status);
    }
    // 2.1.329 printed "You've hit your 5-hour limit · resets 10:20am (UTC)"
    // on stdout and exited 1 (not checked: the exit code of this case has
    // varied between reports).
    let all = format!("{out}{err}");
    assert!(
        all.contains("You've hit your 5-hour limit"),
        "no limit message in {all:?}"
    );
    assert!(si.requests_for("a").iter().any(|r| r.status == 429));
}
