//! The queue on disk, in a temporary folder.

use super::*;

fn err(text: &str) -> String {
    parse_task(text.as_bytes()).unwrap_err()
}

#[test]
fn front_matter_is_optional() {
    let t = parse_task(b"Fix the login page\n").unwrap();
    assert_eq!(t.front, FrontMatter::default());
    assert_eq!((t.priority(), t.prompt()), (0, "Fix the login page"));
    let t = parse_task(b"----\nA rule, not front matter\n").unwrap();
    assert_eq!(t.prompt(), "----\nA rule, not front matter");
}

#[test]
fn front_matter_is_parsed() {
    let t = parse_task(b"---\npriority: 5\nmax_attempts: 2\n---\n\nDo it\n").unwrap();
    assert_eq!(t.front.priority, Some(5));
    assert_eq!(t.front.max_attempts, Some(2));
    assert_eq!(t.body, "\nDo it\n");
    assert_eq!(t.prompt(), "Do it");
    let t = parse_task(b"---\r\npriority: -3\r\n---\r\nDo it").unwrap();
    assert_eq!(t.priority(), -3);
    let t = parse_task(b"---\n# nothing\n---\nDo it").unwrap();
    assert_eq!(t.front, FrontMatter::default());
    let t = parse_task("\u{feff}---\npriority: 1\n---\nx".as_bytes()).unwrap();
    assert_eq!(t.priority(), 1);
}

#[test]
fn broken_front_matter_is_explained_on_one_line() {
    for (text, want) in [
        ("---\npriority: 1\nDo it\n", "no closing `---`"),
        ("---", "no closing `---`"),
        ("---\npriority: high\n---\nDo it", "priority"),
        ("---\npriority: 1.5\n---\nDo it", "priority"),
        ("---\ncolour: red\n---\nDo it", "unknown field `colour`"),
        ("---\npriority: [1\n---\nDo it", "broken front matter"),
        ("---\n- 1\n---\nDo it", "broken front matter"),
        ("---\nmax_attempts: -1\n---\nDo it", "max_attempts"),
        ("---\nmax_attempts: 0\n---\nDo it", "at least 1"),
        ("---\npriority: 1\npriority: 2\n---\nDo it", "duplicate"),
    ] {
        let e = err(text);
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    assert!(
        err("---\npriority: high\n---\nx").contains("(line 2)"),
        "{}",
        err("---\npriority: high\n---\nx")
    );
}

#[test]
fn bytes_are_checked() {
    assert!(parse_task(b"caf\xe9")
        .unwrap_err()
        .starts_with("not valid UTF-8 (first bad byte at offset 3)"));
    let big = vec![b'a'; MAX_TASK_BYTES + 1];
    assert!(parse_task(&big).unwrap_err().starts_with("too big"));
    assert!(parse_task(&vec![b'a'; MAX_TASK_BYTES]).is_ok());
    assert!(err("  \n").starts_with("no prompt"));
    assert!(err("---\npriority: 1\n---\n\n").starts_with("no prompt"));
}

#[test]
fn names() {
    assert_eq!(
        hint_stem("/tmp/x/Fix login!.md").as_deref(),
        Some("Fix-login")
    );
    assert_eq!(hint_stem("notes.txt").as_deref(), Some("notes"));
    assert_eq!(hint_stem("..md"), None);
    assert_eq!(hint_stem(".hidden.md").as_deref(), Some("hidden"));
    let t = parse_task(b"# Fix the LOGIN page, please!\nmore").unwrap();
    assert_eq!(slug(&t, None), "fix-the-login-page-please");
    assert_eq!(slug(&parse_task(b"!!!").unwrap(), None), "task");
    assert_eq!(
        stamp(UNIX_EPOCH + Duration::from_millis(1_767_383_999_042)),
        "20260102T195959.042Z"
    );
    assert!(check_name("../x").is_err() && check_name(".x").is_err() && check_name("").is_err());
    assert!(check_name("fix-login").is_ok());
}

#[test]
fn the_longest_name_fits_every_file_made_of_it() {
    // `.<name>-99999.md.dispatched.tmp-<pid>-<u64 counter>`: the marker's
    // temp file, the longest name the queue makes (atomic_file's format).
    let longest = 1
        + MAX_NAME_BYTES
        + "-99999".len()
        + MARKER_SUFFIX.len()
        + ".tmp-".len()
        + "4194304".len()
        + 1
        + u64::MAX.to_string().len();
    assert!(longest <= 255, "{longest}");
    for suffix in [RESULT_SUFFIX, ERROR_SUFFIX] {
        assert!(suffix.len() <= MARKER_SUFFIX.len());
    }
    assert!(short_stem(&"x".repeat(255)).len() <= MAX_NAME_BYTES);
    // Cut at a character boundary: byte 100 falls inside an `é` here.
    let s = short_stem(&format!("a{}", "é".repeat(127)));
    assert_eq!(s.len(), SHORT_STEM_KEEP - 1 + 17, "{s}");
    assert!(s.starts_with(&format!("a{}-", "é".repeat(49))), "{s}");
}

#[test]
fn front_matter_over_the_cap_is_refused_before_yaml() {
    let long = format!(
        "---\n# {}\npriority: 1\n---\nDo it",
        "c".repeat(MAX_FRONT_MATTER_BYTES)
    );
    let e = err(&long);
    assert!(
        e.starts_with("broken front matter: longer than 4096 bytes"),
        "{e}"
    );
    let fits = format!(
        "---\n# {}\npriority: 1\n---\nDo it",
        "c".repeat(MAX_FRONT_MATTER_BYTES - 20)
    );
    assert_eq!(parse_task(fits.as_bytes()).unwrap().priority(), 1);
    // No front matter at all: a long body is fine.
    assert!(parse_task("b".repeat(100_000).as_bytes()).is_ok());
}

#[test]
fn free_stem_skips_taken_names() {
    let taken = ["a", "a-2"];
    assert_eq!(free_stem("a", |c| taken.contains(&c)), "a-3");
    assert_eq!(free_stem("b", |c| taken.contains(&c)), "b");
}
