//! The shared folders that let a conversation move between accounts.
//!
//! `claude --resume <id>` under another account only finds the conversation
//! when every account home shares the same `projects/`, `file-history/` and
//! `session-env/` (plus any extra entries of `shared`), each a symlink to
//! `shared_root/<entry>` (claude-code-facts.md §6). When one of those links
//! is missing, Claude Code silently creates a real folder in its place and
//! the accounts' state splits: a later failover then resumes nothing.
//!
//! This module owns that invariant. [`verify`] reports every divergence (and
//! never repairs anything: repairing is `setup`'s job, which can merge what a
//! real folder holds without losing it); [`ensure_for_account`] is what the
//! swap calls before it relaunches sessions under an account: it creates a
//! link only where nothing exists and refuses everything else.
//!
//! Paths are compared after resolving symlinks, so a home that is itself a
//! symlink into another home, or into the shared root, is caught here even
//! though the config (which never looks at the disk) accepted it.

use std::fmt;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use crate::commands::check::CheckLine;
use crate::config::{AccountConfig, Config};

/// The fix hint of every problem `setup` can repair.
pub const SETUP_HINT: &str = "run `claude-failover setup`";

/// What was found where a shared link (or the shared folder) should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing at all.
    Missing,
    /// A real folder: Claude Code wrote into it instead of the shared one.
    RealFolder,
    /// A file, or anything else that is neither a folder nor a symlink.
    RealFile,
    /// A symlink (its own target shown) that resolves somewhere else.
    WrongTarget(PathBuf),
    /// A symlink (its own target shown) that resolves to nothing.
    Dangling(PathBuf),
    /// A symlink that resolves to the right folder but whose own target is
    /// relative: links must be absolute, so that they keep pointing at the
    /// shared root whatever path the home is reached through.
    RelativeTarget(PathBuf),
    /// The path could not be examined (permissions, I/O error).
    Unreadable(String),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Missing => write!(f, "nothing"),
            Found::RealFolder => write!(f, "a real folder"),
            Found::RealFile => write!(f, "a file"),
            Found::WrongTarget(t) => write!(f, "a symlink to {}", t.display()),
            Found::Dangling(t) => write!(f, "a dangling symlink to {}", t.display()),
            Found::RelativeTarget(t) => {
                write!(
                    f,
                    "a relative symlink to {} (links must be absolute)",
                    t.display()
                )
            }
            Found::Unreadable(why) => write!(f, "something that cannot be read ({why})"),
        }
    }
}

/// One way the shared folders diverge from what the config asks for.
/// `Display` is one line naming the account, the entry, what was expected
/// and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `<home>/<entry>` is not a symlink resolving to `shared_root/<entry>`.
    Link {
        account: String,
        entry: String,
        /// `shared_root/<entry>`, the link's expected target.
        expected: PathBuf,
        found: Found,
    },
    /// `shared_root/<entry>` itself is not a folder.
    SharedFolder {
        entry: String,
        path: PathBuf,
        found: Found,
    },
    /// The account home is not a readable folder.
    Home {
        account: String,
        path: PathBuf,
        found: Found,
    },
    /// Once symlinks are resolved, an account home is, contains or sits
    /// inside the shared root or another account's home.
    Overlap { account: String, message: String },
    /// A `shared` entry is not a single folder name (the config refuses
    /// these; this guards callers that build a `Config` by hand).
    BadEntry { entry: String },
}

impl Problem {
    /// The account concerned, when there is one.
    pub fn account(&self) -> Option<&str> {
        match self {
            Problem::Link { account, .. }
            | Problem::Home { account, .. }
            | Problem::Overlap { account, .. } => Some(account),
            Problem::SharedFolder { .. } | Problem::BadEntry { .. } => None,
        }
    }

    /// The shared entry concerned, when there is one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Problem::Link { entry, .. }
            | Problem::SharedFolder { entry, .. }
            | Problem::BadEntry { entry } => Some(entry),
            Problem::Home { .. } | Problem::Overlap { .. } => None,
        }
    }

    /// What `found` is, for the problems that have one.
    pub fn found(&self) -> Option<&Found> {
        match self {
            Problem::Link { found, .. }
            | Problem::SharedFolder { found, .. }
            | Problem::Home { found, .. } => Some(found),
            Problem::Overlap { .. } | Problem::BadEntry { .. } => None,
        }
    }

    /// How an operator fixes it.
    pub fn hint(&self) -> String {
        match self {
            Problem::Link { .. } | Problem::SharedFolder { .. } => SETUP_HINT.to_string(),
            Problem::Home { path, found: Found::Missing, .. } => format!(
                "log in there first: `CLAUDE_CONFIG_DIR={} claude`, then /login; then {SETUP_HINT}",
                path.display()
            ),
            Problem::Home { .. } => "make the home a folder this user can read and write".to_string(),
            Problem::Overlap { .. } => {
                "give every account its own home folder, outside shared_root and outside the other homes".to_string()
            }
            Problem::BadEntry { .. } => "list single folder names in `shared`".to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Link {
                account,
                entry,
                expected,
                found,
            } => write!(
                f,
                "account {account}: {entry}: expected a symlink to {}, found {found}",
                expected.display()
            ),
            Problem::SharedFolder { entry, path, found } => {
                write!(
                    f,
                    "shared root: {entry}: expected a folder at {}, found {found}",
                    path.display()
                )
            }
            Problem::Home {
                account,
                path,
                found,
            } => {
                write!(
                    f,
                    "account {account}: home: expected a folder at {}, found {found}",
                    path.display()
                )
            }
            Problem::Overlap { account, message } => write!(f, "account {account}: {message}"),
            Problem::BadEntry { entry } => write!(
                f,
                "shared: `{entry}` is not a single folder name (no `/`, not `.` or `..`)"
            ),
        }
    }
}

/// Why [`ensure_for_account`] did not make the account's links whole.
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    /// Something other than nothing or the right link is in the way; nothing
    /// was created.
    #[error("{}", render_problems(.0))]
    Problems(Vec<Problem>),
    /// Creating a folder or link failed.
    #[error("cannot create {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("; ")
}

/// True for a `shared` entry that is one plain folder name.
pub fn valid_entry(entry: &str) -> bool {
    let mut parts = Path::new(entry).components();
    !entry.contains('/')
        && !entry.contains('\0')
        && matches!(parts.next(), Some(Component::Normal(_)))
        && parts.next().is_none()
}

/// `shared_root/<entry>`: where every account's `<home>/<entry>` must point.
pub fn shared_path(config: &Config, entry: &str) -> PathBuf {
    config.shared_root.join(entry)
}

/// Every divergence between the disk and the config's shared folders, in a
/// stable order: entry names, homes and overlaps, the shared folders, then
/// each account's links. Empty means every account shares every entry.
/// Changes nothing.
pub fn verify(config: &Config) -> Vec<Problem> {
    // Live mode: one seat, one state tree; nothing is shared by links.
    if config.live_seat().is_some() {
        return Vec::new();
    }
    let mut problems = entry_problems(config);
    if !problems.is_empty() {
        return problems;
    }
    let homes = home_problems(config);
    problems.extend(homes.iter().cloned());
    problems.extend(overlap_problems(config, None));
    for entry in &config.shared {
        if let Some(found) = inspect_shared_folder(&shared_path(config, entry)) {
            problems.push(Problem::SharedFolder {
                entry: entry.clone(),
                path: shared_path(config, entry),
                found,
            });
        }
    }
    for account in &config.accounts {
        if homes
            .iter()
            .any(|p| p.account() == Some(account.name.as_str()))
        {
            continue;
        }
        for entry in &config.shared {
            if let Some(found) =
                inspect_link(&account.home.join(entry), &shared_path(config, entry))
            {
                problems.push(Problem::Link {
                    account: account.name.clone(),
                    entry: entry.clone(),
                    expected: shared_path(config, entry),
                    found,
                });
            }
        }
    }
    problems
}

/// Makes `account`'s shared links whole before sessions run under it: creates
/// `shared_root/<entry>` where it is missing and `<home>/<entry>` as a symlink
/// to it where nothing exists. Never replaces or deletes anything: a real
/// folder, a file or a foreign symlink in the way is an error, and then
/// nothing is created at all. Returns what was created (folders, then links).
///
/// A link that resolves to the right folder but is relative is accepted: it
/// works, and `verify` reports it for `setup` to straighten.
pub fn ensure_for_account(
    config: &Config,
    account: &AccountConfig,
) -> Result<Vec<PathBuf>, EnsureError> {
    let mut problems = entry_problems(config);
    if problems.is_empty() {
        problems.extend(
            home_problems(config)
                .into_iter()
                .filter(|p| p.account() == Some(account.name.as_str())),
        );
    }
    if problems.is_empty() {
        problems.extend(overlap_problems(config, Some(account)));
    }
    if !problems.is_empty() {
        return Err(EnsureError::Problems(problems));
    }

    let mut folders = Vec::new();
    let mut links = Vec::new();
    for entry in &config.shared {
        let target = shared_path(config, entry);
        match inspect_shared_folder(&target) {
            None => {}
            Some(Found::Missing) => folders.push(target.clone()),
            Some(found) => problems.push(Problem::SharedFolder {
                entry: entry.clone(),
                path: target.clone(),
                found,
            }),
        }
        let link = account.home.join(entry);
        match inspect_link(&link, &target) {
            None | Some(Found::RelativeTarget(_)) => {}
            Some(Found::Missing) => links.push((entry, link, target)),
            Some(found) => problems.push(Problem::Link {
                account: account.name.clone(),
                entry: entry.clone(),
                expected: target,
                found,
            }),
        }
    }
    if !problems.is_empty() {
        return Err(EnsureError::Problems(problems));
    }

    let mut created = Vec::new();
    for folder in folders {
        match std::fs::create_dir_all(&folder) {
            Ok(()) => created.push(folder),
            Err(source) => {
                return Err(EnsureError::Create {
                    path: folder,
                    source,
                })
            }
        }
    }
    for (entry, link, target) in links {
        match symlink(&target, &link) {
            Ok(()) => created.push(link),
            // Someone got there first (Claude Code creating a real folder, or
            // another swap creating the same link): judge what is there now.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                match inspect_link(&link, &target) {
                    None | Some(Found::RelativeTarget(_)) => {}
                    Some(found) => {
                        return Err(EnsureError::Problems(vec![Problem::Link {
                            account: account.name.clone(),
                            entry: entry.clone(),
                            expected: target,
                            found,
                        }]))
                    }
                }
            }
            Err(source) => return Err(EnsureError::Create { path: link, source }),
        }
    }
    Ok(created)
}

/// `check`'s lines for the shared folders: one `ok` line when every account
/// shares every entry, else one failure per problem with its fix.
pub fn check_lines(config: &Config) -> Vec<CheckLine> {
    const SUBJECT: &str = "shared folders";
    if let Some(seat) = config.live_seat() {
        return vec![CheckLine::pass(
            SUBJECT,
            format!(
                "not used in live mode (every session runs under the seat {})",
                seat.display()
            ),
        )];
    }
    let problems = verify(config);
    if problems.is_empty() {
        return vec![CheckLine::pass(
            SUBJECT,
            format!(
                "{} linked to {} in {} account{}",
                config.shared.join(", "),
                config.shared_root.display(),
                config.accounts.len(),
                if config.accounts.len() == 1 { "" } else { "s" }
            ),
        )];
    }
    problems
        .iter()
        .map(|p| CheckLine::fail(SUBJECT, p.to_string(), p.hint()))
        .collect()
}

/// The `shared` entries that are not single folder names.
pub fn entry_problems(config: &Config) -> Vec<Problem> {
    config
        .shared
        .iter()
        .filter(|e| !valid_entry(e))
        .map(|e| Problem::BadEntry { entry: e.clone() })
        .collect()
}

/// Accounts whose home is not a folder that can be looked into.
pub fn home_problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for account in &config.accounts {
        let found = match std::fs::metadata(&account.home) {
            Ok(m) if m.is_dir() => match std::fs::read_dir(&account.home) {
                Ok(_) => None,
                Err(e) => Some(Found::Unreadable(e.to_string())),
            },
            Ok(_) => Some(Found::RealFile),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Found::Missing),
            Err(e) => Some(Found::Unreadable(e.to_string())),
        };
        if let Some(found) = found {
            problems.push(Problem::Home {
                account: account.name.clone(),
                path: account.home.clone(),
                found,
            });
        }
    }
    problems
}

/// Homes that, once symlinks are resolved, are (or contain, or sit inside)
/// the shared root or another home. With `only`, just that account's.
pub fn overlap_problems(config: &Config, only: Option<&AccountConfig>) -> Vec<Problem> {
    let root = resolve(&config.shared_root);
    let homes: Vec<(&AccountConfig, PathBuf)> = config
        .accounts
        .iter()
        .map(|a| (a, resolve(&a.home)))
        .collect();
    let mut problems = Vec::new();
    for (i, (account, home)) in homes.iter().enumerate() {
        if only.is_some_and(|o| o.name != account.name) {
            continue;
        }
        let shown = |p: &Path, real: &Path| {
            if p == real {
                p.display().to_string()
            } else {
                format!("{} (really {})", p.display(), real.display())
            }
        };
        if root.starts_with(home) || home.starts_with(&root) {
            problems.push(Problem::Overlap {
                account: account.name.clone(),
                message: format!(
                    "home {} and shared_root {} overlap once symlinks are resolved",
                    shown(&account.home, home),
                    shown(&config.shared_root, &root)
                ),
            });
        }
        for (j, (other, other_home)) in homes.iter().enumerate() {
            // Each pair once, unless only one account is asked about.
            if i == j || (only.is_none() && j < i) {
                continue;
            }
            if home.starts_with(other_home) || other_home.starts_with(home) {
                problems.push(Problem::Overlap {
                    account: account.name.clone(),
                    message: format!(
                        "home {} and the home of account {} ({}) are the same folder or nested once symlinks are resolved",
                        shown(&account.home, home),
                        other.name,
                        shown(&other.home, other_home)
                    ),
                });
            }
        }
    }
    problems
}

/// What is at `shared_root/<entry>`, or `None` when it is a folder (a
/// symlink to a folder elsewhere is fine: the one real copy may live on
/// another disk).
pub fn inspect_shared_folder(path: &Path) -> Option<Found> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(Found::RealFile),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::symlink_metadata(path) {
            Ok(_) => Some(Found::Dangling(
                std::fs::read_link(path).unwrap_or_default(),
            )),
            Err(_) => Some(Found::Missing),
        },
        Err(e) => Some(Found::Unreadable(e.to_string())),
    }
}

/// What is at `link`, or `None` when it is an absolute symlink resolving to
/// the same folder as `expected`. A link spelled exactly `expected` while
/// `expected` does not exist yet is also `None`: the missing shared folder
/// is the problem, reported on its own.
pub fn inspect_link(link: &Path, expected: &Path) -> Option<Found> {
    let meta = match std::fs::symlink_metadata(link) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Found::Missing),
        Err(e) => return Some(Found::Unreadable(e.to_string())),
    };
    if meta.is_dir() {
        return Some(Found::RealFolder);
    }
    if !meta.file_type().is_symlink() {
        return Some(Found::RealFile);
    }
    let target = match std::fs::read_link(link) {
        Ok(t) => t,
        Err(e) => return Some(Found::Unreadable(e.to_string())),
    };
    let real = match link.canonicalize() {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Some(Found::Unreadable(e.to_string()))
        }
        Err(_) => {
            let waiting_for_folder =
                target == expected && std::fs::symlink_metadata(expected).is_err();
            return (!waiting_for_folder).then_some(Found::Dangling(target));
        }
    };
    match expected.canonicalize() {
        Ok(want) if want == real => {
            if target.is_absolute() {
                None
            } else {
                Some(Found::RelativeTarget(target))
            }
        }
        _ => Some(Found::WrongTarget(target)),
    }
}

/// `path` with every symlink resolved, as far as it exists: the longest
/// existing ancestor is canonicalised and the rest appended. Lets overlaps
/// be judged before setup has created the folders.
pub fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path.to_path_buf();
    loop {
        if let Ok(real) = cur.canonicalize() {
            return rest
                .iter()
                .rev()
                .fold(real, |acc, part: &std::ffi::OsString| acc.join(part));
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                cur = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claude::facts::REQUIRED_SHARED;

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "state_dir: {d}/state\nshared_root: {d}/shared\nswap:\n  mode: restart\n{extra}accounts:\n  - name: main\n    home: {d}/main\n  - name: backup\n    home: {d}/backup\n",
            d = dir.display()
        );
        Config::parse(&text, &dir.join("config.yaml")).expect("valid config")
    }

    #[test]
    fn ensure_pins_the_required_set_with_absolute_targets_under_one_parent() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        for a in &c.accounts {
            std::fs::create_dir_all(&a.home).unwrap();
        }
        let created = ensure_for_account(&c, &c.accounts[1]).unwrap();
        let home = &c.accounts[1].home;
        let links: Vec<&PathBuf> = created.iter().filter(|p| p.starts_with(home)).collect();
        let names: Vec<String> = links
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, REQUIRED_SHARED);
        assert_eq!(names, ["projects", "file-history", "session-env"]);
        let mut parents = Vec::new();
        for link in links {
            let target = std::fs::read_link(link).unwrap();
            assert!(target.is_absolute(), "{}", target.display());
            assert!(target.is_dir(), "{}", target.display());
            parents.push(target.parent().unwrap().to_path_buf());
        }
        parents.dedup();
        assert_eq!(parents, vec![c.shared_root.clone()]);
        // Shared folders first, then links; nothing created for the other account.
        assert_eq!(created.len(), 6, "{created:?}");
        assert!(std::fs::symlink_metadata(c.accounts[0].home.join("projects")).is_err());
        // A second call has nothing to do.
        assert_eq!(
            ensure_for_account(&c, &c.accounts[1]).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert!(
            verify(&c).iter().all(|p| p.account() == Some("main")),
            "{:?}",
            verify(&c)
        );
    }

    #[test]
    fn extra_entries_are_linked_too() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            "shared: [projects, file-history, session-env, todos]\n",
        );
        for a in &c.accounts {
            std::fs::create_dir_all(&a.home).unwrap();
            ensure_for_account(&c, a).unwrap();
        }
        assert_eq!(verify(&c), vec![]);
        assert!(
            std::fs::read_link(c.accounts[0].home.join("todos")).unwrap()
                == c.shared_root.join("todos")
        );
    }

    #[test]
    fn entry_names_are_guarded_even_when_the_config_is_built_by_hand() {
        assert!(valid_entry("projects") && valid_entry(".hidden"));
        for bad in ["", ".", "..", "a/b", "/abs", "../x", "x/", "a\0b"] {
            assert!(!valid_entry(bad), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), "");
        c.shared.push("../escape".into());
        for a in &c.accounts {
            std::fs::create_dir_all(&a.home).unwrap();
        }
        let err = ensure_for_account(&c, &c.accounts[0]).unwrap_err();
        assert!(
            err.to_string()
                .contains("`../escape` is not a single folder name"),
            "{err}"
        );
        assert!(
            std::fs::symlink_metadata(c.accounts[0].home.join("projects")).is_err(),
            "nothing created"
        );
        assert!(!dir.path().join("escape").exists());
        assert_eq!(
            verify(&c),
            vec![Problem::BadEntry {
                entry: "../escape".into()
            }]
        );
    }

    #[test]
    fn a_home_that_is_a_symlink_to_another_home_or_into_the_shared_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        std::fs::create_dir_all(&c.accounts[0].home).unwrap();
        symlink(&c.accounts[0].home, &c.accounts[1].home).unwrap();
        let err = ensure_for_account(&c, &c.accounts[1])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("account backup: home") && err.contains("account main"),
            "{err}"
        );
        assert!(err.contains("same folder or nested"), "{err}");
        assert!(
            std::fs::symlink_metadata(c.accounts[0].home.join("projects")).is_err(),
            "nothing created"
        );

        std::fs::remove_file(&c.accounts[1].home).unwrap();
        std::fs::create_dir_all(c.shared_root.join("inner")).unwrap();
        symlink(c.shared_root.join("inner"), &c.accounts[1].home).unwrap();
        let problems = verify(&c);
        assert!(
            problems.iter().any(|p| matches!(p, Problem::Overlap { account, message } if account == "backup" && message.contains("shared_root"))),
            "{problems:?}"
        );
    }

    #[test]
    fn resolve_follows_the_existing_part() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        symlink(&real, real.join("alias")).unwrap();
        assert_eq!(resolve(&real.join("alias/not/yet")), real.join("not/yet"));
    }

    #[test]
    fn problems_read_as_one_line() {
        let p = Problem::Link {
            account: "backup".into(),
            entry: "projects".into(),
            expected: PathBuf::from("/x/shared/projects"),
            found: Found::RealFolder,
        };
        assert_eq!(
            p.to_string(),
            "account backup: projects: expected a symlink to /x/shared/projects, found a real folder"
        );
        assert_eq!(p.hint(), SETUP_HINT);
    }
}
