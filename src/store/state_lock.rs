//! One daemon per state folder: `run` takes an exclusive `flock` on
//! `<state_dir>/daemon.lock` before it reads or writes anything else there
//! (journal recovery, `active.json`, `sessions.json`, events). A second
//! `run` on the same folder, started by mistake or on another port, exits 3
//! naming the holder instead of rolling back a live swap or driving the
//! same sessions twice.
//!
//! The lock belongs to the open file: it ends with the process however it
//! ends (`kill -9` included), so a stale file never blocks a restart. The
//! descriptor is close-on-exec, so tmux and Claude Code never inherit it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name in the state folder.
pub const LOCK_FILE: &str = "daemon.lock";

/// Held for the daemon's life; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    pub path: PathBuf,
}

/// Takes the lock or says who holds it, in one line.
pub fn acquire(state_dir: &Path) -> Result<StateLock, String> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create state_dir {}: {e}", state_dir.display()))?;
    let path = state_dir.join(LOCK_FILE);
    // No truncation on open: a holder's pid must stay readable.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own for the call's duration.
    let try_lock = |f: &std::fs::File| {
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let mut locked = try_lock(&file);
    // A holder that just died may still have its lock shared with a child it
    // forked and that has not yet reached exec (a crash while a tmux command
    // was being spawned, on a loaded machine): when the recorded pid is gone,
    // wait briefly for the lock to be let go instead of refusing at once.
    let grace = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while locked.is_err() && std::time::Instant::now() < grace && !recorded_holder_alive(&mut file)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        locked = try_lock(&file);
    }
    if let Err(e) = locked {
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim();
            let pid = if pid.is_empty() { "unknown" } else { pid };
            let open_in = holders(&path)
                .into_iter()
                .filter(|(p, _)| p.to_string() != pid)
                .map(|(p, cmd)| format!("{p} ({cmd})"))
                .collect::<Vec<_>>();
            let also = if open_in.is_empty() {
                String::new()
            } else {
                format!("; its lock file is also open in {}", open_in.join(", "))
            };
            return Err(format!(
                "another claude-failover (pid {pid}) holds {}{also}",
                state_dir.display()
            ));
        }
        return Err(format!("cannot lock {}: {e}", path.display()));
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(pid.as_bytes()))
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(StateLock { _file: file, path })
}

/// Whether the pid recorded in the lock file names a live process.
fn recorded_holder_alive(file: &mut std::fs::File) -> bool {
    let mut text = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
    let _ = file.rewind();
    match text.trim().parse::<u32>() {
        // A zombie is dead: its files are closed already.
        Ok(pid) => crate::sys::process::alive(pid),
        Err(_) => true,
    }
}

/// The processes that have `path` open (from `/proc/*/fd`), with their
/// command lines: who really holds the lock when the recorded pid is gone.
fn holders(path: &Path) -> Vec<(u32, String)> {
    let Ok(want) = path.canonicalize() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let fds = proc_entry.path().join("fd");
        let open = std::fs::read_dir(&fds)
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == want));
        if open && pid != std::process::id() {
            let cmd = std::fs::read(proc_entry.path().join("cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            found.push((pid, cmd.chars().take(120).collect()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).expect("first");
        // flock locks belong to open files: a second open in this process
        // conflicts just as another process would.
        let e = acquire(dir.path()).unwrap_err();
        assert_eq!(
            e,
            format!(
                "another claude-failover (pid {}) holds {}",
                std::process::id(),
                dir.path().display()
            )
        );
        drop(first);
        acquire(dir.path()).expect("free again once dropped");
    }

    #[test]
    fn a_lock_left_by_a_dead_holder_is_waited_for_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).expect("first");
        // The recorded holder is gone, but its lock is still shared (as with
        // a child forked just before it died, not yet at exec).
        std::fs::write(dir.path().join(LOCK_FILE), "4000000000\n").unwrap();
        let letgo = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(400));
            drop(first);
        });
        let started = std::time::Instant::now();
        acquire(dir.path()).expect("taken once the dead holder's lock is let go");
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        letgo.join().unwrap();
    }
}
