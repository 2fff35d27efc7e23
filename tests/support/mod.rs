//! Shared test support. It lives in the testkit crate (`testkit::world`),
//! with the API stand-in and the sandboxes, so that none of it is part of
//! the product; this module only brings it into every test binary.
#![allow(unused_imports)]

pub use testkit::world::*;

/// A daemon on one pool of `sessions` sessions of the scripted fake agent
/// (`tests/fixtures/fake-claude.py`), started and waited for until every
/// session is idle (within `timeout`): the start of the benches that need
/// many sessions cheaply. Returns the sandbox and the daemon's pid.
#[allow(dead_code)]
pub fn fake_agent_daemon(
    h: &mut Harness,
    sessions: u32,
    timeout: std::time::Duration,
) -> (testkit::sandbox::Sandbox, u32) {
    let fake =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude.py");
    let spec = testkit::sandbox::SandboxSpec {
        claude_binary: fake.to_string_lossy().into_owned(),
        tmux_socket: h.socket.clone(),
        pools: vec![testkit::sandbox::SandboxPool {
            name: "auto".into(),
            prefix: "ccl-auto-".into(),
            start_index: 11,
            min: sessions,
            max: sessions,
            model: None,
        }],
        ..Default::default()
    };
    let sb = testkit::sandbox::Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    sb.install_hooks(bin()).unwrap();
    h.watch_state_dir(sb.state_dir.clone());
    let config = sb.config_path.to_string_lossy().into_owned();
    let pid = h.spawn_bin(&["--config", &config, "run"], &[]);
    let url = format!("http://{}/status", sb.http_listen);
    wait_for(timeout, &format!("{sessions} idle sessions"), || {
        let v: serde_json::Value = ureq::get(&url).call().ok()?.into_json().ok()?;
        (v["sessions"]
            .as_array()?
            .iter()
            .filter(|x| x["state"] == "idle")
            .count()
            == sessions as usize)
            .then_some(())
    });
    (sb, pid)
}
