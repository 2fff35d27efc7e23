//! The HTTP control plane on `http.listen`. Handlers answer from the latest
//! published status snapshot and never wait on a role thread.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::status::{self, Published};
use crate::switcher::{self, SharedView};

/// Commands the main loop answers (it owns sessions and the config).
#[derive(Debug)]
pub enum Control {
    /// As SIGHUP; the reply is the refusal, if any.
    Reload { reply: Sender<Result<(), String>> },
    /// Relaunch a managed session; the reply is `Err` for an unknown or unmanaged name.
    Restart {
        name: String,
        reply: Sender<Result<(), String>>,
    },
}

/// What the handlers may reach besides the snapshot.
#[derive(Clone)]
pub struct Wiring {
    pub switcher: Sender<switcher::Request>,
    pub view: SharedView,
    pub main: Sender<Control>,
    /// When set, every POST needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// How long `POST /swap` waits for the swap to end.
    pub swap_wait: Duration,
    pub counters: std::sync::Arc<crate::metrics::Counters>,
    pub notify: crate::notifier::NotifyHandle,
    /// A `POST /swap` is being answered.
    pub swap_pending: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Requests larger than this are refused unread.
const MAX_BODY: u64 = 1024;

pub struct Http {
    server: Arc<Server>,
    pub thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Http {
    pub fn start(listen: SocketAddr, published: Published, wiring: Wiring) -> Result<Http, String> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        no_delay(&listener);
        let server = Server::from_listener(listener, None)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = server.server_addr().to_ip().unwrap_or(listen);
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || serve(&s, &published, &wiring))
            .map_err(|e| e.to_string())?;
        Ok(Http {
            server,
            thread: Some(thread),
            addr,
        })
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TCP_NODELAY on the listening socket, which Linux passes on to every
/// accepted connection: tiny_http writes an answer in 1 KiB pieces, and with
/// Nagle each piece after the first waits for the client's delayed ACK (40 ms).
fn no_delay(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for the given length; the fd is valid
    // for the listener's lifetime.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::warn!(
            "TCP_NODELAY not set on the HTTP listener: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn serve(server: &Server, published: &Published, wiring: &Wiring) {
    loop {
        match server.recv() {
            Ok(req) => handle(req, published, wiring),
            // unblock() ends recv with an error: that is our shutdown.
            Err(_) => return,
        }
    }
}

fn handle(mut req: Request, published: &Published, wiring: &Wiring) {
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let query = url
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    // No endpoint takes a body: a large or unsized one is refused unread, so
    // a client that stalls mid-body cannot hold the listener.
    let chunked = req
        .headers()
        .iter()
        .any(|h| h.field.equiv("Transfer-Encoding"));
    if chunked || req.body_length().is_some_and(|n| n as u64 > MAX_BODY) {
        respond(
            req,
            json(
                413,
                &serde_json::json!({"error": "request body too large or of unknown length; no endpoint takes a body"}),
            ),
        );
        return;
    }
    // Drain a small body so keep-alive works; never read more than the cap.
    let mut sink = Vec::new();
    let _ = req.as_reader().take(MAX_BODY).read_to_end(&mut sink);
    let answer = match (&method, path.as_str()) {
        (Method::Get, "/status") => json(200, &current(published, wiring)),
        (Method::Get, "/metrics") => {
            wiring
                .counters
                .set_notifications_dropped(wiring.notify.stats().dropped);
            let body = crate::metrics::render(&current(published, wiring), &wiring.counters);
            Response::from_data(body.into_bytes())
                .with_status_code(200)
                .with_header(header(
                    "Content-Type",
                    "text/plain; version=0.0.4; charset=utf-8",
                ))
        }
        (Method::Get, "/healthz") => {
            let snapshot = current(published, wiring);
            if snapshot.health_problems.is_empty() {
                text(200, "ok\n")
            } else {
                text(503, &format!("{}\n", snapshot.health_problems.join("; ")))
            }
        }
        (Method::Post, _) if !authorised(&req, wiring) => json(
            401,
            &serde_json::json!({"error": "missing or wrong bearer token"}),
        ),
        (Method::Post, "/swap") => {
            // The swap can take a while: answer it from its own thread so
            // /status and /healthz keep answering meanwhile; one at a time.
            if wiring
                .swap_pending
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                json(409, &serde_json::json!({"error": "a swap is under way"}))
            } else {
                let wiring = wiring.clone();
                std::thread::spawn(move || {
                    let answer = swap(&query, &wiring);
                    wiring
                        .swap_pending
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    respond(req, answer);
                });
                return;
            }
        }
        (Method::Post, "/reload") => ask_main(wiring, |reply| Control::Reload { reply }, 422),
        (Method::Post, p) if p.starts_with("/sessions/") && p.ends_with("/restart") => {
            let name = p
                .trim_start_matches("/sessions/")
                .trim_end_matches("/restart")
                .to_string();
            ask_main(wiring, |reply| Control::Restart { name, reply }, 404)
        }
        (_, "/status" | "/healthz") => json(
            405,
            &serde_json::json!({"error": format!("{method} not allowed on {path}")}),
        ),
        _ => json(
            404,
            &serde_json::json!({"error": format!("no such endpoint: {method} {path}")}),
        ),
    };
    respond(req, answer);
}

type Answer = Response<std::io::Cursor<Vec<u8>>>;

/// The main loop's snapshot with the switcher's own fields taken fresh from
/// its view, so an answer never lags behind a swap that just ended.
fn current(published: &Published, wiring: &Wiring) -> status::Status {
    let mut s = (*status::latest(published)).clone();
    let v = wiring.view.read();
    if !v.active.is_empty() {
        s.active_account = Some(v.active.clone());
    }
    s.partial_swap = v.partial_swap.is_some();
    s.swap_in_progress = s.swap_in_progress || v.swap_in_progress.is_some();
    s.last_swap = v
        .last_swap
        .as_ref()
        .and_then(|l| serde_json::to_value(l).ok());
    if let Some(p) = &v.partial_swap {
        let problem = format!("partial swap: {p}");
        if !s.health_problems.contains(&problem) {
            s.health_problems.push(problem);
        }
    }
    s
}

/// Constant-time comparison of the bearer token (no early exit on the first
/// differing byte).
fn authorised(req: &Request, wiring: &Wiring) -> bool {
    let Some(token) = &wiring.token else {
        return true;
    };
    let given = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().trim().to_string())
        .unwrap_or_default();
    let given = given.strip_prefix("Bearer ").unwrap_or("").as_bytes();
    let want = token.as_bytes();
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= (given.get(i).copied().unwrap_or(0) ^ w) as usize;
    }
    diff == 0
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

/// `a+b%20c` → `a b c`; a broken escape is kept as it is.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /swap?to=NAME[&reason=TEXT]`: 200 with the result, 409 while a swap
/// runs or a partial swap holds, 422 when no account can take the work.
fn swap(query: &str, wiring: &Wiring) -> Answer {
    let view = wiring.view.read().clone();
    if let Some(p) = &view.partial_swap {
        return json(
            409,
            &serde_json::json!({"error": format!("a partial swap holds: {p}")}),
        );
    }
    if let Some(id) = &view.swap_in_progress {
        return json(
            409,
            &serde_json::json!({"error": format!("swap {id} is under way")}),
        );
    }
    let to = query_param(query, "to").filter(|t| !t.is_empty());
    let reason = query_param(query, "reason").unwrap_or_else(|| "requested over HTTP".into());
    let (tx, rx) = crossbeam_channel::bounded(1);
    if wiring
        .switcher
        .send(switcher::Request::SwapNow {
            to,
            reason,
            reply: Some(tx),
        })
        .is_err()
    {
        return json(
            503,
            &serde_json::json!({"error": "the switcher is not running"}),
        );
    }
    match rx.recv_timeout(wiring.swap_wait) {
        Ok(result) => {
            let code = match result.result.as_str() {
                "done" => 200,
                "refused"
                    if result
                        .detail
                        .as_deref()
                        .is_some_and(|d| d.contains("partial") || d.contains("under way")) =>
                {
                    409
                }
                "refused" => 422,
                _ => 500,
            };
            json(code, &result)
        }
        Err(_) => json(
            504,
            &serde_json::json!({"error": "the swap did not end in time; see /status"}),
        ),
    }
}

fn ask_main(
    wiring: &Wiring,
    make: impl FnOnce(Sender<Result<(), String>>) -> Control,
    refused: u16,
) -> Answer {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if wiring.main.send(make(tx)).is_err() {
        return json(503, &serde_json::json!({"error": "the daemon is stopping"}));
    }
    match rx.recv_timeout(CLIENT_TIMEOUT) {
        Ok(Ok(())) => json(200, &serde_json::json!({"ok": true})),
        Ok(Err(e)) => json(refused, &serde_json::json!({"error": e})),
        Err(_) => json(504, &serde_json::json!({"error": "no answer in time"})),
    }
}

fn respond(req: Request, answer: Answer) {
    // One answer per connection: the answer is flushed whole at once, so no
    // client waits on Nagle and a delayed ACK (40 ms on loopback), and no
    // idle keep-alive connection holds the single listener thread.
    let answer = answer.with_header(header("Connection", "close"));
    if let Err(e) = req.respond(answer) {
        log::debug!("http: answer not delivered: {e}");
    }
}

fn json<T: serde::Serialize + ?Sized>(code: u16, body: &T) -> Answer {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::from_data(bytes)
        .with_status_code(code)
        .with_header(header("Content-Type", "application/json"))
}

fn text(code: u16, body: &str) -> Answer {
    Response::from_data(body.as_bytes().to_vec())
        .with_status_code(code)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("static header is valid")
}

/// How long a test or command waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("swap%20command+now"), "swap command now");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(
            query_param("to=beta&reason=a%2Fb", "reason").as_deref(),
            Some("a/b")
        );
    }
}
