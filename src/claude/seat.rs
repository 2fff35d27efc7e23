//! The seat (live mode): the one Claude Code config dir every managed
//! session runs under. Each account's `home` keeps that account's own login;
//! the seat holds a copy of the active account's. A swap rewrites the seat's
//! `.credentials.json` and every running Claude Code sends its next request
//! as the new account (claude-code-facts.md §8).
//!
//! Every write of the seat's credentials, and every copy of them back into a
//! home, happens under Claude Code's own refresh lock in the seat
//! ([`SeatLock`]), so it never races a token refresh in flight: a refresh
//! token is single-use, and the file may hold a newer one than the home.
//! Credentials are compared, never logged: [`Login`] shows no token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::claude::facts;
use crate::store::atomic_file;

/// One `.credentials.json` as bytes, with what tells two apart. Its `Debug`
/// shows no token.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub bytes: Vec<u8>,
    /// `claudeAiOauth.refreshToken` (compared, never shown).
    refresh: Option<String>,
    access: Option<String>,
    /// `claudeAiOauth.expiresAt` (ms): the newer of two logins of one
    /// account expires later.
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Login({} bytes, expires_at {:?})",
            self.bytes.len(),
            self.expires_at
        )
    }
}

impl Login {
    pub fn parse(bytes: Vec<u8>) -> Login {
        let v: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        let o = v.as_ref().and_then(|v| v.get("claudeAiOauth"));
        let s = |k: &str| {
            o.and_then(|o| o.get(k))
                .and_then(|x| x.as_str())
                .map(String::from)
        };
        Login {
            refresh: s("refreshToken"),
            access: s("accessToken"),
            expires_at: o.and_then(|o| o.get("expiresAt")).and_then(|x| x.as_u64()),
            bytes,
        }
    }

    /// The same login: the same tokens (or, unparsable, the same bytes).
    pub fn same(&self, other: &Login) -> bool {
        match (&self.refresh, &other.refresh) {
            (Some(a), Some(b)) => a == b && self.access == other.access,
            _ => self.bytes == other.bytes,
        }
    }

    /// Whether it holds a login at all (an OAuth access token).
    pub fn present(&self) -> bool {
        self.access.as_deref().is_some_and(|t| !t.is_empty())
    }
}

/// The credentials file of a config dir (a home or the seat).
pub fn credentials_path(dir: &Path) -> PathBuf {
    dir.join(facts::CREDENTIALS_FILE)
}

/// Reads a config dir's login; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> std::io::Result<Option<Login>> {
    match std::fs::read(credentials_path(dir)) {
        Ok(b) => Ok(Some(Login::parse(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a login into a config dir atomically, mode 0600. Into a home, the
/// login it replaces is kept first as `.credentials.json.prev` (0600): one
/// generation back, so even a wrong copy loses nothing.
pub fn write(dir: &Path, login: &Login, keep_previous: bool) -> std::io::Result<()> {
    let path = credentials_path(dir);
    if keep_previous {
        if let Ok(old) = std::fs::read(&path) {
            if old != login.bytes {
                atomic_file::write_with_mode(&dir.join(PREVIOUS_FILE), &old, 0o600)?;
            }
        }
    }
    atomic_file::write_with_mode(&path, &login.bytes, 0o600)
}

/// Where a home keeps the login a copy replaced.
pub const PREVIOUS_FILE: &str = ".credentials.json.prev";

/// Claude Code's refresh lock in the seat, held: released on drop.
#[derive(Debug)]
pub struct SeatLock {
    dir: PathBuf,
    owner: PathBuf,
}

impl Drop for SeatLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.owner);
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            log::warn!("cannot release {}: {e}", self.dir.display());
        }
    }
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub struct LockBusy(pub String);

impl std::fmt::Display for LockBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a held lock is stale: not touched for [`facts::REFRESH_LOCK_STALE`],
/// or its owner file names a process that is gone (a crashed holder: our
/// own previous run, or a killed Claude Code).
pub fn lock_is_stale(seat: &Path, now: SystemTime) -> bool {
    let dir = seat.join(facts::REFRESH_LOCK);
    let Ok(meta) = std::fs::metadata(&dir) else {
        return false;
    };
    let old = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age > facts::REFRESH_LOCK_STALE);
    let owner_gone = owner_pid(seat).is_some_and(|pid| !crate::sys::process::alive(pid));
    old || owner_gone
}

/// The pid in the lock's owner file (its first number), if any.
pub fn owner_pid(seat: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(seat.join(facts::REFRESH_LOCK_OWNER)).ok()?;
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// Takes the seat's refresh lock, waiting up to `wait` for a holder to let
/// go; a stale lock is broken, as `proper-lockfile` does.
pub fn lock(seat: &Path, wait: Duration) -> Result<SeatLock, LockBusy> {
    let dir = seat.join(facts::REFRESH_LOCK);
    let owner = seat.join(facts::REFRESH_LOCK_OWNER);
    let asked = Instant::now();
    let deadline = asked + wait;
    let mut held_by = None;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let started = crate::sys::time::rfc3339(SystemTime::now());
                let _ = std::fs::write(&owner, format!("{} {started}\n", std::process::id()));
                if let Some(pid) = held_by {
                    log::info!(
                        "the seat's refresh lock was held (pid {pid}): taken after {} ms",
                        asked.elapsed().as_millis()
                    );
                }
                return Ok(SeatLock { dir, owner });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                held_by = Some(owner_pid(seat).map_or("unknown".into(), |p| p.to_string()));
                if lock_is_stale(seat, SystemTime::now()) {
                    log::warn!(
                        "{} is stale (holder {:?} gone or silent for {:?}): breaking it",
                        dir.display(),
                        owner_pid(seat),
                        facts::REFRESH_LOCK_STALE
                    );
                    let _ = std::fs::remove_file(&owner);
                    let _ = std::fs::remove_dir(&dir);
                    continue;
                }
                if Instant::now() >= deadline {
                    return Err(LockBusy(format!(
                        "the seat's refresh lock {} is held (pid {}) for longer than {wait:?}",
                        dir.display(),
                        owner_pid(seat).map_or("unknown".into(), |p| p.to_string())
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(LockBusy(format!(
                    "cannot take the seat's refresh lock {}: {e}",
                    dir.display()
                )))
            }
        }
    }
}

/// What [`sync`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// The seat and the home hold the same login.
    Same,
    /// The seat's login was newer (Claude Code refreshed it): kept in the home.
    KeptInHome,
    /// The home's login was newer (a new login): copied into the seat.
    Seated,
    /// The seat had no login: the home's was copied in.
    SeatedEmpty,
}

/// Makes the seat and `home` (the active account's) hold the same login,
/// the newer of the two winning, under the lock the caller holds. A seat
/// with a login and a home without one keeps the seat's in the home.
pub fn sync(_held: &SeatLock, seat: &Path, home: &Path) -> std::io::Result<Synced> {
    let in_seat = read(seat)?;
    let in_home = read(home)?;
    match (in_seat, in_home) {
        (Some(s), Some(h)) if s.same(&h) => Ok(Synced::Same),
        (Some(s), Some(h)) if h.expires_at > s.expires_at => {
            write(seat, &h, false)?;
            Ok(Synced::Seated)
        }
        (Some(s), _) => {
            write(home, &s, true)?;
            Ok(Synced::KeptInHome)
        }
        (None, Some(h)) => {
            write(seat, &h, false)?;
            Ok(Synced::SeatedEmpty)
        }
        (None, None) => Ok(Synced::Same),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(access: &str, refresh: &str, expires: u64) -> Login {
        Login::parse(
            serde_json::to_vec(&serde_json::json!({"claudeAiOauth": {
                "accessToken": access, "refreshToken": refresh, "expiresAt": expires}}))
            .unwrap(),
        )
    }

    #[test]
    fn a_login_shows_no_token() {
        let l = login("sk-ant-oat01-secret", "sk-ant-ort01-secret", 5);
        assert!(!format!("{l:?}").contains("secret"));
        assert!(l.present());
        assert!(l.same(&login("sk-ant-oat01-secret", "sk-ant-ort01-secret", 9)));
        assert!(!l.same(&login("sk-ant-oat01-secret", "sk-ant-ort01-other", 5)));
    }

    #[test]
    fn the_lock_excludes_and_a_dead_holders_lock_is_broken() {
        let d = tempfile::tempdir().unwrap();
        let held = lock(d.path(), Duration::ZERO).unwrap();
        let busy = lock(d.path(), Duration::from_millis(50)).unwrap_err();
        assert!(busy.0.contains("is held"), "{busy}");
        drop(held);
        assert!(!d.path().join(facts::REFRESH_LOCK).exists());
        // A holder that died: its pid is gone.
        std::fs::create_dir(d.path().join(facts::REFRESH_LOCK)).unwrap();
        std::fs::write(d.path().join(facts::REFRESH_LOCK_OWNER), "999999999 x\n").unwrap();
        assert!(lock_is_stale(d.path(), SystemTime::now()));
        let _again = lock(d.path(), Duration::ZERO).unwrap();
    }

    #[test]
    fn sync_keeps_the_newer_login_and_the_one_it_replaces() {
        let d = tempfile::tempdir().unwrap();
        let (seat, home) = (d.path().join("seat"), d.path().join("home"));
        std::fs::create_dir_all(&seat).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let held = lock(&seat, Duration::ZERO).unwrap();
        write(&home, &login("a1", "r1", 10), false).unwrap();
        assert_eq!(sync(&held, &seat, &home).unwrap(), Synced::SeatedEmpty);
        assert_eq!(sync(&held, &seat, &home).unwrap(), Synced::Same);
        // Claude Code refreshed in the seat: the home keeps it, and its old one.
        write(&seat, &login("a2", "r2", 20), false).unwrap();
        assert_eq!(sync(&held, &seat, &home).unwrap(), Synced::KeptInHome);
        assert!(read(&home).unwrap().unwrap().same(&login("a2", "r2", 20)));
        let prev = Login::parse(std::fs::read(home.join(PREVIOUS_FILE)).unwrap());
        assert!(prev.same(&login("a1", "r1", 10)));
        // A new login in the home (the operator logged in again): seated.
        write(&home, &login("a3", "r3", 30), false).unwrap();
        assert_eq!(sync(&held, &seat, &home).unwrap(), Synced::Seated);
        use std::os::unix::fs::PermissionsExt;
        for dir in [&seat, &home] {
            let mode = std::fs::metadata(credentials_path(dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
