//! The documented examples are tested as written: every ```toml block of docs/policy.md parses
//! (or, marked `bad`, is refused at the line and with the words its first line names), and the
//! shell recipe for the policy hash computes what `Policy::sha256` does.
//!
//! Block info strings: `toml` (a main policy file), `toml drop-in` (a file of policy.d, loaded
//! after an empty main file), either with `bad`, whose first line must read
//! `# refused: LINE: words of the message`.

use crate::{NameResolver, Policy, PolicyError};

const DOC: &str = include_str!("../../../docs/policy.md");
const DOC_PATH: &str = "docs/policy.md";

/// The users and groups the examples name.
struct DocNames;

impl NameResolver for DocNames {
    fn uid(&self, user: &str) -> Option<u32> {
        ["root", "alice", "bob", "carol", "secops"]
            .iter()
            .position(|u| *u == user)
            .map(|i| if i == 0 { 0 } else { 999 + i as u32 })
    }
    fn gid(&self, group: &str) -> Option<u32> {
        match group {
            "wheel" => Some(10),
            "vm-users" => Some(1100),
            "lab-admins" => Some(1200),
            "gpu-lab" => Some(1300),
            _ => None,
        }
    }
}

struct Block {
    /// The info string after the opening fence.
    info: String,
    /// The line of the opening fence in the document.
    line: usize,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, l) in DOC.lines().enumerate() {
        match (&mut open, l.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_owned(),
                    line: i + 1,
                    text: String::new(),
                })
            }
            (Some(_), Some("")) => out.extend(open.take()),
            (Some(b), _) => {
                b.text += l;
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{DOC_PATH}: an unclosed code block");
    out
}

fn load(block: &Block, drop_in: bool) -> Result<Policy, PolicyError> {
    if drop_in {
        Policy::parse_files(
            &[
                ("/etc/vfio-gate/policy.toml", ""),
                (
                    "/etc/vfio-gate/policy.d/50-example.toml",
                    block.text.as_str(),
                ),
            ],
            &DocNames,
        )
    } else {
        Policy::parse_files(
            &[("/etc/vfio-gate/policy.toml", block.text.as_str())],
            &DocNames,
        )
    }
}

#[test]
fn every_toml_example_parses_or_is_refused_as_documented() {
    let (mut good, mut bad) = (0, 0);
    for block in blocks() {
        let mut words = block.info.split_whitespace();
        let at = format!("{DOC_PATH}:{} ({})", block.line, block.info);
        match words.next() {
            Some("toml") => {}
            Some("sh" | "text" | "console") | None => continue,
            Some(other) => panic!("{at}: unknown block language {other:?}"),
        }
        let (mut drop_in, mut refused) = (false, false);
        for w in words {
            match w {
                "drop-in" => drop_in = true,
                "bad" => refused = true,
                other => panic!("{at}: unknown block flag {other:?}"),
            }
        }
        let result = load(&block, drop_in);
        if !refused {
            let p = result.unwrap_or_else(|e| panic!("{at}: {e}\n{}", block.text));
            let unknown: Vec<String> = p
                .findings()
                .iter()
                .filter(|f| f.message.contains("does not exist"))
                .map(|f| f.to_string())
                .collect();
            assert!(unknown.is_empty(), "{at}: {unknown:?}");
            good += 1;
            continue;
        }
        let first = block.text.lines().next().unwrap_or("");
        let (line, words) = first
            .strip_prefix("# refused: ")
            .and_then(|r| r.split_once(": "))
            .unwrap_or_else(|| panic!("{at}: a bad example starts with `# refused: LINE: words`"));
        let line: u32 = line.parse().unwrap_or_else(|_| panic!("{at}: {first}"));
        let err = match result {
            Ok(_) => panic!("{at}: accepted, but documented as refused:\n{}", block.text),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert_eq!(err.line(), Some(line), "{at}: {shown}");
        let file = if drop_in {
            "/etc/vfio-gate/policy.d/50-example.toml"
        } else {
            "/etc/vfio-gate/policy.toml"
        };
        assert!(
            shown.starts_with(&format!("{file}:{line}: ")),
            "{at}: {shown}"
        );
        assert!(shown.contains(words), "{at}: {shown:?} lacks {words:?}");
        bad += 1;
    }
    // The three scenarios, the reference snippets and the refusals are all there.
    assert!(good >= 12, "only {good} good examples");
    assert!(bad >= 8, "only {bad} refused examples");
    for scenario in [
        "alice's workstation",
        "lab-admins: the test chassis",
        "carol: the FPGA in slot 3",
    ] {
        assert!(
            blocks()
                .iter()
                .any(|b| b.info == "toml" && b.text.contains(scenario)),
            "{scenario}"
        );
    }
}

#[test]
fn the_documented_hash_recipe_agrees() {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let recipe = blocks()
        .into_iter()
        .find(|b| b.info == "sh hash")
        .expect("the hash recipe");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vfio-gate");
    fs::create_dir_all(dir.join("policy.d")).unwrap();
    for d in [&dir, &dir.join("policy.d")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Names whose byte order differs from a natural or case-folding order.
    for (name, text) in [
        ("policy.toml", "version = 1\n# ünïcode\n"),
        ("policy.d/b.toml", "# b\n"),
        ("policy.d/B.toml", "# B\n"),
        ("policy.d/10-x.toml", ""),
        ("policy.d/9-x.toml", "# 9\n"),
        ("policy.d/.hidden.toml", "ignored [["),
        ("policy.d/README", "ignored"),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let owner = fs::metadata(&dir).unwrap().uid();
    let p = Policy::load_with_owner(&dir.join("policy.toml"), &DocNames, owner).unwrap();
    assert_eq!(p.sources().len(), 5);

    let script = recipe
        .text
        .replace("/etc/vfio-gate", &dir.display().to_string());
    let out = match std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("no sh to run the recipe with ({e}): skipped");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.split_whitespace().next(),
        Some(p.sha256().as_str()),
        "{script}"
    );
}
