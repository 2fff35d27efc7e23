//! Writing the daemon's files so that a crash never leaves half a file: a
//! temp file in the same folder, `fsync`, rename over the target, `fsync` the
//! folder (cargo's `write_atomic`, fsync(2)).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically, creating the file with `mode`.
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    prepare(path, bytes, mode, None)?.commit()
}

/// A replacement of `path` written and flushed to disk under a temp name
/// but not yet in place: [`Prepared::commit`] renames it over `path` and
/// flushes the folder. The slow part (writing, `fsync`) happens at
/// [`prepare`], so a step that must be quick (under a lock others wait on)
/// is left with the rename and one folder `fsync`. Dropped uncommitted, the
/// temp file is removed.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    committed: bool,
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The temp file's name for `path`: one [`is_temp_name`] recognises.
fn temp_name(path: &Path) -> std::io::Result<String> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a file path needs a file name",
        )
    })?;
    Ok(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `bytes` (created with `mode`) under a temp name and flushes it
/// (see [`Prepared`]). The temp file goes in `path`'s folder, or in
/// `tmp_dir` when it is on the same filesystem (a rename cannot cross
/// one): a folder others watch then sees one rename rather than a file
/// being created, written and renamed.
pub fn prepare(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    tmp_dir: Option<&Path>,
) -> std::io::Result<Prepared> {
    let p = prepare_unflushed(path, bytes, mode, tmp_dir)?;
    File::open(&p.tmp)?.sync_all()?;
    Ok(p)
}

/// [`prepare`] for several files at once, their `fsync`s in parallel (one
/// disk flush can serve them all rather than one after the other).
pub fn prepare_all<const N: usize>(
    files: [(&Path, &[u8], u32, Option<&Path>); N],
) -> std::io::Result<[Prepared; N]> {
    let mut ready = Vec::with_capacity(N);
    for (path, bytes, mode, tmp_dir) in files {
        ready.push(prepare_unflushed(path, bytes, mode, tmp_dir)?);
    }
    let synced: std::io::Result<()> = std::thread::scope(|scope| {
        let handles: Vec<_> = ready
            .iter()
            .map(|p| scope.spawn(|| File::open(&p.tmp)?.sync_all()))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked")))
        })
    });
    synced?;
    Ok(ready
        .try_into()
        .unwrap_or_else(|_| unreachable!("N files were prepared")))
}

/// The temp file of [`prepare`], written but not flushed yet.
fn prepare_unflushed(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    tmp_dir: Option<&Path>,
) -> std::io::Result<Prepared> {
    use std::os::unix::fs::MetadataExt;
    let dir = parent_of(path);
    let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let tmp_in = tmp_dir
        .filter(|t| device(t).is_some() && device(t) == device(dir))
        .unwrap_or(dir);
    let tmp = tmp_in.join(temp_name(path)?);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Exactly `mode`, whatever the umask.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(bytes)
    })();
    match result {
        Ok(()) => Ok(Prepared {
            tmp,
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            committed: false,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

impl Prepared {
    /// Puts the replacement in place and flushes the folder: durable on return.
    pub fn commit(self) -> std::io::Result<()> {
        let dir = self.dir.clone();
        self.commit_unflushed()?;
        sync_dir(&dir)
    }

    /// Puts the replacement in place without flushing the folder: the
    /// content is on disk, but which file the name points to after a power
    /// loss is only certain once the folder is flushed ([`sync_dir`], or the
    /// [`Prepared::commit`] of another file in the same folder).
    pub fn commit_unflushed(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Flushes a folder's entries (the renames made in it) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically (a temp file renamed over it)
/// without any `fsync`: a crash of the process leaves the old file or the
/// new one, but after a power loss the file may be the old one, missing, or
/// empty. Only for a file whose loss or corruption recovers exactly as its
/// previous content would (the caller says why).
pub fn write_unflushed(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    prepare_unflushed(path, bytes, mode, None)?.commit_unflushed()
}

/// Removes the temp files a [`prepare`] of a file named `name` left in
/// `dir` (a crash between it and its commit).
pub fn remove_temps_of(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Replaces `path` with `bytes` atomically. A new file is 0600 (the daemon's
/// files hold model output, tool inputs and conversation ids: nothing for
/// other users); a file that exists keeps its mode (an operator who opened
/// one up, or a user's own file, stays as it was).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    write_with_mode(path, bytes, mode)
}

/// Writes `value` as pretty JSON atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write(path, &json_bytes(value)?)
}

/// `value` as the bytes [`write_json`] writes.
pub fn json_bytes<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// True for the temp files `write` leaves only when it is interrupted; readers
/// of a folder skip them.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write(&p, b"one").unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn a_new_file_is_0600_and_an_existing_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write(&p, b"1").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&p, b"2").unwrap();
        assert_eq!(mode(&p), 0o640);
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
    }

    #[test]
    fn honours_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_with_mode(&p, b"x", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_prepared_replacement_is_in_place_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (target, side) = (dir.path().join("t"), dir.path().join("side"));
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(&side).unwrap();
        let p = target.join("c.json");
        write(&p, b"old").unwrap();
        let names = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let ready = prepare(&p, b"new", 0o600, Some(&side)).unwrap();
        // The temp file waits beside, not in the target's folder.
        assert_eq!(names(&target), vec!["c.json".to_string()]);
        assert_eq!(names(&side).len(), 1);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        ready.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert!(names(&side).is_empty());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let [a, b] = prepare_all([
            (&p, b"a".as_slice(), 0o600, Some(side.as_path())),
            (&target.join("d.json"), b"b".as_slice(), 0o600, None),
        ])
        .unwrap();
        a.commit_unflushed().unwrap();
        b.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a");
        assert_eq!(std::fs::read(target.join("d.json")).unwrap(), b"b");
        std::fs::remove_file(target.join("d.json")).unwrap();
        // Dropped uncommitted: nothing changes, no temp stays.
        drop(prepare(&p, b"other", 0o600, Some(&side)).unwrap());
        assert_eq!(names(&target), vec!["c.json".to_string()]);
        assert!(names(&side).is_empty());
        assert_eq!(std::fs::read(&p).unwrap(), b"a");
        write_unflushed(&p, b"third", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"third");
        assert_eq!(names(&target), vec!["c.json".to_string()]);
        // A crash's leftover is swept.
        std::mem::forget(prepare(&p, b"left", 0o600, Some(&side)).unwrap());
        remove_temps_of(&side, "c.json");
        assert!(names(&side).is_empty());
    }

    #[test]
    fn missing_folder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(&dir.path().join("no/such/file"), b"x").is_err());
    }
}
