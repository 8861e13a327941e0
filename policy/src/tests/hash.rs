//! The policy hash: over exactly the bytes loaded, stable, and changed by any one byte.

use proptest::prelude::*;

use super::{FILE, Names, parse};
use crate::Policy;

const TEXT: &str = r#"version = 1
# who may have the lab NIC
[[rule]]
name = "lab NIC"
subjects = { groups = ["vm-users"] }
devices = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
drivers = ["vfio-pci"]
"#;

#[test]
fn known_values() {
    // Computed independently (Python's hashlib) from the documented framing:
    // path NUL length NUL content, per file.
    let p = Policy::parse_files(&[("a.toml", ""), ("b.toml", "version = 1\n")], &Names).unwrap();
    assert_eq!(
        p.sha256(),
        "2767040d387711c310099e28ea937d9a07e1d7ad89cbeddefc02f9f116a39ec0"
    );
    let per_file: Vec<(&str, &str)> = p
        .sources()
        .iter()
        .map(|s| (s.path.as_str(), s.sha256.as_str()))
        .collect();
    // Each file's own hash is what `sha256sum` prints for it.
    assert_eq!(
        per_file,
        [
            (
                "a.toml",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            (
                "b.toml",
                "dbab12665d98aef021ba64953c61b0ed8a908cfb56a1c01e2fcb4b052b71a2a1"
            ),
        ]
    );
}

#[test]
fn stable_and_sensitive() {
    let a = parse(TEXT).unwrap();
    let b = parse(TEXT).unwrap();
    assert_eq!(a.sha256(), b.sha256());
    assert_eq!(a.sha256().len(), 64);
    assert!(
        a.sha256()
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(a.sources().len(), 1);
    assert_eq!(a.sources()[0].path, FILE);

    let different = [
        // One byte in a comment: the same rules, another text.
        TEXT.replace("who may", "who May"),
        // Whitespace only.
        TEXT.replace("version = 1", "version =  1"),
        format!("{TEXT}\n"),
    ];
    for text in &different {
        let q = parse(text).unwrap();
        assert_eq!(q.rules(), a.rules(), "the same rules");
        assert_ne!(q.sha256(), a.sha256(), "{text:?}");
        assert_ne!(q.sources()[0].sha256, a.sources()[0].sha256);
    }
    // The path is part of it.
    let elsewhere = Policy::parse(TEXT, "/etc/other.toml", &Names).unwrap();
    assert_ne!(elsewhere.sha256(), a.sha256());
    assert_eq!(elsewhere.sources()[0].sha256, a.sources()[0].sha256);
}

#[test]
fn framing_keeps_files_apart() {
    // The same bytes split between files differently, or the files swapped: other hashes.
    let (x, y) = ("version = 1\n", "# more\n");
    let one = Policy::parse_files(&[("m", x), ("d", y)], &Names).unwrap();
    let moved = Policy::parse_files(&[("m", "version = 1\n# more\n"), ("d", "")], &Names).unwrap();
    let swapped = Policy::parse_files(&[("d", y), ("m", x)], &Names).unwrap();
    let renamed = Policy::parse_files(&[("m", x), ("e", y)], &Names).unwrap();
    let hashes = [
        one.sha256(),
        moved.sha256(),
        swapped.sha256(),
        renamed.sha256(),
    ];
    for (i, a) in hashes.iter().enumerate() {
        for b in &hashes[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn load_hashes_what_it_read() {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let main = dir.join("policy.toml");
    fs::write(&main, TEXT).unwrap();
    fs::create_dir(dir.join("policy.d")).unwrap();
    fs::set_permissions(dir.join("policy.d"), fs::Permissions::from_mode(0o755)).unwrap();
    let drop_in = dir.join("policy.d/10-x.toml");
    fs::write(&drop_in, "# nothing yet\n").unwrap();
    for p in [&main, &drop_in] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let owner = fs::metadata(dir).unwrap().uid();
    let loaded = Policy::load_with_owner(&main, &Names, owner).unwrap();
    let parsed = Policy::parse_files(
        &[
            (main.display().to_string(), TEXT),
            (drop_in.display().to_string(), "# nothing yet\n"),
        ],
        &Names,
    )
    .unwrap();
    assert_eq!(loaded.sha256(), parsed.sha256());
    assert_eq!(loaded.sources(), parsed.sources());

    // One byte more in the drop-in: another hash.
    fs::write(&drop_in, "# nothing yet!\n").unwrap();
    let again = Policy::load_with_owner(&main, &Names, owner).unwrap();
    assert_ne!(again.sha256(), loaded.sha256());
    assert_eq!(again.sources()[0], loaded.sources()[0]);
    assert_ne!(again.sources()[1], loaded.sources()[1]);
}

proptest! {
    /// Changing any one byte of a comment (to another printable byte) changes the hash.
    #[test]
    fn any_one_byte_changes_it(at in 0usize..24, to in 0x20u8..0x7f) {
        let text = format!("# {}\nversion = 1\n", "abcdefghijklmnopqrstuvwx");
        let mut bytes = text.clone().into_bytes();
        prop_assume!(bytes[2 + at] != to);
        bytes[2 + at] = to;
        let changed = String::from_utf8(bytes).unwrap();
        let (a, b) = (parse(&text).unwrap(), parse(&changed).unwrap());
        prop_assert_ne!(a.sha256(), b.sha256());
    }
}
