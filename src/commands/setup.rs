//! `claude-failover setup [--dry-run]`: prepares every account home so the
//! daemon can run sessions under it and move them between accounts.
//!
//! - `shared_root/<entry>` exists for every `shared` entry, and every
//!   account's `<home>/<entry>` is an absolute symlink to it.
//! - A real folder found where a link belongs (Claude Code makes one when a
//!   link is missing) is merged into the shared folder when that loses
//!   nothing: a file on both sides (or in two accounts) with the same bytes
//!   is kept once; different bytes, or a file where the other side has a
//!   folder, is a conflict. Then the emptied folder is removed and the link
//!   put in its place.
//! - Our hook command is on every hook event in each account's
//!   `settings.json`, every other key and the user's own hooks kept.
//! - Every pool `cwd` and project `path` is trusted in each account's
//!   `.claude.json`, every other key kept.
//!
//! Everything is planned before anything is changed: when any conflict or
//! unreadable file turns up anywhere, setup changes nothing and lists every
//! one of them. A second run finds nothing to do and says so. JSON files are
//! written atomically; `.credentials.json` is never opened. Nothing is ever
//! replaced or deleted that is not a copy of something kept: merged files
//! are moved (a hard link or rename, so a file is never in neither place),
//! files dropped as identical are compared again just before, and folders
//! are removed only once empty.
//!
//! Run it with the accounts' Claude Code sessions stopped: a session writing
//! into a folder while it is merged makes setup stop (losing nothing), and a
//! session rewriting `.claude.json` at the same moment may lose one of the
//! two writes.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::claude::facts;
use crate::claude::settings;
use crate::claude::shared_folders::{self, Found, Problem, SETUP_HINT};
use crate::commands::check::{self, CheckLine};
use crate::config::Config;
use crate::store::atomic_file;

/// What setup did, or on a dry run would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// One line per action, in order.
    pub actions: Vec<String>,
    /// True when nothing was changed on purpose (`--dry-run`).
    pub dry_run: bool,
}

impl SetupReport {
    /// True when everything was already in place.
    pub fn nothing_to_do(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Why setup did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Setup would lose data or cannot read something it needs: nothing was
    /// changed. One line per reason, each naming the paths concerned.
    #[error("setup refused, nothing was changed: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// An action failed part way. The actions before it stay done and lose
    /// nothing; running setup again plans from what is on disk then.
    #[error("setup stopped after {done} of {total} actions: {action}: {source}")]
    Failed {
        done: usize,
        total: usize,
        action: String,
        source: io::Error,
    },
    /// Writing to `out` failed.
    #[error("cannot write setup's output: {0}")]
    Output(io::Error),
}

/// `claude-failover setup [--dry-run]`: runs [`setup`] with this executable
/// as the hook command, printing to stdout. Returns the exit status: 0 done
/// (or nothing to do, or a dry run that found no conflict), 1 refused or
/// failed.
pub fn setup_command(config: &Config, dry_run: bool) -> crate::commands::Outcome {
    let binary = match std::env::current_exe() {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => {
            return Err(crate::commands::Failed::new(1, format!("claude-failover setup: cannot tell where this program is installed (needed for the hook command): {e}")));
        }
    };
    // A reader that goes away (`setup | head`) must not stop setup halfway.
    let mut out = crate::commands::StdoutUnlessClosed::default();
    match setup(config, &binary, dry_run, &mut out) {
        Ok(_) => match control_token(config, dry_run, &mut out) {
            Ok(()) => Ok(0),
            Err(e) => Err(crate::commands::Failed::new(
                1,
                format!("claude-failover setup: {e}"),
            )),
        },
        // `setup` has already printed the reasons, one per line.
        Err(SetupError::Refused(_)) | Err(SetupError::Failed { .. }) => Ok(1),
        Err(e) => Err(crate::commands::Failed::new(
            1,
            format!("claude-failover setup: {e}"),
        )),
    }
}

/// The control plane's token (`http.token_file`): generated, mode 0600,
/// when absent, owned like the state folder (setup run as root for the
/// daemon's user); a file others may read is refused, as `run` refuses it.
pub fn control_token(config: &Config, dry_run: bool, out: &mut dyn Write) -> Result<(), String> {
    let path = &config.http.token_file;
    if path.exists() {
        return crate::daemon::http::ensure_token(path).map(|_| ());
    }
    if dry_run {
        let _ = writeln!(
            out,
            "would generate the control-plane token in {} (mode 0600)",
            path.display()
        );
        return Ok(());
    }
    crate::daemon::http::ensure_token(path)?;
    adopt_owner(path, owner_of(&config.state_dir));
    let _ = writeln!(
        out,
        "generated the control-plane token in {} (mode 0600)",
        path.display()
    );
    Ok(())
}

/// Plans everything, then (unless `dry_run`) carries it out, printing one
/// line per action to `out`. `binary` is the program the hooks call
/// (`'<binary>' hook`).
pub fn setup(
    config: &Config,
    binary: &str,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<SetupReport, SetupError> {
    let actions = match plan(config, binary) {
        Ok(actions) => actions,
        Err(reasons) => {
            let o = SetupError::Output;
            writeln!(
                out,
                "setup refused; nothing was changed. Resolve these first:"
            )
            .map_err(o)?;
            for r in &reasons {
                writeln!(out, "  {r}").map_err(o)?;
            }
            return Err(SetupError::Refused(reasons));
        }
    };
    let lines: Vec<String> = actions.iter().map(Action::to_string).collect();
    let o = SetupError::Output;
    for account in &config.accounts {
        let path = account.home.join(facts::SETTINGS_JSON);
        if let Some(theirs) = JsonFile::read(&path)
            .ok()
            .and_then(|f| settings::users_statusline(&f.value))
        {
            writeln!(
                out,
                "note: account {} keeps its own status line (`{theirs}`): passive quota readings are off for it; the usage endpoint is polled instead",
                account.name
            )
            .map_err(o)?;
        }
    }
    if actions.is_empty() && config.live_seat().is_some() {
        writeln!(
            out,
            "nothing to do: the seat {} holds the hooks, the status line, the trust and the active account's login",
            config.live_seat().unwrap_or(Path::new("")).display()
        )
        .map_err(o)?;
        return Ok(SetupReport {
            actions: lines,
            dry_run,
        });
    }
    if actions.is_empty() {
        writeln!(
            out,
            "nothing to do: {} account{} share {} through {}, hooks installed, folders trusted",
            config.accounts.len(),
            if config.accounts.len() == 1 { "" } else { "s" },
            config.shared.join(", "),
            config.shared_root.display()
        )
        .map_err(o)?;
        return Ok(SetupReport {
            actions: lines,
            dry_run,
        });
    }
    if dry_run {
        for line in &lines {
            writeln!(out, "{line}").map_err(o)?;
        }
        writeln!(
            out,
            "dry run: {} actions planned, nothing changed",
            lines.len()
        )
        .map_err(o)?;
        return Ok(SetupReport {
            actions: lines,
            dry_run,
        });
    }
    let total = actions.len();
    for (done, (action, line)) in actions.iter().zip(&lines).enumerate() {
        if let Err(source) = action.apply() {
            writeln!(out, "FAILED {line}: {source}").map_err(o)?;
            writeln!(
                out,
                "setup stopped after {done} of {total} actions; what was done stays and loses nothing. Fix the cause and run setup again."
            )
            .map_err(o)?;
            return Err(SetupError::Failed {
                done,
                total,
                action: line.clone(),
                source,
            });
        }
        writeln!(out, "{line}").map_err(o)?;
    }
    writeln!(out, "setup done: {total} actions").map_err(o)?;
    Ok(SetupReport {
        actions: lines,
        dry_run,
    })
}

/// The Claude Code config dirs sessions run with, named for the operator:
/// in live mode the seat alone, in restart mode every account's home.
pub fn config_dirs(config: &Config) -> Vec<(String, PathBuf)> {
    match config.live_seat() {
        Some(seat) => vec![("seat".to_string(), seat.to_path_buf())],
        None => config
            .accounts
            .iter()
            .map(|a| (format!("account {}", a.name), a.home.clone()))
            .collect(),
    }
}

/// `check`'s lines for the hooks: per account, `ok` when our hook command
/// (`'<binary>' hook`) is on every event Claude Code fires and no other
/// install of ours is left there.
pub fn hooks_installed(config: &Config, binary: &str) -> Vec<CheckLine> {
    let command = settings::hook_command(binary);
    let mut lines = Vec::new();
    for (who, dir) in config_dirs(config) {
        let subject = format!("{who}: hooks");
        let path = dir.join(facts::SETTINGS_JSON);
        let file = match JsonFile::read(&path) {
            Ok(f) => f,
            Err(why) => {
                lines.push(CheckLine::fail(
                    subject,
                    why,
                    format!("repair {}, then {SETUP_HINT}", path.display()),
                ));
                continue;
            }
        };
        if !file.existed {
            lines.push(CheckLine::fail(
                subject,
                format!("{} is missing", path.display()),
                SETUP_HINT,
            ));
            continue;
        }
        let missing: Vec<&str> = facts::HOOK_EVENTS
            .iter()
            .copied()
            .filter(|event| {
                !hook_commands(&file.value, event)
                    .iter()
                    .any(|c| *c == command)
            })
            .collect();
        let stale: Vec<&str> = facts::HOOK_EVENTS
            .iter()
            .flat_map(|event| hook_commands(&file.value, event))
            .filter(|c| *c != command && settings::is_ours(c))
            .collect();
        if missing.is_empty() && stale.is_empty() {
            lines.push(CheckLine::pass(
                subject,
                format!("`{command}` on all {} events", facts::HOOK_EVENTS.len()),
            ));
            continue;
        }
        let mut detail = Vec::new();
        if !missing.is_empty() {
            detail.push(format!(
                "`{command}` missing on {} in {}",
                missing.join(", "),
                path.display()
            ));
        }
        if let Some(old) = stale.first() {
            detail.push(format!("another install's hook `{old}` is still there"));
        }
        lines.push(CheckLine::fail(subject, detail.join("; "), SETUP_HINT));
    }
    lines
}

/// The hook commands configured for `event` in a settings value.
fn hook_commands<'a>(settings: &'a Value, event: &str) -> Vec<&'a str> {
    settings
        .get("hooks")
        .and_then(|h| h.get(event))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|group| group.get("hooks").and_then(Value::as_array))
        .flatten()
        .filter_map(|h| h.get("command").and_then(Value::as_str))
        .collect()
}

// ---------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------

/// A file or folder owner, so that what setup creates (possibly as root, for
/// another user's homes) belongs to whoever runs Claude Code there.
type Owner = (u32, u32);

#[derive(Debug)]
enum Action {
    CreateFolder {
        path: PathBuf,
        owner: Option<Owner>,
    },
    Merge(Merge),
    Link {
        link: PathBuf,
        target: PathBuf,
        /// The relative target of a link being straightened.
        replaces: Option<PathBuf>,
        owner: Option<Owner>,
    },
    WriteJson {
        /// What the write does, in the operator's words.
        summary: String,
        /// The file written (a symlinked JSON file is written through the link).
        path: PathBuf,
        bytes: Vec<u8>,
        mode: u32,
        owner: Option<Owner>,
    },
}

/// Emptying one account's real folder into the shared folder.
#[derive(Debug)]
struct Merge {
    from: PathBuf,
    into: PathBuf,
    /// (source, destination), parents before children.
    moves: Vec<(PathBuf, PathBuf)>,
    /// (file dropped, its identical twin at its final place).
    identical: Vec<(PathBuf, PathBuf)>,
    /// Folders of `from` left empty once the above are done, deepest first,
    /// `from` last.
    folders: Vec<PathBuf>,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateFolder { path, .. } => write!(f, "create folder {}", path.display()),
            Action::Merge(m) => {
                let plural = |n: usize, one: &str, many: &str| {
                    format!("{n} {}", if n == 1 { one } else { many })
                };
                write!(
                    f,
                    "merge {} into {}: move {}, drop {} already there, remove the emptied folder",
                    m.from.display(),
                    m.into.display(),
                    plural(m.moves.len(), "entry", "entries"),
                    plural(m.identical.len(), "identical file", "identical files"),
                )
            }
            Action::Link {
                link,
                target,
                replaces: None,
                ..
            } => {
                write!(f, "link {} -> {}", link.display(), target.display())
            }
            Action::Link {
                link,
                target,
                replaces: Some(old),
                ..
            } => write!(
                f,
                "relink {} -> {} (was the relative link {})",
                link.display(),
                target.display(),
                old.display()
            ),
            Action::WriteJson { summary, .. } => write!(f, "{summary}"),
        }
    }
}

/// Everything setup would do, or every reason it must not do anything.
fn plan(config: &Config, binary: &str) -> Result<Vec<Action>, Vec<String>> {
    let refuse = |p: &Problem| format!("{p} (fix: {})", p.hint());
    // Live mode: one seat, nothing shared by links.
    let live = config.live_seat().map(Path::to_path_buf);
    if live.is_none() {
        let entries = shared_folders::entry_problems(config);
        if !entries.is_empty() {
            return Err(entries.iter().map(refuse).collect());
        }
        // With a home missing or two paths that are really one folder, nothing
        // below can be planned safely.
        let mut layout = shared_folders::home_problems(config);
        layout.extend(shared_folders::overlap_problems(config, None));
        if !layout.is_empty() {
            return Err(layout.iter().map(refuse).collect());
        }
    }

    let mut refusals = Vec::new();
    let mut actions = Vec::new();
    let first_owner = config.accounts.first().and_then(|a| owner_of(&a.home));

    if let Some(seat) = &live {
        plan_seat(config, seat, first_owner, &mut actions, &mut refusals);
    }
    // The shared folders.
    if live.is_none() {
        let root = &config.shared_root;
        match shared_folders::inspect_shared_folder(root) {
            None => {}
            Some(Found::Missing) => actions.push(Action::CreateFolder {
                path: root.clone(),
                owner: first_owner,
            }),
            Some(found) => refusals.push(format!(
                "shared root: expected a folder at {}, found {found}; setup never replaces it",
                root.display()
            )),
        }
        for entry in &config.shared {
            let path = shared_folders::shared_path(config, entry);
            match shared_folders::inspect_shared_folder(&path) {
                None => {}
                Some(Found::Missing) => actions.push(Action::CreateFolder {
                    path,
                    owner: first_owner,
                }),
                Some(found) => {
                    let p = Problem::SharedFolder {
                        entry: entry.clone(),
                        path,
                        found,
                    };
                    refusals.push(format!(
                        "{p}; setup never replaces it: move it aside yourself"
                    ));
                }
            }
        }

        // Each account's links, merging real folders.
        let mut overlays: BTreeMap<&str, Overlay> = BTreeMap::new();
        for account in &config.accounts {
            let owner = owner_of(&account.home);
            for entry in &config.shared {
                let link = account.home.join(entry);
                let target = shared_folders::shared_path(config, entry);
                match shared_folders::inspect_link(&link, &target) {
                    None => {}
                    Some(Found::Missing) => actions.push(Action::Link {
                        link,
                        target,
                        replaces: None,
                        owner,
                    }),
                    Some(Found::RelativeTarget(old)) => actions.push(Action::Link {
                        link,
                        target,
                        replaces: Some(old),
                        owner,
                    }),
                    Some(Found::RealFolder) => {
                        let overlay = overlays.entry(entry.as_str()).or_default();
                        let mut merge = Merge {
                            from: link.clone(),
                            into: target.clone(),
                            moves: Vec::new(),
                            identical: Vec::new(),
                            folders: Vec::new(),
                        };
                        plan_merge(
                            &link,
                            Path::new(""),
                            &target,
                            overlay,
                            &mut merge,
                            &mut refusals,
                        );
                        actions.push(Action::Merge(merge));
                        actions.push(Action::Link {
                            link,
                            target,
                            replaces: None,
                            owner,
                        });
                    }
                    Some(found) => {
                        let p = Problem::Link {
                            account: account.name.clone(),
                            entry: entry.clone(),
                            expected: target,
                            found,
                        };
                        refusals.push(format!(
                            "{p}; setup never replaces it: move it aside yourself"
                        ));
                    }
                }
            }
        }
    }

    // Hooks and the status line (passive quota readings).
    let command = settings::hook_command(binary);
    let statusline = settings::statusline_command(binary);
    for (who, dir) in config_dirs(config) {
        let path = dir.join(facts::SETTINGS_JSON);
        let file = match JsonFile::read(&path) {
            Ok(f) => f,
            Err(why) => {
                refusals.push(format!("{who}: {why}"));
                continue;
            }
        };
        let with_both =
            settings::with_hooks(&file.value, &command).and_then(|(v, hooks_changed)| {
                let (v, line_changed) = settings::with_statusline(&v, &statusline)?;
                Ok((v, hooks_changed || line_changed))
            });
        match with_both {
            Ok((_, false)) => {}
            Ok((next, true)) => actions.push(file.write_action(
                format!(
                    "install the hooks (`{command}`) and status line for {who} in {}",
                    path.display()
                ),
                &next,
                0o644,
                owner_of(&dir).or(first_owner),
            )),
            Err(why) => refusals.push(format!(
                "{who}: {}: {why}; setup never overwrites it",
                path.display()
            )),
        }
    }

    // Trust.
    let folders = folders_to_trust(config);
    for (who, dir) in config_dirs(config) {
        let path = dir.join(facts::CLAUDE_JSON);
        let mut file = match JsonFile::read(&path) {
            Ok(f) => f,
            Err(why) => {
                refusals.push(format!("{who}: {why}"));
                continue;
            }
        };
        // A new seat starts from the active account's `.claude.json`
        // (onboarding done, its account profile), then gets the trust.
        let seeded = live.is_some() && !file.existed;
        if seeded {
            let active = crate::daemon::switcher::load_active_name(config);
            if let Some(home) = config.account(&active).map(|a| a.home.clone()) {
                match JsonFile::read(&home.join(facts::CLAUDE_JSON)) {
                    Ok(base) if base.existed => file.value = base.value,
                    Ok(_) => {}
                    Err(why) => refusals.push(format!("account {active}: {why}")),
                }
            }
        }
        match with_trust(&file.value, &folders) {
            Ok((_, added)) if added.is_empty() && !seeded => {}
            Ok((next, added)) => {
                let list: Vec<String> = added.iter().map(|p| p.display().to_string()).collect();
                actions.push(file.write_action(
                    format!(
                        "{}trust {} for {who} in {}",
                        if seeded {
                            "start from the active account's settings, "
                        } else {
                            ""
                        },
                        if list.is_empty() {
                            "nothing new".to_string()
                        } else {
                            list.join(", ")
                        },
                        path.display()
                    ),
                    &next,
                    0o600,
                    owner_of(&dir).or(first_owner),
                ));
            }
            Err(why) => refusals.push(format!(
                "{who}: {}: {why}; setup never overwrites it",
                path.display()
            )),
        }
    }

    if refusals.is_empty() {
        Ok(actions)
    } else {
        Err(refusals)
    }
}

/// Live mode: the seat's folder (0700) and, when it holds no login, the
/// active account's copied in (0600). Its settings and trust are planned
/// with the other config dirs.
fn plan_seat(
    config: &Config,
    seat: &Path,
    owner: Option<Owner>,
    actions: &mut Vec<Action>,
    refusals: &mut Vec<String>,
) {
    if !seat.is_dir() {
        actions.push(Action::CreateFolder {
            path: seat.to_path_buf(),
            owner,
        });
    }
    match crate::claude::seat::read(seat) {
        Ok(Some(l)) if l.present() => {}
        Ok(_) => {
            let active = crate::daemon::switcher::load_active_name(config);
            let Some(home) = config.account(&active).map(|a| a.home.clone()) else {
                return;
            };
            match crate::claude::seat::read(&home) {
                Ok(Some(login)) if login.present() => actions.push(Action::WriteJson {
                    summary: format!(
                        "seat account {active}: copy its login into {} (mode 0600)",
                        crate::claude::seat::credentials_path(seat).display()
                    ),
                    path: crate::claude::seat::credentials_path(seat),
                    bytes: login.bytes,
                    mode: 0o600,
                    owner,
                }),
                Ok(_) => refusals.push(format!(
                    "account {active} (the active one) has no login in {}: run `claude-failover login {active}` first",
                    home.display()
                )),
                Err(e) => refusals.push(format!("account {active}: cannot read its login: {e}")),
            }
        }
        Err(e) => refusals.push(format!("seat: cannot read its login: {e}")),
    }
}

/// Every folder a session may start in (pool `cwd`s and project `path`s), and
/// also its real path when it is reached through a symlink: Claude Code keys
/// trust by the working directory it sees, which is the real one.
fn folders_to_trust(config: &Config) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = Vec::new();
    for (_, folder) in check::folders_to_trust(config) {
        let real = folder.canonicalize().ok();
        for f in std::iter::once(folder).chain(real) {
            if !folders.contains(&f) {
                folders.push(f);
            }
        }
    }
    folders
}

/// `.claude.json` with `projects.<folder>.hasTrustDialogAccepted = true` for
/// every folder, and the folders that were not trusted yet.
fn with_trust(value: &Value, folders: &[PathBuf]) -> Result<(Value, Vec<PathBuf>), String> {
    let mut root = match value {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        _ => return Err("not a JSON object".into()),
    };
    let mut projects = match root.remove(facts::KEY_PROJECTS) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(format!("\"{}\" is not an object", facts::KEY_PROJECTS)),
    };
    let mut added = Vec::new();
    for folder in folders {
        let key = folder.to_string_lossy().into_owned();
        match projects.get_mut(&key) {
            None => {
                projects.insert(key, json!({ facts::KEY_TRUST_ACCEPTED: true }));
                added.push(folder.clone());
            }
            Some(Value::Object(entry)) => {
                if entry.get(facts::KEY_TRUST_ACCEPTED) != Some(&Value::Bool(true)) {
                    entry.insert(facts::KEY_TRUST_ACCEPTED.into(), Value::Bool(true));
                    added.push(folder.clone());
                }
            }
            Some(_) => {
                return Err(format!(
                    "\"{}\".\"{key}\" is not an object",
                    facts::KEY_PROJECTS
                ))
            }
        }
    }
    root.insert(facts::KEY_PROJECTS.into(), Value::Object(projects));
    Ok((Value::Object(root), added))
}

/// A JSON file of an account home, read without changing it.
struct JsonFile {
    /// Where to write it back: the file itself, or what its symlink points at.
    write_to: PathBuf,
    /// `Null` when the file does not exist (or is empty).
    value: Value,
    existed: bool,
    mode: Option<u32>,
    owner: Option<Owner>,
}

impl JsonFile {
    fn read(path: &Path) -> Result<JsonFile, String> {
        let link_meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(JsonFile {
                    write_to: path.to_path_buf(),
                    value: Value::Null,
                    existed: false,
                    mode: None,
                    owner: None,
                })
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let write_to = if link_meta.file_type().is_symlink() {
            path.canonicalize().map_err(|e| {
                format!(
                    "{} is a symlink that cannot be followed ({e}); setup never replaces it",
                    path.display()
                )
            })?
        } else {
            path.to_path_buf()
        };
        let meta = std::fs::metadata(&write_to)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a file", path.display()));
        }
        let text = std::fs::read_to_string(&write_to)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{} is not valid JSON ({e}); fix it or move it aside, setup never overwrites it",
                    path.display()
                )
            })?
        };
        Ok(JsonFile {
            write_to,
            value,
            existed: true,
            mode: Some(meta.permissions().mode() & 0o7777),
            owner: Some((meta.uid(), meta.gid())),
        })
    }

    /// Writing `value` back, keeping the file's mode and owner (`mode` and
    /// `owner` for a new file).
    fn write_action(
        &self,
        summary: String,
        value: &Value,
        mode: u32,
        owner: Option<Owner>,
    ) -> Action {
        let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        bytes.push(b'\n');
        Action::WriteJson {
            summary,
            path: self.write_to.clone(),
            bytes,
            mode: self.mode.unwrap_or(mode),
            owner: self.owner.or(owner),
        }
    }
}

fn owner_of(path: &Path) -> Option<Owner> {
    std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()))
}

// ---------------------------------------------------------------------------
// Merge planning
// ---------------------------------------------------------------------------

/// What earlier accounts' merges will have put into one shared folder:
/// relative path → where it is on disk until it is moved there.
type Overlay = BTreeMap<PathBuf, PathBuf>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Absent,
    Folder,
    File,
    Symlink(PathBuf),
    /// A socket, fifo or device: setup cannot vouch for moving it.
    Special,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Absent => write!(f, "nothing"),
            Kind::Folder => write!(f, "a folder"),
            Kind::File => write!(f, "a file"),
            Kind::Symlink(t) => write!(f, "a symlink to {}", t.display()),
            Kind::Special => write!(f, "a special file"),
        }
    }
}

fn kind_of(path: &Path) -> io::Result<Kind> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Kind::Absent),
        Err(e) => return Err(e),
    };
    let t = meta.file_type();
    Ok(if t.is_dir() {
        Kind::Folder
    } else if t.is_file() {
        Kind::File
    } else if t.is_symlink() {
        Kind::Symlink(std::fs::read_link(path)?)
    } else {
        Kind::Special
    })
}

/// Where the thing that will be at `into/rel` is on disk now: inside an
/// earlier account's folder when that account's merge moves it there,
/// else in the shared folder itself.
fn locate(into: &Path, overlay: &Overlay, rel: &Path) -> PathBuf {
    for ancestor in rel.ancestors() {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        if let Some(source) = overlay.get(ancestor) {
            let rest = rel.strip_prefix(ancestor).unwrap_or(Path::new(""));
            return if rest.as_os_str().is_empty() {
                source.clone()
            } else {
                source.join(rest)
            };
        }
    }
    if rel.as_os_str().is_empty() {
        into.to_path_buf()
    } else {
        into.join(rel)
    }
}

/// Plans moving the content of `dir` (the account's folder at `rel`) into
/// `into/rel`, recording what each move will put there in `overlay`.
fn plan_merge(
    dir: &Path,
    rel: &Path,
    into: &Path,
    overlay: &mut Overlay,
    merge: &mut Merge,
    conflicts: &mut Vec<String>,
) {
    let mut children: Vec<(std::ffi::OsString, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v = Vec::new();
            for e in rd {
                match e {
                    Ok(e) => v.push((e.file_name(), e.path())),
                    Err(e) => {
                        conflicts.push(format!("cannot read {}: {e}", dir.display()));
                        return;
                    }
                }
            }
            v
        }
        Err(e) => {
            conflicts.push(format!("cannot read {}: {e}", dir.display()));
            return;
        }
    };
    children.sort();
    for (name, source) in children {
        let crel = rel.join(&name);
        let mine = match kind_of(&source) {
            Ok(k) => k,
            Err(e) => {
                conflicts.push(format!("cannot read {}: {e}", source.display()));
                continue;
            }
        };
        let there = locate(into, overlay, &crel);
        let theirs = match kind_of(&there) {
            Ok(k) => k,
            Err(e) => {
                conflicts.push(format!("cannot read {}: {e}", there.display()));
                continue;
            }
        };
        let destination = into.join(&crel);
        match (&mine, &theirs) {
            (Kind::Special, _) => conflicts.push(format!(
                "conflict: {} is a special file that setup cannot move (to {})",
                source.display(),
                destination.display()
            )),
            (_, Kind::Absent) => {
                merge.moves.push((source.clone(), destination));
                overlay.insert(crel, source);
            }
            (Kind::Folder, Kind::Folder) => {
                plan_merge(&source, &crel, into, overlay, merge, conflicts)
            }
            (Kind::File, Kind::File) => match same_content(&source, &there) {
                Ok(true) => merge.identical.push((source, destination)),
                Ok(false) => conflicts.push(format!(
                    "conflict: {} and {} are different files",
                    source.display(),
                    there.display()
                )),
                Err(e) => conflicts.push(format!(
                    "cannot compare {} with {}: {e}",
                    source.display(),
                    there.display()
                )),
            },
            (Kind::Symlink(a), Kind::Symlink(b)) if a == b => {
                merge.identical.push((source, destination))
            }
            _ => conflicts.push(format!(
                "conflict: {} is {mine} but {} is {theirs}",
                source.display(),
                there.display()
            )),
        }
    }
    merge.folders.push(dir.to_path_buf());
}

/// True when the two files hold the same bytes (symlinks compare by target).
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (ka, kb) = (kind_of(a)?, kind_of(b)?);
    match (&ka, &kb) {
        (Kind::File, Kind::File) => {}
        (Kind::Symlink(x), Kind::Symlink(y)) => return Ok(x == y),
        _ => return Ok(false),
    }
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let mut ra = BufReader::new(File::open(a)?);
    let mut rb = BufReader::new(File::open(b)?);
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut ra, &mut ba)?;
        let m = read_full(&mut rb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// Carrying the plan out
// ---------------------------------------------------------------------------

/// `EXDEV`: rename and link cannot cross filesystems.
const EXDEV: i32 = 18;

/// An I/O error that names the path it happened on.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Action {
    fn apply(&self) -> io::Result<()> {
        match self {
            Action::CreateFolder { path, owner } => {
                if !path.is_dir() {
                    std::fs::create_dir_all(path).map_err(|e| at(path, e))?;
                    adopt_owner(path, *owner);
                }
                Ok(())
            }
            Action::Merge(m) => m.apply(),
            Action::Link {
                link,
                target,
                replaces,
                owner,
            } => {
                match replaces {
                    None => symlink(target, link).map_err(|e| at(link, e))?,
                    Some(old) => {
                        // Still the link we planned to straighten? Then swap it
                        // atomically for the absolute one.
                        if std::fs::read_link(link).ok().as_ref() != Some(old) {
                            return Err(at(link, io::Error::other("changed while setup ran")));
                        }
                        let tmp = temp_sibling(link);
                        symlink(target, &tmp).map_err(|e| at(&tmp, e))?;
                        if let Err(e) = std::fs::rename(&tmp, link) {
                            let _ = std::fs::remove_file(&tmp);
                            return Err(at(link, e));
                        }
                    }
                }
                adopt_owner(link, *owner);
                Ok(())
            }
            Action::WriteJson {
                path,
                bytes,
                mode,
                owner,
                ..
            } => {
                atomic_file::write_with_mode(path, bytes, *mode).map_err(|e| at(path, e))?;
                // The temp file was created with the umask applied.
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode));
                adopt_owner(path, *owner);
                Ok(())
            }
        }
    }
}

impl Merge {
    fn apply(&self) -> io::Result<()> {
        for (source, destination) in &self.moves {
            move_entry(source, destination)?;
        }
        for (dropped, twin) in &self.identical {
            // Compared again: it must still be a copy of what is kept.
            if !same_content(dropped, twin).map_err(|e| at(dropped, e))? {
                return Err(at(
                    dropped,
                    io::Error::other(format!(
                        "no longer identical to {}; it changed while setup ran",
                        twin.display()
                    )),
                ));
            }
            std::fs::remove_file(dropped).map_err(|e| at(dropped, e))?;
        }
        for folder in &self.folders {
            // Fails when anything new was written into it meanwhile.
            std::fs::remove_dir(folder).map_err(|e| at(folder, e))?;
        }
        Ok(())
    }
}

/// Moves `source` to `destination`, which must not exist: never replaces
/// anything. Within a filesystem a file is hard-linked then unlinked and a
/// folder renamed onto a fresh empty folder that reserves its name; across
/// filesystems it is copied (mtime kept) and the source removed after.
fn move_entry(source: &Path, destination: &Path) -> io::Result<()> {
    match kind_of(source).map_err(|e| at(source, e))? {
        Kind::Folder => {
            std::fs::create_dir(destination).map_err(|e| at(destination, e))?;
            match std::fs::rename(source, destination) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(EXDEV) => {
                    copy_tree(source, destination)?;
                    remove_tree(source)
                }
                Err(e) => {
                    let _ = std::fs::remove_dir(destination);
                    Err(at(source, e))
                }
            }
        }
        Kind::File => match std::fs::hard_link(source, destination) {
            Ok(()) => std::fs::remove_file(source).map_err(|e| at(source, e)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(at(destination, e)),
            Err(_) => {
                // No hard links here (another filesystem, or one without
                // them): copy, then remove the source.
                copy_file(source, destination)?;
                std::fs::remove_file(source).map_err(|e| at(source, e))
            }
        },
        Kind::Symlink(target) => {
            symlink(&target, destination).map_err(|e| at(destination, e))?;
            std::fs::remove_file(source).map_err(|e| at(source, e))
        }
        Kind::Absent => Err(at(
            source,
            io::Error::new(io::ErrorKind::NotFound, "vanished while setup ran"),
        )),
        Kind::Special => Err(at(
            source,
            io::Error::other("a special file cannot be moved"),
        )),
    }
}

/// Copies a folder's content into the existing empty `destination`.
fn copy_tree(source: &Path, destination: &Path) -> io::Result<()> {
    let mut children: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(|e| at(source, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()
        .map_err(|e| at(source, e))?;
    children.sort();
    for child in children {
        let to = destination.join(child.file_name().unwrap_or_default());
        match kind_of(&child).map_err(|e| at(&child, e))? {
            Kind::Folder => {
                std::fs::create_dir(&to).map_err(|e| at(&to, e))?;
                copy_tree(&child, &to)?;
            }
            Kind::File => copy_file(&child, &to)?,
            Kind::Symlink(target) => symlink(&target, &to).map_err(|e| at(&to, e))?,
            Kind::Absent => {}
            Kind::Special => {
                return Err(at(
                    &child,
                    io::Error::other("a special file cannot be copied"),
                ))
            }
        }
    }
    if let Ok(meta) = std::fs::metadata(source) {
        adopt_owner(destination, Some((meta.uid(), meta.gid())));
    }
    Ok(())
}

/// Removes what `copy_tree` copied: files and links, then folders once
/// empty (anything new in them makes this fail, so nothing is lost).
fn remove_tree(path: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(path).map_err(|e| at(path, e))? {
        let child = entry.map_err(|e| at(path, e))?.path();
        match kind_of(&child).map_err(|e| at(&child, e))? {
            Kind::Folder => remove_tree(&child)?,
            Kind::Absent => {}
            _ => std::fs::remove_file(&child).map_err(|e| at(&child, e))?,
        }
    }
    std::fs::remove_dir(path).map_err(|e| at(path, e))
}

/// Copies a file to `destination` (which must not exist) through a temp file
/// beside it, keeping its permissions, modification time and (when allowed)
/// owner.
fn copy_file(source: &Path, destination: &Path) -> io::Result<()> {
    let tmp = temp_sibling(destination);
    let result = (|| {
        std::fs::copy(source, &tmp)?;
        let meta = std::fs::metadata(source)?;
        if let Ok(modified) = meta.modified() {
            File::options()
                .write(true)
                .open(&tmp)?
                .set_modified(modified)?;
        }
        adopt_owner(&tmp, Some((meta.uid(), meta.gid())));
        File::open(&tmp)?.sync_all()?;
        // A hard link refuses to replace; fall back to a checked rename on
        // filesystems without hard links.
        match std::fs::hard_link(&tmp, destination) {
            Ok(()) => std::fs::remove_file(&tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            Err(_) if std::fs::symlink_metadata(destination).is_ok() => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "destination appeared while setup ran",
            )),
            Err(_) => std::fs::rename(&tmp, destination),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| at(destination, e))
}

/// A name beside `path` for a temp file: hidden, unique to this process.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.setup-tmp-{}", std::process::id()))
}

/// Gives `path` to `owner` when it belongs to someone else (setup run as
/// root for another user's homes). Best effort: without the right to, the
/// path simply stays ours.
fn adopt_owner(path: &Path, owner: Option<Owner>) {
    let Some((uid, gid)) = owner else { return };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if (meta.uid(), meta.gid()) != (uid, gid) {
            let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_prefers_what_an_earlier_account_moves_there() {
        let mut overlay = Overlay::new();
        overlay.insert(PathBuf::from("a"), PathBuf::from("/h/main/projects/a"));
        let into = Path::new("/s/projects");
        assert_eq!(
            locate(into, &overlay, Path::new("a")),
            PathBuf::from("/h/main/projects/a")
        );
        assert_eq!(
            locate(into, &overlay, Path::new("a/b/c")),
            PathBuf::from("/h/main/projects/a/b/c")
        );
        assert_eq!(
            locate(into, &overlay, Path::new("b")),
            PathBuf::from("/s/projects/b")
        );
        assert_eq!(
            locate(into, &overlay, Path::new("")),
            PathBuf::from("/s/projects")
        );
    }

    #[test]
    fn moves_across_filesystems_keep_content_and_mtime_and_never_replace() {
        // /dev/shm is a tmpfs on Linux: another filesystem than the temp dir.
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let here = tempfile::tempdir().unwrap();
        let src = here.path().join("tree");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f.jsonl"), b"line\n").unwrap();
        symlink("f.jsonl", src.join("sub/l")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(src.join("sub/f.jsonl"))
            .unwrap()
            .set_modified(old)
            .unwrap();

        let dst = other.path().join("tree");
        move_entry(&src, &dst).unwrap();
        assert!(!src.exists());
        assert_eq!(std::fs::read(dst.join("sub/f.jsonl")).unwrap(), b"line\n");
        assert_eq!(
            std::fs::read_link(dst.join("sub/l")).unwrap(),
            PathBuf::from("f.jsonl")
        );
        assert_eq!(
            std::fs::metadata(dst.join("sub/f.jsonl"))
                .unwrap()
                .modified()
                .unwrap(),
            old
        );

        let file = here.path().join("x");
        std::fs::write(&file, b"mine").unwrap();
        std::fs::write(other.path().join("x"), b"theirs").unwrap();
        assert!(move_entry(&file, &other.path().join("x")).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
        assert_eq!(std::fs::read(other.path().join("x")).unwrap(), b"theirs");
        move_entry(&file, &other.path().join("y")).unwrap();
        assert_eq!(std::fs::read(other.path().join("y")).unwrap(), b"mine");
        assert!(!file.exists());
    }

    #[test]
    fn a_folder_move_never_lands_on_an_existing_folder() {
        let here = tempfile::tempdir().unwrap();
        let (a, b) = (here.path().join("a"), here.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("f"), b"1").unwrap();
        std::fs::create_dir_all(&b).unwrap();
        assert!(move_entry(&a, &b).is_err());
        assert!(a.join("f").exists());
    }

    #[test]
    fn trust_keeps_other_keys_and_reports_only_what_it_adds() {
        let value = json!({"userID": "u", "projects": {"/a": {"hasTrustDialogAccepted": true, "x": 1}, "/b": {"allowedTools": []}}});
        let folders = [
            PathBuf::from("/a"),
            PathBuf::from("/b"),
            PathBuf::from("/c"),
        ];
        let (next, added) = with_trust(&value, &folders).unwrap();
        assert_eq!(added, vec![PathBuf::from("/b"), PathBuf::from("/c")]);
        assert_eq!(next["userID"], "u");
        assert_eq!(next["projects"]["/a"]["x"], 1);
        assert_eq!(next["projects"]["/b"]["allowedTools"], json!([]));
        assert_eq!(next["projects"]["/c"]["hasTrustDialogAccepted"], true);
        let (again, added) = with_trust(&next, &folders).unwrap();
        assert!(added.is_empty());
        assert_eq!(again, next);
        assert!(with_trust(&json!([]), &folders).is_err());
        assert!(with_trust(&json!({"projects": 1}), &folders).is_err());
    }
}
