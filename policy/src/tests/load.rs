//! Loading: the StrictModes-style checks on the open file, against files in a temp dir.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::Names;
use crate::{MAX_POLICY_SIZE, Policy, PolicyError};

const GOOD: &str = r#"version = 1
[[rule]]
name = "alice nic"
subjects = { users = ["alice"] }
devices = [{ address = "01:00.0" }]
drivers = ["vfio-pci"]
"#;

fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
    let path = dir.join(name);
    // Replaced rather than rewritten: a read-only file from the previous case cannot be
    // written by an ordinary user.
    let _ = fs::remove_file(&path);
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Whoever runs the tests owns the files they create.
fn me(dir: &Path) -> u32 {
    fs::metadata(dir).unwrap().uid()
}

fn load(path: &Path, owner: u32) -> Result<Policy, PolicyError> {
    Policy::load_with_owner(path, &Names, owner)
}

#[test]
fn accepts_private_and_read_only_modes() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o600, 0o444, 0o400, 0o755] {
        let path = write(dir.path(), "policy.toml", GOOD.as_bytes(), mode);
        let p = load(&path, me(dir.path())).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        let rule = p.rules()[0].origin();
        assert_eq!(rule.file, path.display().to_string());
        assert_eq!(rule.line, 2);
    }
}

#[test]
fn refuses_files_others_can_write() {
    let dir = tempfile::tempdir().unwrap();
    // (mode, who the message blames)
    for (mode, who) in [
        (0o666, "its group and everyone"),
        (0o664, "its group"),
        (0o620, "its group"),
        (0o646, "everyone"),
        (0o602, "everyone"),
        (0o777, "its group and everyone"),
    ] {
        let path = write(dir.path(), "policy.toml", GOOD.as_bytes(), mode);
        match load(&path, me(dir.path())) {
            Err(e @ PolicyError::WritableByOthers { .. }) => {
                let PolicyError::WritableByOthers { mode: m, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(*m, mode);
                let msg = e.to_string();
                assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
                assert!(msg.contains(&format!("writable by {who},")), "{msg}");
                assert!(
                    msg.contains(&format!("chmod go-w {}", path.display())),
                    "{msg}"
                );
            }
            other => panic!("{mode:o}: {other:?}"),
        }
    }
}

#[test]
fn refuses_files_owned_by_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "policy.toml", GOOD.as_bytes(), 0o644);
    let owner = me(dir.path());
    let err = load(&path, owner.wrapping_add(1)).unwrap_err();
    assert!(
        matches!(&err, PolicyError::NotOwnedByRoot { uid, .. } if *uid == owner),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains(&format!(
            "chown root:root {0} && chmod 644 {0}",
            path.display()
        )),
        "{shown}"
    );
}

#[test]
fn the_production_entry_point_wants_root() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "policy.toml", GOOD.as_bytes(), 0o644);
    match (me(dir.path()), Policy::load(&path, &Names)) {
        (0, Ok(p)) => assert_eq!(p.rules().len(), 1),
        (uid, Err(PolicyError::NotOwnedByRoot { uid: got, .. })) if uid != 0 => {
            assert_eq!(got, uid)
        }
        (uid, other) => panic!("running as {uid}: {other:?}"),
    }
}

#[test]
fn refuses_symlinks_even_to_good_files() {
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "real.toml", GOOD.as_bytes(), 0o644);
    let link = dir.path().join("policy.toml");
    symlink(&target, &link).unwrap();
    let dangling = dir.path().join("dangling.toml");
    symlink(dir.path().join("nowhere"), &dangling).unwrap();
    for path in [&link, &dangling] {
        let err = load(path, me(dir.path())).unwrap_err();
        assert!(matches!(err, PolicyError::Symlink { .. }), "{err:?}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}

#[test]
fn refuses_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("policy.toml");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    // (path, kind)
    let mut cases = vec![
        (sub, "directory"),
        (PathBuf::from("/dev/null"), "character device"),
    ];
    let fifo = dir.path().join("fifo");
    if std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        // Opening must not block waiting for a writer.
        cases.push((fifo, "FIFO"));
    }
    for (path, kind) in cases {
        match load(&path, me(dir.path())) {
            Err(e @ PolicyError::NotRegularFile { kind: k, .. }) => {
                assert_eq!(k, kind);
                assert!(e.to_string().contains(&format!("is a {kind}")), "{e}");
            }
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}

#[test]
fn refuses_a_missing_file_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(&dir.path().join("absent.toml"), me(dir.path())).unwrap_err();
    match &err {
        PolicyError::Open { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("create it"), "{err}");
}

#[test]
fn bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let owner = me(dir.path());
    let mut text = GOOD.as_bytes().to_vec();
    text.resize(MAX_POLICY_SIZE as usize - 1, b' ');
    text.push(b'\n');
    let path = write(dir.path(), "max.toml", &text, 0o644);
    load(&path, owner).expect("a file of exactly the limit loads");

    text.push(b'\n');
    let path = write(dir.path(), "big.toml", &text, 0o644);
    let err = load(&path, owner).unwrap_err();
    assert!(
        matches!(err, PolicyError::TooLarge { limit, .. } if limit == MAX_POLICY_SIZE),
        "{err:?}"
    );
}

#[test]
fn content_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let owner = me(dir.path());
    let path = write(dir.path(), "bad.toml", b"version = 1\n\n\xff = 1\n", 0o644);
    let err = load(&path, owner).unwrap_err();
    assert!(
        matches!(&err, PolicyError::NotUtf8 { file, line: 3 } if *file == path.display().to_string()),
        "{err:?}"
    );

    let path = write(dir.path(), "typo.toml", b"version = 1\n[[rules]]\n", 0o644);
    let err = load(&path, owner).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: unknown field `rules`", path.display())),
        "{err}"
    );
}
