//! A plain client of the daemon's `GET /events` (server-sent events) for
//! the tests: a reader thread parses each record into an [`SseEvent`] and
//! hands it over on a channel; dropping the client closes the connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub kind: String,
    /// The `data:` line, parsed (`Null` if it was not JSON).
    pub data: serde_json::Value,
}

pub struct SseClient {
    stream: TcpStream,
    pub events: Receiver<SseEvent>,
    /// The response's status line and headers.
    pub head: String,
    /// Comment lines seen (pings), counted by the reader.
    pub comments: Receiver<String>,
}

impl SseClient {
    /// Connects to `http://addr/events` with `Last-Event-ID` when given and
    /// the bearer `token` when given; returns once the response head is read.
    pub fn connect(
        addr: &str,
        last_id: Option<u64>,
        token: Option<&str>,
    ) -> std::io::Result<SseClient> {
        Self::connect_path(addr, "/events", last_id, token)
    }

    pub fn connect_path(
        addr: &str,
        path: &str,
        last_id: Option<u64>,
        token: Option<&str>,
    ) -> std::io::Result<SseClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        (&stream).write_all(req.as_bytes())?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let (tx, rx) = unbounded();
        let (ctx, crx) = unbounded();
        std::thread::spawn(move || {
            let (mut id, mut kind, mut data) = (None, String::new(), None::<String>);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = line.trim_end_matches(['\r', '\n']);
                if l.is_empty() {
                    if let Some(d) = data.take() {
                        let ev = SseEvent {
                            id: id.take(),
                            kind: std::mem::take(&mut kind),
                            data: serde_json::from_str(&d).unwrap_or(serde_json::Value::Null),
                        };
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                } else if let Some(c) = l.strip_prefix(':') {
                    let _ = ctx.send(c.trim().to_string());
                } else if let Some(v) = l.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = l.strip_prefix("event: ") {
                    kind = v.to_string();
                } else if let Some(v) = l.strip_prefix("data: ") {
                    data = Some(v.to_string());
                }
            }
        });
        Ok(SseClient {
            stream,
            events: rx,
            head,
            comments: crx,
        })
    }

    /// The next event within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<SseEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Events until one satisfies `pred` (included), within `timeout`.
    pub fn until(&self, timeout: Duration, pred: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let end = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.next(left) {
                Some(e) => {
                    let stop = pred(&e);
                    out.push(e);
                    if stop {
                        return out;
                    }
                }
                None => break,
            }
        }
        panic!("no matching event within {timeout:?}; got {out:#?}");
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
