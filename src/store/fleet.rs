//! What the fleet keeps in Redis (or Valkey), through the `redis` crate's
//! blocking API, every call bounded by the connection's read and write
//! timeouts ([`DEADLINE`]). The key schema, each key with a TTL (see
//! docs/fleet.md for the reasons and the failure modes):
//!
//! | key | value | TTL |
//! | --- | --- | --- |
//! | `claude-failover:reading:{account}:{limit}` (`five_hour`, `seven_day`, `limits`) | `{observed_ms}\|{SharedReading JSON}`, newest wins (a Lua script compares) | [`READING_TTL`] |
//! | `claude-failover:poll:{account}` | the machine that polls the usage endpoint for the fleet this interval | `quota.poll_interval` + 1 s |
//! | `claude-failover:machine:{machine}` | its [`MachineLease`] JSON | `fleet.lease_ttl` |
//! | `claude-failover:machines` | sorted set: machine → its lease's expiry (Unix ms), the index of the above | 2 × `fleet.lease_ttl`, pushed out by every renewal; readers remove members whose lease key is gone |
//! | `claude-failover:claim:{account}` | `{machine}\|{expires_ms}` of a machine swapping to it, set only when free or its own (Lua) | [`CLAIM_TTL`] |
//!
//! Channels: `claude-failover:readings` (every reading written, as
//! [`SharedReading`] JSON) and `claude-failover:events` (swap events,
//! [`FleetEvent`] JSON).
//!
//! No token or credential ever goes into Redis: every machine keeps its own
//! login per account (refresh tokens are single-use).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::fleet::{Claim, MachineLease};
use crate::decide::quota::{Limit, Source, Window};

pub const PREFIX: &str = "claude-failover:";
/// Every Redis call's deadline (connect, read, write).
pub const DEADLINE: Duration = Duration::from_millis(500);
/// How long a shared reading is kept: a reading older than the five-hour
/// window says little, and the weekly one is read again long before.
pub const READING_TTL: Duration = Duration::from_secs(6 * 3600);
/// How long a claim on a swap target holds: long enough for the swap to
/// start and the machine's lease to name the account.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// The slack a poll lease has on top of the poll interval: the time between
/// taking the lease and the request reaching the endpoint.
pub const POLL_SLACK: Duration = Duration::from_secs(1);

pub const READINGS_CHANNEL: &str = "claude-failover:readings";
pub const EVENTS_CHANNEL: &str = "claude-failover:events";
const MACHINES: &str = "claude-failover:machines";

/// A Redis call that did not do its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetError {
    /// Down, refused, timed out, the connection broke: this machine goes
    /// on alone until a call succeeds again.
    Unreachable(String),
    /// Redis answered with an error (a key of the wrong type, no
    /// permission, read-only, out of memory): this call failed, the link
    /// stands.
    Answered(String),
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetError::Unreachable(e) | FleetError::Answered(e) => f.write_str(e),
        }
    }
}

impl From<redis::RedisError> for FleetError {
    fn from(e: redis::RedisError) -> FleetError {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            FleetError::Unreachable(e.to_string())
        } else {
            FleetError::Answered(e.to_string())
        }
    }
}

fn unreadable(e: impl std::fmt::Display) -> FleetError {
    FleetError::Answered(e.to_string())
}

/// One quota reading as the fleet shares it: any machine's reading serves all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedReading {
    pub account: String,
    /// The machine that took it.
    pub machine: String,
    pub source: Source,
    /// Unix ms when that machine took it.
    pub observed_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub five_hour: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seven_day: Option<Window>,
    /// The usage endpoint's limits (model-scoped ones included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Vec<Limit>>,
}

impl SharedReading {
    /// The reading split by limit, each with only its own field: the keys
    /// it is written to, newest per limit.
    fn parts(&self) -> Vec<(&'static str, SharedReading)> {
        let bare = SharedReading {
            five_hour: None,
            seven_day: None,
            limits: None,
            ..self.clone()
        };
        let mut out = Vec::new();
        if self.five_hour.is_some() {
            out.push((
                "five_hour",
                SharedReading {
                    five_hour: self.five_hour,
                    ..bare.clone()
                },
            ));
        }
        if self.seven_day.is_some() {
            out.push((
                "seven_day",
                SharedReading {
                    seven_day: self.seven_day,
                    ..bare.clone()
                },
            ));
        }
        if self.limits.is_some() {
            out.push((
                "limits",
                SharedReading {
                    limits: self.limits.clone(),
                    ..bare
                },
            ));
        }
        out
    }
}

/// A swap on some machine, as every machine's event stream shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEvent {
    pub machine: String,
    /// `swap_started` or `swap_ended`.
    pub kind: String,
    pub data: serde_json::Value,
}

/// What a poll lease request answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollLease {
    /// This machine polls this interval.
    Granted,
    /// Another machine does; it lapses in this long.
    Held { by: String, for_ms: u64 },
}

fn reading_key(account: &str, limit: &str) -> String {
    format!("{PREFIX}reading:{account}:{limit}")
}
fn poll_key(account: &str) -> String {
    format!("{PREFIX}poll:{account}")
}
fn machine_key(machine: &str) -> String {
    format!("{PREFIX}machine:{machine}")
}
fn claim_key(account: &str) -> String {
    format!("{PREFIX}claim:{account}")
}

/// Writes each part whose stored reading is older, then publishes the
/// whole reading once if any part was written. KEYS: the parts' keys;
/// ARGV: observed ms, TTL ms, channel, message, then each part's JSON.
const PUT_READING: &str = r"
local wrote = 0
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local t = cur and tonumber(string.match(cur, '^(%d+)|')) or nil
  if (not t) or t < tonumber(ARGV[1]) then
    redis.call('SET', key, ARGV[1] .. '|' .. ARGV[4 + i], 'PX', ARGV[2])
    wrote = wrote + 1
  end
end
if wrote > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return wrote
";

/// The poll lease, atomically: free or this machine's → (re)taken for
/// ARGV[2] ms; another's → its remaining time and holder.
const POLL_LEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0, ARGV[1]}
end
return {0, redis.call('PTTL', KEYS[1]), cur}
";

/// The claim, atomically: the first of KEYS free or already this
/// machine's (its value starts with `ARGV[1]|`) is set to ARGV[2] for
/// ARGV[3] ms; returns its 1-based index, 0 when every one is another's.
const CLAIM: &str = r"
local prefix = ARGV[1] .. '|'
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if (not cur) or string.sub(cur, 1, #prefix) == prefix then
    redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
    return i
  end
end
return 0
";

/// Deletes each of KEYS whose value is ARGV[1] or starts with `ARGV[1]|`:
/// this machine's own poll leases or claims, never another's.
const RELEASE: &str = r"
local n = 0
local prefix = ARGV[1] .. '|'
for _, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if cur and (cur == ARGV[1] or string.sub(cur, 1, #prefix) == prefix) then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
";

/// The Lua scripts, loaded once per connection by `EVALSHA` (the crate
/// falls back to `EVAL` when the server does not know one yet).
pub struct Scripts {
    put_reading: redis::Script,
    poll_lease: redis::Script,
    claim: redis::Script,
    release: redis::Script,
}

/// A connection to the fleet's Redis, reopened on the next call after any
/// failure. Every method answers within about [`DEADLINE`] per round trip.
pub struct FleetStore {
    client: redis::Client,
    conn: Option<redis::Connection>,
    scripts: Scripts,
    resolve: Resolve,
    /// A name lookup that outlived its call's deadline: the next call waits
    /// on it again rather than starting a second one.
    resolving: Option<Resolving>,
}

/// How a host name becomes addresses (`getaddrinfo`, or a test's own).
type Resolve = fn(&str, u16) -> std::io::Result<Vec<std::net::SocketAddr>>;
type Resolving = crossbeam_channel::Receiver<std::io::Result<Vec<std::net::SocketAddr>>>;

fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok((host, port).to_socket_addrs()?.collect())
}

impl FleetStore {
    /// Parses the URL; connects at the first call.
    pub fn open(url: &str) -> Result<FleetStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("fleet.redis: {e}"))?;
        Ok(FleetStore {
            client,
            conn: None,
            scripts: Scripts {
                put_reading: redis::Script::new(PUT_READING),
                poll_lease: redis::Script::new(POLL_LEASE),
                claim: redis::Script::new(CLAIM),
                release: redis::Script::new(RELEASE),
            },
            resolve: system_resolve,
            resolving: None,
        })
    }

    /// A new connection, within about [`DEADLINE`] per address. The host's
    /// name is looked up on a thread of its own: `getaddrinfo` has no
    /// timeout, and a resolver that does not answer must not hold the
    /// fleet thread for its retries (the redis crate resolves inline).
    /// Every new connection looks the name up again, so a Redis that moved
    /// is followed.
    fn connect(&mut self) -> Result<redis::Connection, String> {
        use redis::ConnectionAddr;
        let info = self.client.get_connection_info().clone();
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) if host.parse::<std::net::IpAddr>().is_err() => {
                (host.clone(), *port)
            }
            // An address already (nothing to look up), or a socket path;
            // `rediss://` never gets here: config validation refuses it.
            _ => {
                return self
                    .client
                    .get_connection_with_timeout(DEADLINE)
                    .map_err(|e| e.to_string())
            }
        };
        let lookup = self.resolving.take().unwrap_or_else(|| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let resolve = self.resolve;
            let name = host.clone();
            let spawned = std::thread::Builder::new()
                .name("fleet-resolve".into())
                .spawn(move || {
                    let _ = tx.send(resolve(&name, port));
                });
            if let Err(e) = spawned {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let _ = tx.send(Err(e));
                return rx;
            }
            rx
        });
        let addrs = match lookup.recv_timeout(DEADLINE) {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(e)) => return Err(format!("cannot resolve {host}: {e}")),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                self.resolving = Some(lookup);
                return Err(format!(
                    "{host} not resolved within {} ms (the resolver does not answer)",
                    DEADLINE.as_millis()
                ));
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "cannot resolve {host}: the lookup ended without an answer"
                ))
            }
        };
        let mut last = format!("{host} resolves to no address");
        for addr in addrs {
            let at = info
                .clone()
                .set_addr(ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()));
            match redis::Client::open(at).and_then(|c| c.get_connection_with_timeout(DEADLINE)) {
                Ok(conn) => return Ok(conn),
                Err(e) => last = format!("{host} ({}): {e}", addr.ip()),
            }
        }
        Err(last)
    }

    /// A second connection for `SUBSCRIBE` (a subscribed connection takes
    /// no other command), with a read timeout of `wake` so its reader can
    /// look at its stop flag.
    pub fn subscriber(&mut self, wake: Duration) -> Result<redis::Connection, String> {
        let conn = self.connect()?;
        conn.set_read_timeout(Some(wake))
            .map_err(|e| e.to_string())?;
        conn.set_write_timeout(Some(DEADLINE))
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection, &Scripts) -> redis::RedisResult<T>,
    ) -> Result<T, FleetError> {
        if self.conn.is_none() {
            let unreachable = |e: redis::RedisError| FleetError::Unreachable(e.to_string());
            let conn = self.connect().map_err(FleetError::Unreachable)?;
            conn.set_read_timeout(Some(DEADLINE)).map_err(unreachable)?;
            conn.set_write_timeout(Some(DEADLINE))
                .map_err(unreachable)?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        f(conn, &self.scripts).map_err(|e| {
            let e = FleetError::from(e);
            if matches!(e, FleetError::Unreachable(_)) {
                // A timed-out or broken connection may hold a half-read
                // answer: never reuse it.
                self.conn = None;
            }
            e
        })
    }

    pub fn ping(&mut self) -> Result<(), FleetError> {
        self.with(|c, _| redis::cmd("PING").query::<String>(c).map(|_| ()))
    }

    /// Writes `r` where it is newer than what is stored, and publishes it.
    /// Returns whether any part was written.
    pub fn put_reading(&mut self, r: &SharedReading) -> Result<bool, FleetError> {
        let parts = r.parts();
        if parts.is_empty() {
            return Ok(false);
        }
        let message = serde_json::to_string(r).map_err(unreadable)?;
        let mut values = Vec::new();
        for (_, p) in &parts {
            values.push(serde_json::to_string(p).map_err(unreadable)?);
        }
        let ttl = READING_TTL.as_millis() as u64;
        self.with(|c, scripts| {
            let mut inv = scripts.put_reading.prepare_invoke();
            for (limit, _) in &parts {
                inv.key(reading_key(&r.account, limit));
            }
            inv.arg(r.observed_at_ms)
                .arg(ttl)
                .arg(READINGS_CHANNEL)
                .arg(&message);
            for v in &values {
                inv.arg(v);
            }
            inv.invoke::<u32>(c).map(|n| n > 0)
        })
    }

    /// Every stored reading of `accounts`, one per account and limit.
    pub fn readings(&mut self, accounts: &[String]) -> Result<Vec<SharedReading>, FleetError> {
        let keys: Vec<String> = accounts
            .iter()
            .flat_map(|a| ["five_hour", "seven_day", "limits"].map(|l| reading_key(a, l)))
            .collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            self.with(|c, _| redis::cmd("MGET").arg(&keys).query(c))?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let (_, json) = v.split_once('|')?;
                serde_json::from_str(json).ok()
            })
            .collect())
    }

    /// Takes the account's poll lease for `ttl` if no other machine holds
    /// it (atomically, [`POLL_LEASE`]): taken anew when this machine holds
    /// it still, so no machine polls before `ttl` from now.
    pub fn poll_lease(
        &mut self,
        account: &str,
        machine: &str,
        ttl: Duration,
    ) -> Result<PollLease, FleetError> {
        let key = poll_key(account);
        let ttl_ms = ttl.as_millis() as u64;
        self.with(|c, scripts| {
            let (granted, pttl, by): (u8, i64, String) = scripts
                .poll_lease
                .key(&key)
                .arg(machine)
                .arg(ttl_ms)
                .invoke(c)?;
            Ok(if granted == 1 {
                PollLease::Granted
            } else {
                PollLease::Held {
                    by,
                    for_ms: pttl.max(0) as u64,
                }
            })
        })
    }

    /// Renews this machine's lease and its entry in the index.
    pub fn renew(&mut self, lease: &MachineLease, ttl: Duration) -> Result<(), FleetError> {
        let json = serde_json::to_string(lease).map_err(unreadable)?;
        let key = machine_key(&lease.machine);
        self.with(|c, _| {
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore()
                .zadd(MACHINES, &lease.machine, lease.expires_ms)
                .ignore()
                // The index lives while any machine renews, and lapses
                // with the last of them.
                .pexpire(MACHINES, 2 * ttl.as_millis() as i64)
                .ignore()
                .query::<()>(c)
        })
    }

    /// Removes this machine's lease (a clean stop).
    pub fn leave(&mut self, machine: &str) -> Result<(), FleetError> {
        let key = machine_key(machine);
        self.with(|c, _| {
            redis::pipe()
                .del(&key)
                .ignore()
                .zrem(MACHINES, machine)
                .ignore()
                .query::<()>(c)
        })
    }

    /// Every machine's lease whose key still exists (Redis expires it:
    /// the server's clock decides, not a reader's), and the claims on
    /// `accounts`. Index entries whose lease key is gone are removed.
    pub fn fleet(
        &mut self,
        accounts: &[String],
    ) -> Result<(Vec<MachineLease>, Vec<Claim>), FleetError> {
        let names: Vec<String> =
            self.with(|c, _| redis::cmd("ZRANGE").arg(MACHINES).arg(0).arg(-1).query(c))?;
        let machine_keys: Vec<String> = names.iter().map(|m| machine_key(m)).collect();
        let claim_keys: Vec<String> = accounts.iter().map(|a| claim_key(a)).collect();
        let all: Vec<String> = machine_keys.iter().chain(&claim_keys).cloned().collect();
        if all.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let values: Vec<Option<String>> =
            self.with(|c, _| redis::cmd("MGET").arg(&all).query(c))?;
        let (leases, claims) = values.split_at(machine_keys.len().min(values.len()));
        let gone: Vec<&String> = names
            .iter()
            .zip(leases)
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| n)
            .collect();
        if !gone.is_empty() {
            self.with(|c, _| redis::cmd("ZREM").arg(MACHINES).arg(&gone).query::<()>(c))?;
        }
        let leases = leases
            .iter()
            .flatten()
            .filter_map(|v| serde_json::from_str::<MachineLease>(v).ok())
            .collect();
        let claims = claims
            .iter()
            .zip(accounts)
            .filter_map(|(v, account)| {
                let (machine, expires) = v.as_deref()?.split_once('|')?;
                Some(Claim {
                    account: account.clone(),
                    machine: machine.to_string(),
                    expires_ms: expires.parse().ok()?,
                })
            })
            .collect();
        Ok((leases, claims))
    }

    /// Claims the first of `candidates` that no other machine claimed, or
    /// that this machine did (one Lua script: compare and set), for
    /// [`CLAIM_TTL`]. `None`: every one is another machine's.
    pub fn claim(
        &mut self,
        candidates: &[String],
        machine: &str,
        now_ms: u64,
    ) -> Result<Option<String>, FleetError> {
        if candidates.is_empty() {
            return Ok(None);
        }
        let ttl_ms = CLAIM_TTL.as_millis() as u64;
        let value = format!("{machine}|{}", now_ms + ttl_ms);
        let i: usize = self.with(|c, scripts| {
            let mut inv = scripts.claim.prepare_invoke();
            for a in candidates {
                inv.key(claim_key(a));
            }
            inv.arg(machine).arg(&value).arg(ttl_ms).invoke(c)
        })?;
        Ok(i.checked_sub(1).and_then(|i| candidates.get(i).cloned()))
    }

    /// Deletes this machine's claims on `accounts` (its swap ended) and,
    /// when `poll_of` names an account, its poll lease on it (the poll did
    /// not read: another machine may try at once). Never another's.
    pub fn release(
        &mut self,
        machine: &str,
        claims_on: &[String],
        poll_of: Option<&str>,
    ) -> Result<u32, FleetError> {
        let mut keys: Vec<String> = claims_on.iter().map(|a| claim_key(a)).collect();
        keys.extend(poll_of.map(poll_key));
        if keys.is_empty() {
            return Ok(0);
        }
        self.with(|c, scripts| {
            let mut inv = scripts.release.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(machine).invoke(c)
        })
    }

    pub fn publish_event(&mut self, event: &FleetEvent) -> Result<(), FleetError> {
        let json = serde_json::to_string(event).map_err(unreadable)?;
        self.with(|c, _| {
            redis::cmd("PUBLISH")
                .arg(EVENTS_CHANNEL)
                .arg(&json)
                .query::<i64>(c)
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_splits_into_one_part_per_limit_it_carries() {
        let r = SharedReading {
            account: "alpha".into(),
            machine: "m1".into(),
            source: Source::Statusline,
            observed_at_ms: 7,
            five_hour: Some(Window {
                utilization: 40.0,
                resets_at: Some(100),
            }),
            seven_day: None,
            limits: None,
        };
        let parts = r.parts();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, "five_hour");
        assert_eq!(parts[0].1.five_hour, r.five_hour);
    }

    /// A resolver that never answers in time (a DNS server gone quiet).
    fn hung_resolve(_: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        std::thread::sleep(Duration::from_secs(30));
        Err(std::io::Error::other("too late"))
    }

    #[test]
    fn a_name_that_does_not_resolve_in_time_is_unreachable_within_the_deadline() {
        let mut store = FleetStore::open("redis://redis.fleet.invalid:6379").expect("url");
        store.resolve = hung_resolve;
        let started = std::time::Instant::now();
        let err = store.ping().expect_err("no address");
        let first = started.elapsed();
        assert!(
            matches!(&err, FleetError::Unreachable(m) if m.contains("not resolved within")),
            "{err:?}"
        );
        // The second call waits on the same lookup, not on a new one.
        let err = store.ping().expect_err("still no address");
        assert!(matches!(err, FleetError::Unreachable(_)), "{err:?}");
        // Bounded by the deadline, far below the resolver's 30 s (the
        // margin is for a loaded machine, not a speed target).
        assert!(first < DEADLINE * 10, "first call took {first:?}");
        assert!(
            started.elapsed() < DEADLINE * 20,
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_name_that_resolves_to_nothing_listening_says_which_address() {
        fn loopback(_: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
            // A port nothing listens on: bound, then closed.
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            drop(l);
            Ok(vec![addr])
        }
        let mut store = FleetStore::open("redis://redis.fleet.invalid:6379").expect("url");
        store.resolve = loopback;
        let err = store.ping().expect_err("refused");
        assert!(
            matches!(&err, FleetError::Unreachable(m) if m.contains("redis.fleet.invalid (127.0.0.1)")),
            "{err:?}"
        );
    }

    #[test]
    fn a_bad_url_is_one_clear_error() {
        let err = FleetStore::open("http://nope").err().expect("refused");
        assert!(err.starts_with("fleet.redis:"), "{err}");
    }
}
