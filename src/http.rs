//! The HTTP control plane on `http.listen`. Handlers answer from the latest
//! published status snapshot and never wait on a role thread.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server};

use crate::status::{self, Published};

/// Requests larger than this are refused unread.
const MAX_BODY: u64 = 64 * 1024;

pub struct Http {
    server: Arc<Server>,
    pub thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Http {
    pub fn start(listen: SocketAddr, published: Published) -> Result<Http, String> {
        let server = Server::http(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = server.server_addr().to_ip().unwrap_or(listen);
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || serve(&s, &published))
            .map_err(|e| e.to_string())?;
        Ok(Http { server, thread: Some(thread), addr })
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

fn serve(server: &Server, published: &Published) {
    loop {
        match server.recv() {
            Ok(req) => handle(req, published),
            // unblock() ends recv with an error: that is our shutdown.
            Err(_) => return,
        }
    }
}

fn handle(mut req: Request, published: &Published) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let method = req.method().clone();
    if req.body_length().is_some_and(|n| n as u64 > MAX_BODY) {
        respond(req, json(413, &serde_json::json!({"error": "request body too large"})));
        return;
    }
    // Drain a small body so keep-alive works; never read more than the cap.
    let mut sink = Vec::new();
    let _ = req.as_reader().take(MAX_BODY).read_to_end(&mut sink);
    let answer = match (&method, path.as_str()) {
        (Method::Get, "/status") => {
            let snapshot = status::latest(published);
            json(200, &*snapshot)
        }
        (Method::Get, "/healthz") => {
            let snapshot = status::latest(published);
            if snapshot.health_problems.is_empty() {
                text(200, "ok\n")
            } else {
                text(503, &format!("{}\n", snapshot.health_problems.join("; ")))
            }
        }
        (_, "/status" | "/healthz") => json(405, &serde_json::json!({"error": format!("{method} not allowed on {path}")})),
        _ => json(404, &serde_json::json!({"error": format!("no such endpoint: {method} {path}")})),
    };
    respond(req, answer);
}

type Answer = Response<std::io::Cursor<Vec<u8>>>;

fn respond(req: Request, answer: Answer) {
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
