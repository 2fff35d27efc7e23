//! Running a child program with a deadline.
//!
//! Every tmux and claude call goes through here so that no call can hang the
//! daemon: stdout and stderr are drained on their own threads (a full pipe
//! cannot deadlock the child), and a child still running at its deadline is
//! killed and reported.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

/// What a finished child left behind.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stderr when there is any, else stdout, trimmed: what to show an operator.
    pub fn complaint(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        text.trim().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {deadline:?} and was killed")]
    Timeout { program: String, deadline: Duration },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// Runs `cmd` to completion, feeding it `input` on stdin, killing it at
/// `deadline`.
pub fn run(
    cmd: &mut Command,
    input: Option<&[u8]>,
    deadline: Duration,
) -> Result<Finished, ProcessError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // A child that exits without reading its stdin gives EPIPE: that is
        // its business, the exit status tells the story.
        let _ = stdin.write_all(bytes);
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(ProcessError::Wait { program, source }),
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProcessError::Timeout { program, deadline });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // A grandchild (tmux's server, say) may inherit the pipes and keep them
    // open; don't wait for it longer than a moment.
    let grace = Duration::from_millis(500);
    Ok(Finished {
        status,
        stdout: out.recv_timeout(grace).unwrap_or_default(),
        stderr: err.recv_timeout(grace).unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> crossbeam_channel::Receiver<String> {
    let (tx, rx) = bounded(1);
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
    } else {
        let _ = tx.send(String::new());
    }
    rx
}

/// Finds `name` on PATH the way a shell would; a value with `/` is taken as a path.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = std::path::PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

/// Whether a process with this pid is still running (signal 0; a process
/// of another user counts as alive). A zombie is not: it has exited and
/// only its parent has not collected it yet. tmux (seen here on 3.3a, built
/// with libutempter as Debian's is) now and then misses the SIGCHLD of a
/// pane's program and leaves it a zombie until its next child exits
/// (tmux/tmux#311, #4559); here that was one stop in three, which then
/// waited out the whole `stop_timeout`.
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !exited(pid)
}

/// Whether `/proc` shows `pid` as exited but not yet collected: state `Z`
/// (or `X` on its way out) with no thread of it left running (a main
/// thread that ended before the others shows `Z` too). No `/proc` entry:
/// not known to have exited.
fn exited(pid: libc::pid_t) -> bool {
    let Some(fields) = u32::try_from(pid).ok().and_then(stat_fields) else {
        return false;
    };
    let own = pid.to_string();
    let threads_left = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.flatten().filter(|t| t.file_name() != *own).count())
            .unwrap_or(0)
    };
    matches!(fields.first().map(String::as_str), Some("Z" | "X")) && threads_left() == 0
}

/// The fields of `/proc/<pid>/stat` after the process's name, from field 3
/// (the state) on: index 0 is the state, 1 the parent pid, 19 the start
/// time. The name is in parentheses and may hold any bytes but NUL,
/// spaces, parentheses and invalid UTF-8 among them, so the fields start
/// after its last `)`. `None` when there is no such process.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let end = stat.iter().rposition(|&b| b == b')')?;
    Some(
        String::from_utf8_lossy(&stat[end + 1..])
            .split_whitespace()
            .map(String::from)
            .collect(),
    )
}

/// Sends `signal` to the program a tmux pane runs: to the process group it
/// leads (tmux starts every pane's program as a session leader, so a
/// wrapper script and the Claude Code it started both get it), or to the
/// process alone when it leads no group. False when there was nothing to
/// signal (gone, or a pid that cannot be a pane's: 0, 1, or one in the
/// daemon's own process group).
pub fn signal_group(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    // SAFETY: getpgid, getpgrp and kill take plain integers; no memory is shared.
    let (group, own) = unsafe { (libc::getpgid(pid), libc::getpgrp()) };
    if group < 0 || group == own {
        // Gone, or in the daemon's own group: never a pane's program
        // (tmux starts each in a session of its own).
        return false;
    }
    let target = if group == pid { -pid } else { pid };
    // SAFETY: as above.
    unsafe { libc::kill(target, signal) == 0 }
}

/// This machine's host name (`gethostname(2)`), `localhost` when it has none
/// usable as a fleet machine name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = if rc == 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_exited_is_not_alive_before_its_parent_collects_it() {
        let mut child = Command::new("sh").args(["-c", "exit 0"]).spawn().unwrap();
        let pid = child.id();
        // Waits for it to exit and leaves it uncollected (WNOWAIT): a
        // zombie, as a pane's program is when tmux misses its SIGCHLD.
        // SAFETY: waitid writes only into `info`, which lives on this stack.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(r, 0, "waitid: {}", std::io::Error::last_os_error());
        // SAFETY: signal 0 only checks the pid.
        assert_eq!(
            unsafe { libc::kill(pid as libc::pid_t, 0) },
            0,
            "the zombie's pid is still taken"
        );
        assert!(!alive(pid), "a zombie counts as alive");
        child.wait().unwrap();
        // A running process is alive, and this one too.
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(alive(sleeper.id()));
        assert!(alive(std::process::id()));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }

    #[test]
    fn captures_both_streams_and_status() {
        let f = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stdout.trim(), "out");
        assert_eq!(f.complaint(), "err");
    }

    /// `sh -c script` as the leader of a process group of its own (as tmux
    /// starts a pane's program), and the pid of the child it prints first.
    fn wrapper_and_child(script: &str) -> (std::process::Child, u32) {
        use std::os::unix::process::CommandExt;
        let mut leader = Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let child: u32 = line.trim().parse().unwrap();
        (leader, child)
    }

    #[test]
    fn a_group_leader_and_what_it_started_both_get_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        // A wrapper that does not exec: the child is in the wrapper's group.
        let (mut leader, child) = wrapper_and_child("sleep 30 & echo $!; wait");
        assert!(signal_group(leader.id(), libc::SIGTERM));
        assert_eq!(leader.wait().unwrap().signal(), Some(libc::SIGTERM));
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive(child)
        });
        assert!(gone, "the wrapper's child {child} survived");
    }

    #[test]
    fn a_process_that_leads_no_group_is_signalled_alone() {
        use std::os::unix::process::ExitStatusExt;
        // The child leads nothing: its group is the wrapper's.
        let (mut leader, child) = wrapper_and_child("sleep 30 & echo $!; wait; sleep 30");
        assert!(signal_group(child, libc::SIGTERM));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            leader.try_wait().unwrap().is_none(),
            "the wrapper got it too"
        );
        let _ = leader.kill();
        assert_eq!(leader.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn never_the_daemons_own_group_nor_pid_0_or_1() {
        // In this test's own group, like any child the daemon starts itself.
        let mut p = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(!signal_group(p.id(), libc::SIGTERM));
        assert!(p.try_wait().unwrap().is_none(), "refused, so still running");
        let _ = p.kill();
        let _ = p.wait();
        assert!(!signal_group(0, libc::SIGTERM));
        assert!(!signal_group(1, libc::SIGTERM));
    }

    #[test]
    fn kills_at_deadline() {
        let t = Instant::now();
        let e = run(
            Command::new("sleep").arg("10"),
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn feeds_stdin() {
        let f = run(
            &mut Command::new("cat"),
            Some(b"hello"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(f.stdout, "hello");
    }

    #[test]
    fn large_output_does_not_deadlock() {
        let f = run(
            Command::new("sh").args([
                "-c",
                "head -c 1000000 /dev/zero | tr '\\0' x; head -c 500000 /dev/zero | tr '\\0' y >&2",
            ]),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.stdout.len(), 1_000_000);
        assert_eq!(f.stderr.len(), 500_000);
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run(
            &mut Command::new("/nonexistent/prog"),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot start /nonexistent/prog"),
            "{e}"
        );
    }
}
