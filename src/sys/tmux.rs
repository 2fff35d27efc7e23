//! The tmux client: every call to tmux goes through here, each with a
//! deadline, always with exact targets.
//!
//! Targets are exact on purpose: `-t ccl-1` matches `ccl-10` by prefix when
//! `ccl-1` does not exist, so a dead session would look alive. Session
//! commands take `=NAME`; pane commands need `=NAME:` (claude-code-facts §7).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::sys::process::{self, Finished, ProcessError};

/// A tmux server: the user's default one, or a named one (`tmux -L NAME`).
#[derive(Debug, Clone)]
pub struct Tmux {
    socket: Option<String>,
    deadline: Duration,
}

/// One session as `list-sessions` shows it (its active pane's fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub name: String,
    pub pane_pid: Option<u32>,
    /// The program in the pane has exited (kept by `remain-on-exit`).
    pub pane_dead: bool,
    pub pane_dead_status: Option<i32>,
    /// The pane is in copy mode or similar, where typed keys are swallowed.
    pub pane_in_mode: bool,
    /// The account home the pane's process runs under (its
    /// `CLAUDE_CONFIG_DIR`); not from tmux: the session watcher reads it
    /// from the process (`None` until then, or when it cannot be read).
    pub config_dir: Option<PathBuf>,
}

/// How to start a managed session (SPEC.md "Sessions").
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub cwd: PathBuf,
    pub width: u16,
    pub height: u16,
    pub env: Vec<(String, String)>,
    /// The program and its arguments.
    pub argv: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TmuxError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("tmux {args}: {message}")]
    Failed { args: String, message: String },
}

const FIELD_SEP: char = '\t';
const LIST_FORMAT: &str =
    "#{session_name}\t#{pane_pid}\t#{pane_dead}\t#{pane_dead_status}\t#{pane_in_mode}";

impl Tmux {
    pub fn new(socket: Option<String>, deadline: Duration) -> Tmux {
        Tmux { socket, deadline }
    }

    pub fn socket(&self) -> Option<&str> {
        self.socket.as_deref()
    }

    /// How long one call may take.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        if let Some(s) = &self.socket {
            cmd.args(["-L", s]);
        }
        cmd
    }

    fn call(&self, args: &[&str], input: Option<&[u8]>) -> Result<Finished, TmuxError> {
        let mut cmd = self.command();
        cmd.args(args);
        Ok(process::run(&mut cmd, input, self.deadline)?)
    }

    fn ok(&self, args: &[&str], input: Option<&[u8]>) -> Result<Finished, TmuxError> {
        let f = self.call(args, input)?;
        if f.success() {
            Ok(f)
        } else {
            Err(TmuxError::Failed {
                args: args.join(" "),
                message: f.complaint(),
            })
        }
    }

    /// `tmux -V`.
    pub fn version(&self) -> Result<String, TmuxError> {
        Ok(self.ok(&["-V"], None)?.stdout.trim().to_string())
    }

    /// Every session on the server, in one call. No server = no sessions.
    pub fn list_sessions(&self) -> Result<Vec<SessionInfo>, TmuxError> {
        let f = self.call(&["list-sessions", "-F", LIST_FORMAT], None)?;
        if !f.success() {
            let msg = f.complaint();
            if is_no_server(&msg) {
                return Ok(Vec::new());
            }
            return Err(TmuxError::Failed {
                args: "list-sessions".into(),
                message: msg,
            });
        }
        Ok(parse_list(&f.stdout))
    }

    /// Whether a session with exactly this name exists.
    pub fn has_session(&self, name: &str) -> Result<bool, TmuxError> {
        let f = self.call(&["has-session", "-t", &session_target(name)], None)?;
        Ok(f.success())
    }

    /// Starts a detached session running `launch.argv`, keeping the pane when
    /// the program exits so its last words can be read. Answers the pane's
    /// pid (printed by the same call), when tmux said it.
    pub fn new_session(&self, launch: &Launch) -> Result<Option<u32>, TmuxError> {
        let width = launch.width.to_string();
        let height = launch.height.to_string();
        let cwd = launch.cwd.to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "new-session".into(),
            "-d".into(),
            "-P".into(),
            "-F".into(),
            "#{pane_pid}".into(),
            "-s".into(),
            launch.name.clone(),
            "-x".into(),
            width,
            "-y".into(),
            height,
            "-c".into(),
            cwd,
        ];
        for (k, v) in &launch.env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        if let [program] = launch.argv.as_slice() {
            // One argument alone is run by tmux through `sh -c`: quote it so
            // the shell sees exactly that program.
            args.push(shell_quote(program));
        } else {
            args.extend(launch.argv.iter().cloned());
        }
        // Every argument so far is data: none may end the tmux command.
        let mut args: Vec<String> = args.iter().map(|a| literal_arg(a)).collect();
        // remain-on-exit must be on before the program can exit: set it in
        // the same tmux invocation (`;` chains commands atomically).
        args.extend([
            ";".into(),
            "set-option".into(),
            "-w".into(),
            "-t".into(),
            pane_target(&launch.name),
            "remain-on-exit".into(),
            "on".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let f = self.ok(&refs, None)?;
        Ok(f.stdout.lines().next().and_then(|l| l.trim().parse().ok()))
    }

    pub fn kill_session(&self, name: &str) -> Result<(), TmuxError> {
        self.ok(&["kill-session", "-t", &session_target(name)], None)
            .map(|_| ())
    }

    /// The visible screen plus `history` lines of scroll-back, as text.
    pub fn capture_pane(&self, name: &str, history: u32) -> Result<String, TmuxError> {
        let start = format!("-{history}");
        Ok(self
            .ok(
                &[
                    "capture-pane",
                    "-p",
                    "-J",
                    "-S",
                    &start,
                    "-t",
                    &pane_target(name),
                ],
                None,
            )?
            .stdout)
    }

    /// Pastes `text` as a bracketed paste (newlines do not submit).
    pub fn paste(&self, name: &str, text: &str) -> Result<(), TmuxError> {
        let buffer = format!("cf-{}-{}", std::process::id(), name);
        self.ok(&["load-buffer", "-b", &buffer, "-"], Some(text.as_bytes()))?;
        self.ok(
            &[
                "paste-buffer",
                "-p",
                "-d",
                "-b",
                &buffer,
                "-t",
                &pane_target(name),
            ],
            None,
        )
        .map(|_| ())
    }

    /// Types `text` the way Claude Code's TUI takes it (claude-code-facts
    /// §7): a bracketed paste, a short pause, Enter — as ONE tmux command
    /// sequence, so a daemon that dies mid-way never leaves pasted text
    /// without its Enter (the next prompt would be glued onto it).
    pub fn type_text(&self, name: &str, text: &str, pause: Duration) -> Result<(), TmuxError> {
        // A buffer name of its own per call: two typings never share one.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let buffer = format!("cf-{}-{}-{seq}", std::process::id(), name);
        let target = pane_target(name);
        let pause = format!("{:.3}", pause.as_secs_f64());
        self.ok(
            &[
                "load-buffer",
                "-b",
                &buffer,
                "-",
                ";",
                "paste-buffer",
                "-p",
                "-d",
                "-b",
                &buffer,
                "-t",
                &target,
                ";",
                "run-shell",
                "-d",
                &pause,
                "true",
                ";",
                "send-keys",
                "-t",
                &target,
                "Enter",
            ],
            Some(text.as_bytes()),
        )
        .map(|_| ())
    }

    /// Sends one key (`Enter`, `Escape`, …) to the session's pane.
    pub fn send_key(&self, name: &str, key: &str) -> Result<(), TmuxError> {
        self.ok(&["send-keys", "-t", &pane_target(name), key], None)
            .map(|_| ())
    }

    /// Kills the whole server (tests and the demo only).
    pub fn kill_server(&self) -> Result<(), TmuxError> {
        let f = self.call(&["kill-server"], None)?;
        if f.success() || is_no_server(&f.complaint()) {
            Ok(())
        } else {
            Err(TmuxError::Failed {
                args: "kill-server".into(),
                message: f.complaint(),
            })
        }
    }

    /// Runs an arbitrary tmux command (for tests and diagnostics).
    pub fn raw(&self, args: &[&str]) -> Result<Finished, TmuxError> {
        self.call(args, None)
    }
}

/// `arg` as tmux must receive it to pass it on unchanged: tmux splits its
/// command line at every argument that *ends* in `;` (the command
/// separator, the `;` dropped), and takes a trailing `\\;` for a literal `;`.
/// So `Be brief;` must be written `Be brief\\;`; nothing else is special
/// in an argument vector (no shell sees it).
pub fn literal_arg(arg: &str) -> String {
    match arg.strip_suffix(';') {
        Some(head) => format!("{head}\\;"),
        None => arg.to_string(),
    }
}

/// `s` single-quoted for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `=NAME`: an exact session target.
pub fn session_target(name: &str) -> String {
    format!("={name}")
}

/// `=NAME:`: an exact target for the session's active pane.
pub fn pane_target(name: &str) -> String {
    format!("={name}:")
}

fn is_no_server(message: &str) -> bool {
    message.contains("no server running")
        // The last session killed: the server is on its way out.
        || message.contains("server exited unexpectedly")
        || message.contains("error connecting to")
        || message.contains("No such file or directory")
}

fn parse_list(out: &str) -> Vec<SessionInfo> {
    out.lines()
        .filter(|l| !l.is_empty())
        .filter_map(|line| {
            let f: Vec<&str> = line.split(FIELD_SEP).collect();
            if f.len() < 5 {
                return None;
            }
            Some(SessionInfo {
                name: f[0].to_string(),
                pane_pid: f[1].parse().ok(),
                pane_dead: f[2] == "1",
                pane_dead_status: f[3].parse().ok(),
                pane_in_mode: f[4] == "1",
                config_dir: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_output() {
        let out = "ccl-1\t123\t0\t\t0\nccl-10\t456\t1\t127\t1\n";
        let s = parse_list(out);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            SessionInfo {
                name: "ccl-1".into(),
                pane_pid: Some(123),
                pane_dead: false,
                pane_dead_status: None,
                pane_in_mode: false,
                config_dir: None,
            }
        );
        assert!(s[1].pane_dead);
        assert_eq!(s[1].pane_dead_status, Some(127));
    }

    #[test]
    fn an_argument_ending_in_a_semicolon_is_escaped_for_tmux() {
        assert_eq!(literal_arg("Be brief;"), "Be brief\\;");
        assert_eq!(literal_arg(";"), "\\;");
        assert_eq!(literal_arg("a\\;"), "a\\\\;");
        assert_eq!(literal_arg("a;b"), "a;b");
        assert_eq!(literal_arg(""), "");
        assert_eq!(shell_quote("/opt/my claude"), "'/opt/my claude'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn targets_are_exact() {
        assert_eq!(session_target("ccl-1"), "=ccl-1");
        assert_eq!(pane_target("ccl-1"), "=ccl-1:");
    }
}
