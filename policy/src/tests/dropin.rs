//! Drop-ins: `policy.d/*.toml` beside the main file, as text (`Policy::parse_files`) and on disk
//! (`Policy::load_with_owner`) with every check the main file gets.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use vfio_gate_protocol::Driver::{PciStub, VfioPci};

use super::{Names, device, subject};
use crate::{Decision, Finding, Policy, PolicyError, Severity};

const MAIN: &str = r#"version = 1

[settings]
idle_timeout = 60
node_mode = "0660"

[[rule]]
name = "alice: the e1000e"
subjects = { users = ["alice"] }
devices = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
drivers = ["vfio-pci"]
"#;

const LAB: &str = r#"# lab devices for vm-users
[[rule]]
name = "vm-users: edu"
subjects = { groups = ["vm-users"] }
devices = [{ vendor = "1234", device = "11e8" }]
drivers = ["vfio-pci", "pci-stub"]
"#;

const FENCE: &str = r#"version = 1
[[deny]]
name = "never storage"
devices = [{ class = "01" }]

[[deny]]
name = "no stubbing the edu"
devices = [{ vendor = "1234", device = "11e8" }]
drivers = ["pci-stub"]
"#;

fn files<'a>(list: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    list.to_vec()
}

#[test]
fn drop_ins_add_rules_and_keep_their_own_file() {
    let p = Policy::parse_files(
        &files(&[
            ("/etc/vfio-gate/policy.toml", MAIN),
            ("/etc/vfio-gate/policy.d/10-lab.toml", LAB),
            ("/etc/vfio-gate/policy.d/90-fence.toml", FENCE),
        ]),
        &Names,
    )
    .unwrap();
    assert_eq!(p.settings().idle_timeout.as_secs(), 60);
    assert_eq!(p.settings().node_mode, 0o660);
    let where_: Vec<(&str, &str, u32)> = p
        .rules()
        .iter()
        .map(|r| {
            let o = r.origin();
            (o.name.as_str(), o.file.as_str(), o.line)
        })
        .collect();
    // Load order: the main file, then the drop-ins; within a file, by line.
    assert_eq!(
        where_,
        [
            ("alice: the e1000e", "/etc/vfio-gate/policy.toml", 7),
            ("vm-users: edu", "/etc/vfio-gate/policy.d/10-lab.toml", 2),
            ("never storage", "/etc/vfio-gate/policy.d/90-fence.toml", 2),
            (
                "no stubbing the edu",
                "/etc/vfio-gate/policy.d/90-fence.toml",
                6
            ),
        ]
    );
    let carol = subject(1002, 1002, &[1100]);
    let edu = device("00:06.0", 0x1234, 0x11e8, 0x00ff00);
    assert_eq!(
        p.decide(&carol, &edu, VfioPci).rule().unwrap().file,
        "/etc/vfio-gate/policy.d/10-lab.toml"
    );
    match p.decide(&carol, &edu, PciStub) {
        Decision::Deny(Some(r)) => {
            assert_eq!(
                (r.name.as_str(), r.file.as_str(), r.line),
                (
                    "no stubbing the edu",
                    "/etc/vfio-gate/policy.d/90-fence.toml",
                    6
                )
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn settings_and_versions_in_drop_ins() {
    let main = ("/etc/vfio-gate/policy.toml", MAIN);
    // (drop-in text, line, message)
    let cases = [
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ class = \"01\" }]\n\n[settings]\nidle_timeout = 5\n",
            5,
            "[settings] belongs in the main policy file /etc/vfio-gate/policy.toml, not in a drop-in",
        ),
        (
            "# empty settings\n[settings]\n",
            2,
            "belongs in the main policy file",
        ),
        (
            "version = 2\n[[whatever]]\n",
            1,
            "version 2 is not supported",
        ),
        ("\nversion = 0\n", 2, "version 0"),
    ];
    for (text, line, needle) in cases {
        let err = Policy::parse_files(&[main, ("/etc/vfio-gate/policy.d/x.toml", text)], &Names)
            .unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.file(), "/etc/vfio-gate/policy.d/x.toml", "{shown}");
        assert_eq!(err.line(), Some(line), "{text:?}: {shown}");
        assert!(shown.contains(needle), "{shown}");
    }
    // version = 1 in a drop-in is fine, and so is no version at all.
    Policy::parse_files(&[main, ("d.toml", "version = 1\n"), ("e.toml", "")], &Names).unwrap();
}

#[test]
fn rule_names_are_unique_across_files() {
    let err = Policy::parse_files(
        &[
            ("/etc/vfio-gate/policy.toml", MAIN),
            ("/etc/vfio-gate/policy.d/10-lab.toml", LAB),
            (
                "/etc/vfio-gate/policy.d/20-more.toml",
                "\n[[deny]]\nname = \"vm-users: edu\"\ndevices = [{ class = \"01\" }]\n",
            ),
        ],
        &Names,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/vfio-gate/policy.d/20-more.toml:3: the rule name \"vm-users: edu\" is already used \
         at /etc/vfio-gate/policy.d/10-lab.toml:3: names must be unique across [[rule]] and \
         [[deny]] in the main file and every drop-in, because decisions and audit lines cite them"
    );
}

#[test]
fn the_no_grant_warning_looks_at_every_file() {
    let p = Policy::parse_files(&[("main.toml", ""), ("policy.d/a.toml", LAB)], &Names).unwrap();
    assert!(p.findings().is_empty(), "{:?}", p.findings());
    let p = Policy::parse_files(&[("main.toml", ""), ("policy.d/z.toml", FENCE)], &Names).unwrap();
    assert_eq!(
        p.findings(),
        [Finding {
            severity: Severity::Warning,
            file: "main.toml".into(),
            line: 0,
            rule: None,
            message: "no [[rule]] grants anything, so every request will be denied".into(),
        }]
    );
    let empty = Policy::parse_files::<&str, &str>(&[], &Names).unwrap();
    assert!(empty.rules().is_empty() && empty.sources().is_empty());
}

// --- On disk ----------------------------------------------------------------------------------

/// A policy directory in a temp dir: `policy.toml` and optionally `policy.d/`.
struct Tree {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Whoever runs the tests, who owns what they create: the owner the checks expect.
    owner: u32,
}

impl Tree {
    fn new() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vfio-gate");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let owner = fs::metadata(&dir).unwrap().uid();
        let t = Tree {
            _tmp: tmp,
            dir,
            owner,
        };
        t.write("policy.toml", MAIN, 0o644);
        t
    }

    fn main(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    fn drop_in_dir(&self) -> PathBuf {
        let d = self.dir.join("policy.d");
        if !d.exists() {
            fs::create_dir(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        d
    }

    fn write(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.dir.join(rel);
        if rel.starts_with("policy.d/") {
            self.drop_in_dir();
        }
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn owner(&self) -> u32 {
        self.owner
    }

    fn load(&self) -> Result<Policy, PolicyError> {
        Policy::load_with_owner(&self.main(), &Names, self.owner())
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn loads_drop_ins_in_byte_order() {
    let t = Tree::new();
    // Written out of order; names sort by bytes: "10" < "9" < "B" < "a".
    for (name, rule) in [("a", "r-a"), ("9-x", "r-9"), ("B", "r-B"), ("10-x", "r-10")] {
        t.write(
            &format!("policy.d/{name}.toml"),
            &format!("[[deny]]\nname = \"{rule}\"\ndevices = [{{ vendor = \"ffff\" }}]\n"),
            0o644,
        );
    }
    // Not drop-ins by name: ignored, whatever they contain (even a symlink, even garbage).
    t.write("policy.d/README", "not toml [[", 0o666);
    t.write("policy.d/.hidden.toml", "not toml [[", 0o666);
    t.write("policy.d/x.toml~", "not toml [[", 0o666);
    t.write("policy.d/x.toml.dpkg-old", "not toml [[", 0o666);
    symlink("/etc/passwd", t.dir.join("policy.d/link.conf")).unwrap();

    let p = t.load().unwrap();
    let names: Vec<&str> = p.rules().iter().map(|r| r.origin().name.as_str()).collect();
    assert_eq!(names, ["alice: the e1000e", "r-10", "r-9", "r-B", "r-a"]);
    let files: Vec<String> = p.sources().iter().map(|s| s.path.clone()).collect();
    let d = t.drop_in_dir();
    assert_eq!(
        files,
        [
            shown(&t.main()),
            shown(&d.join("10-x.toml")),
            shown(&d.join("9-x.toml")),
            shown(&d.join("B.toml")),
            shown(&d.join("a.toml")),
        ]
    );
    assert_eq!(p.rules()[1].origin().file, shown(&d.join("10-x.toml")));
    // An empty policy.d is no drop-ins at all; so is none.
    let t = Tree::new();
    t.drop_in_dir();
    assert_eq!(t.load().unwrap().sources().len(), 1);
    assert_eq!(Tree::new().load().unwrap().sources().len(), 1);
}

#[test]
fn a_drop_in_that_does_not_parse_refuses_everything() {
    let t = Tree::new();
    t.write("policy.d/10-lab.toml", LAB, 0o644);
    let bad = t.write(
        "policy.d/20-bad.toml",
        "[[rule]]\nname = \"typo\"\nsubjects = { users = [\"alice\"] }\ndevices = [{ vendr = \"8086\" }]\ndrivers = [\"vfio-pci\"]\n",
        0o644,
    );
    t.write("policy.d/30-ok.toml", FENCE, 0o644);
    let err = t.load().unwrap_err();
    assert_eq!(err.file(), shown(&bad));
    assert_eq!(err.line(), Some(4));
    assert!(
        err.to_string()
            .starts_with(&format!("{}:4: unknown field `vendr`", bad.display())),
        "{err}"
    );
}

#[test]
fn drop_ins_get_the_main_file_checks() {
    // (what, set up the bad drop-in, check the error)
    type Setup = fn(&Tree) -> PathBuf;
    type Check = fn(&PolicyError, &Path) -> bool;
    type Case = (&'static str, Setup, Check);
    let cases: [Case; 7] = [
        (
            "world-writable drop-in",
            |t| t.write("policy.d/50-open.toml", LAB, 0o646),
            |e, p| matches!(e, PolicyError::WritableByOthers { path, mode: 0o646 } if path == p),
        ),
        (
            "group-writable drop-in",
            |t| t.write("policy.d/50-open.toml", LAB, 0o664),
            |e, p| matches!(e, PolicyError::WritableByOthers { path, mode: 0o664 } if path == p),
        ),
        (
            "symlinked drop-in pointing outside",
            |t| {
                let outside = t._tmp.path().join("outside.toml");
                fs::write(&outside, LAB).unwrap();
                fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
                let link = t.drop_in_dir().join("50-link.toml");
                symlink(&outside, &link).unwrap();
                link
            },
            |e, p| matches!(e, PolicyError::Symlink { path } if path == p),
        ),
        (
            "symlinked drop-in pointing inside",
            |t| {
                t.write("policy.d/10-lab.toml", LAB, 0o644);
                let link = t.drop_in_dir().join("50-link.toml");
                symlink("10-lab.toml", &link).unwrap();
                link
            },
            |e, p| matches!(e, PolicyError::Symlink { path } if path == p),
        ),
        (
            "dangling symlink",
            |t| {
                let link = t.drop_in_dir().join("50-link.toml");
                symlink("/nonexistent/policy.toml", &link).unwrap();
                link
            },
            |e, p| matches!(e, PolicyError::Symlink { path } if path == p),
        ),
        (
            "a directory named like a drop-in",
            |t| {
                let d = t.drop_in_dir().join("50-dir.toml");
                fs::create_dir(&d).unwrap();
                d
            },
            |e, p| matches!(e, PolicyError::NotRegularFile { path, kind: "directory" } if path == p),
        ),
        (
            // Opening it must not wait for a writer.
            "a FIFO named like a drop-in",
            |t| {
                let f = t.drop_in_dir().join("50-fifo.toml");
                nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
                f
            },
            |e, p| matches!(e, PolicyError::NotRegularFile { path, kind: "FIFO" } if path == p),
        ),
    ];
    for (what, setup, check) in cases {
        let t = Tree::new();
        t.write("policy.d/10-ok.toml", FENCE, 0o644);
        let bad = setup(&t);
        let err = t.load().unwrap_err();
        assert!(check(&err, &bad), "{what}: {err:?}");
        assert!(err.to_string().contains(&shown(&bad)), "{what}: {err}");
    }
}

#[test]
fn a_drop_in_owned_by_someone_else_is_refused() {
    let t = Tree::new();
    let p = t.write("policy.d/10-lab.toml", LAB, 0o644);
    if t.owner() == 0 {
        // As root the file can be given away.
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let err = t.load().unwrap_err();
        assert!(
            matches!(&err, PolicyError::NotOwnedByRoot { path, uid: 65534 } if *path == p),
            "{err:?}"
        );
    } else {
        // As anyone else: the same tree, expecting another owner.
        let err = Policy::load_with_owner(&t.main(), &Names, t.owner() + 1).unwrap_err();
        assert!(matches!(err, PolicyError::NotOwnedByRoot { .. }), "{err:?}");
    }
}

#[test]
fn the_directories_are_checked_too() {
    // A group-writable policy.d.
    let t = Tree::new();
    t.write("policy.d/10-lab.toml", LAB, 0o644);
    fs::set_permissions(t.drop_in_dir(), fs::Permissions::from_mode(0o775)).unwrap();
    let err = t.load().unwrap_err();
    assert!(
        matches!(&err, PolicyError::DirWritableByOthers { path, mode: 0o775 } if *path == t.drop_in_dir()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("writable by its group,"), "{msg}");
    assert!(
        msg.contains(&format!("chmod go-w {}", t.drop_in_dir().display())),
        "{msg}"
    );

    // A world-writable, sticky policy.d (like /tmp) is still refused.
    fs::set_permissions(t.drop_in_dir(), fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(matches!(
        t.load().unwrap_err(),
        PolicyError::DirWritableByOthers { mode: 0o1777, .. }
    ));

    // The main file's own directory.
    let t = Tree::new();
    fs::set_permissions(&t.dir, fs::Permissions::from_mode(0o757)).unwrap();
    let err = t.load().unwrap_err();
    assert!(
        matches!(&err, PolicyError::DirWritableByOthers { path, mode: 0o757 } if *path == t.dir),
        "{err:?}"
    );

    // Owned by someone else: the main file's directory, checked after the file itself.
    let t = Tree::new();
    if t.owner() == 0 {
        std::os::unix::fs::chown(&t.dir, Some(65534), None).unwrap();
        let err = t.load().unwrap_err();
        assert!(
            matches!(&err, PolicyError::DirNotOwnedByRoot { path, uid: 65534 } if *path == t.dir),
            "{err:?}"
        );
        assert!(err.to_string().contains("chown root:root"), "{err}");
        std::os::unix::fs::chown(&t.dir, Some(0), None).unwrap();
        std::os::unix::fs::chown(t.drop_in_dir(), Some(65534), None).unwrap();
        let err = t.load().unwrap_err();
        assert!(
            matches!(&err, PolicyError::DirNotOwnedByRoot { path, .. } if *path == t.drop_in_dir()),
            "{err:?}"
        );
    }

    // policy.d as a symlink to a perfectly good directory: refused.
    let t = Tree::new();
    let elsewhere = t._tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
    symlink(&elsewhere, t.dir.join("policy.d")).unwrap();
    let err = t.load().unwrap_err();
    assert!(
        matches!(&err, PolicyError::DirSymlink { path } if *path == t.dir.join("policy.d")),
        "{err:?}"
    );
    assert!(err.to_string().contains("symbolic link"), "{err}");

    // policy.d as a file.
    let t = Tree::new();
    t.write("policy.d", "", 0o644);
    let err = t.load().unwrap_err();
    assert!(
        matches!(
            &err,
            PolicyError::NotADirectory {
                kind: "regular file",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_drop_in_with_a_bad_name_is_refused_not_skipped() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let t = Tree::new();
    let d = t.drop_in_dir();
    let name = OsStr::from_bytes(b"bad-\xff.toml");
    let path = d.join(name);
    if fs::write(&path, LAB).is_err() {
        return; // a file system that refuses non-UTF-8 names cannot hold one either
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = t.load().unwrap_err();
    assert!(
        matches!(&err, PolicyError::Open { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
}

#[test]
fn a_relative_main_path_works() {
    let t = Tree::new();
    t.write("policy.d/10-lab.toml", LAB, 0o644);
    let here = std::env::current_dir().unwrap();
    // Not changing the working directory of a multi-threaded test process: a relative path
    // through the temp dir from here instead.
    let rel = pathdiff(&t.main(), &here);
    let p = Policy::load_with_owner(&rel, &Names, t.owner()).unwrap();
    assert_eq!(p.sources()[0].path, rel.display().to_string());
    assert_eq!(
        p.sources()[1].path,
        rel.with_file_name("policy.d")
            .join("10-lab.toml")
            .display()
            .to_string()
    );
}

/// `target` relative to `base` (both absolute), with `..` components.
fn pathdiff(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}
