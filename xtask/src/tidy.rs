//! `cargo xtask tidy`: the architecture's invariants, checked by a machine.
//!
//! Every check reads its inputs from the tree as it is (the workspace members in the root
//! `Cargo.toml`, the files on disk, `ARCHITECTURE.md`, `README.md`), so moving or renaming a
//! module needs no change here: tidy then says which document or file disagrees, at file:line.
//!
//! 1. **unsafe** — `unsafe` (blocks, `fn`, `impl`, `trait`, `extern`, attributes) and
//!    `allow`/`expect`/`warn(unsafe_code)` appear only in a crate's `src/sys.rs`. Every library
//!    and binary crate root says `#![forbid(unsafe_code)]`; a root that declares `mod sys` says
//!    `#![deny(unsafe_code)]` instead (and `sys.rs` then starts with `#![allow(unsafe_code)]`).
//!    Exempt: the crates in [`UNSAFE_EXEMPT`] and every `tests/`, `benches/` and `examples/`
//!    directory (integration tests are their own crates, not shipped). Unit tests inside `src/`
//!    are not exempt: the crate root's attribute covers them too.
//! 2. **writes** — in production code (each member's `src/`, outside `#[cfg(test)]` items and
//!    modules; the crates in [`WRITE_EXEMPT`] aside), calls that write, create, rename, remove,
//!    chown or chmod files appear only in the files listed between [`WRITERS_BEGIN`] and
//!    [`WRITERS_END`] in `ARCHITECTURE.md` (first column of a table, or first `` `path` `` of a
//!    list item; a path ending in `/` allows everything under it). Every entry must exist, lie in
//!    the privileged crate ([`PRIVILEGED_CRATE`]), and write something. The one exception is a
//!    second, optional list between [`ADMIN_WRITERS_BEGIN`] and [`ADMIN_WRITERS_END`]: files of
//!    the CLI ([`CLI_CRATE`]) that write only when an admin runs them as root (`boot-config
//!    --write`); its entries must exist, lie in the CLI crate, and write something too. What
//!    counts as a write: see [`file_writes`]. `write_all`/`write` on a handle are not flagged: a
//!    writable handle comes from an open that is (the frontend's self-pipe and stdout stay
//!    allowed).
//! 3. **code map** — `ARCHITECTURE.md`'s tables with a `path` column name every workspace member
//!    (and the crate name matches its `Cargo.toml`); every path they name exists. A table whose
//!    first column is `module`, under a heading naming `` `DIR/src/` ``, lists exactly the
//!    modules in that directory (files and directories, `lib.rs`/`main.rs`/`mod.rs` and
//!    `#[cfg(test)]` modules aside); the privileged crate must have one.
//! 4. **exit codes** — `README.md`'s paragraph starting `Exit codes:` (entries `N meaning`,
//!    separated by `, `, ending at the first `. ` outside parentheses) lists the same numbers as
//!    the `EXIT_STATUS_HELP` text of the CLI (found by name anywhere under the CLI crate's
//!    `src/`), and every word of each README meaning (lower case, `the`/`a`/`or`… aside) appears
//!    in the CLI's text for that number.
//! 5. **helper dependencies** — `cargo tree -p vfio-gated -e normal --prefix none`, deduplicated,
//!    has at most [`MAX_HELPER_DEPS`] lines (the helper itself included).
//! 6. **doc links** — relative links in `*.md` at the root, under `docs/` and in each member's
//!    directory stay inside the repository and name an existing file or directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::util::{Context, Paths, Result, display};

/// Crates whose `unsafe` tidy does not police: the test guest's small programs (raw fds, `fork`,
/// the VFIO ioctls), never installed on a host.
pub const UNSAFE_EXEMPT: &[&str] = &["vfio-gate-tests"];

/// Crates whose file writes tidy does not police: the test guest's programs, and xtask itself
/// (it writes initramfs images, caches and VM directories by design). Neither is installed.
pub const WRITE_EXEMPT: &[&str] = &["vfio-gate-tests", "xtask"];

/// The only crate that may write files (sysfs, `/dev/vfio`, its lease store): the entries of the
/// writers list must lie in it.
pub const PRIVILEGED_CRATE: &str = "vfio-gated";

/// The crate of the CLI, where `EXIT_STATUS_HELP` lives.
pub const CLI_CRATE: &str = "vfio-gate";

/// The constant holding the CLI's exit status table (its `--help` text).
pub const EXIT_HELP_CONST: &str = "EXIT_STATUS_HELP";

/// The helper's dependency budget: lines of `cargo tree -p vfio-gated -e normal --prefix none`,
/// deduplicated, the helper itself included.
pub const MAX_HELPER_DEPS: usize = 40;

/// The markers around the writers list in `ARCHITECTURE.md` (HTML comments: invisible when
/// rendered).
pub const WRITERS_BEGIN: &str = "<!-- tidy:writers -->";
pub const WRITERS_END: &str = "<!-- /tidy:writers -->";

/// The markers around the admin-writers list: files of [`CLI_CRATE`] that write, and only when
/// an admin runs them as root. Optional: without it the CLI writes nothing.
pub const ADMIN_WRITERS_BEGIN: &str = "<!-- tidy:admin-writers -->";
pub const ADMIN_WRITERS_END: &str = "<!-- /tidy:admin-writers -->";

const ARCHITECTURE: &str = "ARCHITECTURE.md";
const README: &str = "README.md";

/// One thing that is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Relative to the workspace root.
    pub file: String,
    pub line: Option<usize>,
    pub msg: String,
}

impl Problem {
    fn at(file: &str, line: usize, msg: impl Into<String>) -> Problem {
        Problem {
            file: file.to_string(),
            line: Some(line),
            msg: msg.into(),
        }
    }

    fn file(file: &str, msg: impl Into<String>) -> Problem {
        Problem {
            file: file.to_string(),
            line: None,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.msg),
            None => write!(f, "{}: {}", self.file, self.msg),
        }
    }
}

/// The outcome of one check.
#[derive(Debug)]
pub struct CheckResult {
    pub name: &'static str,
    pub problems: Vec<Problem>,
    /// A measurement worth printing even when the check passes.
    pub note: Option<String>,
    /// The same measurement, as a `# metric name=value` for `cargo xtask test`'s summary.
    pub metric: Option<(&'static str, usize)>,
}

/// `cargo xtask tidy`: every check, every problem, non-zero if any.
pub fn main(paths: &Paths) -> Result<ExitCode> {
    let results = run(paths)?;
    let failed = print(&results);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints each check's problems; returns how many checks failed.
pub fn print(results: &[CheckResult]) -> usize {
    let mut failed = 0;
    for r in results {
        if r.problems.is_empty() {
            println!("tidy: {}: ok", r.name);
        } else {
            failed += 1;
            println!("tidy: {}: {} problem(s):", r.name, r.problems.len());
            for p in &r.problems {
                println!("{p}");
            }
        }
        if let Some(n) = &r.note {
            println!("tidy: {}: {n}", r.name);
        }
    }
    println!(
        "tidy: {} check(s), {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    failed
}

/// Runs every check. Fails only if the workspace itself cannot be read.
pub fn run(paths: &Paths) -> Result<Vec<CheckResult>> {
    let ws = Workspace::load(&paths.workspace)?;
    let arch = ws.read_doc(ARCHITECTURE);
    let readme = ws.read_doc(README);
    let mut results = vec![
        CheckResult {
            name: "unsafe only in sys.rs",
            problems: check_unsafe(&ws),
            note: None,
            metric: None,
        },
        CheckResult {
            name: "file writes only in the listed writers",
            problems: check_writes(&ws, &arch),
            note: None,
            metric: None,
        },
        CheckResult {
            name: "ARCHITECTURE.md code map",
            problems: check_code_map(&ws, &arch),
            note: None,
            metric: None,
        },
        CheckResult {
            name: "README exit codes",
            problems: check_exit_codes(&ws, &readme),
            note: None,
            metric: None,
        },
    ];
    let (problems, count) = check_helper_deps(&ws);
    results.push(CheckResult {
        name: "helper dependencies",
        problems,
        note: count.map(|n| {
            format!(
                "{PRIVILEGED_CRATE} pulls in {n} crates, itself included (at most \
                 {MAX_HELPER_DEPS})"
            )
        }),
        metric: count.map(|n| ("helper_deps", n)),
    });
    results.push(CheckResult {
        name: "doc links",
        problems: check_links(&ws),
        note: None,
        metric: None,
    });
    Ok(results)
}

// ---------------------------------------------------------------------------------------------
// The workspace

/// A workspace member, from its `Cargo.toml`.
#[derive(Debug, Clone)]
struct Member {
    /// Relative to the root, without a trailing slash (`helper`).
    dir: String,
    /// The package name (`vfio-gated`).
    name: String,
    /// Library and binary crate roots, relative to the workspace root.
    roots: Vec<String>,
}

#[derive(Debug)]
struct Workspace {
    root: PathBuf,
    members: Vec<Member>,
}

/// A document read for a check: its text, or the problem of reading it.
type Doc = std::result::Result<String, Problem>;

impl Workspace {
    fn load(root: &Path) -> Result<Workspace> {
        let manifest = root.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let mut members = Vec::new();
        for m in workspace_members(&text) {
            for dir in expand_member(root, &m) {
                let path = root.join(&dir).join("Cargo.toml");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let pkg = package_info(&text);
                let mut roots = Vec::new();
                let mut add = |rel: &str| {
                    let r = format!("{dir}/{rel}");
                    if root.join(&r).is_file() && !roots.contains(&r) {
                        roots.push(r);
                    }
                };
                for p in &pkg.target_paths {
                    add(p);
                }
                add("src/lib.rs");
                add("src/main.rs");
                if let Ok(rd) = std::fs::read_dir(root.join(&dir).join("src/bin")) {
                    let mut bins: Vec<PathBuf> =
                        rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
                    bins.sort();
                    for b in bins {
                        let n = b
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned();
                        if b.is_dir() {
                            add(&format!("src/bin/{n}/main.rs"));
                        } else if n.ends_with(".rs") {
                            add(&format!("src/bin/{n}"));
                        }
                    }
                }
                members.push(Member {
                    name: pkg.name.unwrap_or_else(|| dir.clone()),
                    dir,
                    roots,
                });
            }
        }
        if members.is_empty() {
            crate::util::bail!("{}: no [workspace] members", manifest.display());
        }
        Ok(Workspace {
            root: root.to_path_buf(),
            members,
        })
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn read_doc(&self, rel: &str) -> Doc {
        std::fs::read_to_string(self.abs(rel))
            .map_err(|e| Problem::file(rel, format!("cannot read it: {e}")))
    }

    /// Every `*.rs` under `<member>/src`, relative to the root, sorted.
    fn src_files(&self, m: &Member) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.root, &format!("{}/src", m.dir), &mut |rel| {
            if rel.ends_with(".rs") {
                out.push(rel.to_string());
            }
        });
        out
    }
}

/// `members = ["a", "b"]` of the `[workspace]` table, possibly over several lines.
fn workspace_members(cargo_toml: &str) -> Vec<String> {
    let mut section = String::new();
    let mut collecting = false;
    let mut buf = String::new();
    for line in cargo_toml.lines() {
        let t = line.trim();
        if collecting {
            buf.push_str(strip_toml_comment(t));
            if t.contains(']') {
                break;
            }
            continue;
        }
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if section == "workspace"
            && let Some((k, v)) = t.split_once('=')
            && k.trim() == "members"
        {
            buf.push_str(strip_toml_comment(v));
            if v.contains(']') {
                break;
            }
            collecting = true;
        }
    }
    quoted_strings(&buf)
}

fn strip_toml_comment(s: &str) -> &str {
    // Good enough for the manifests' member lists: no `#` inside the quoted paths.
    s.split_once('#').map_or(s, |(a, _)| a)
}

fn quoted_strings(s: &str) -> Vec<String> {
    s.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `dir/*` → every subdirectory with a `Cargo.toml`; anything else as is.
fn expand_member(root: &Path, m: &str) -> Vec<String> {
    let m = m.trim_end_matches('/');
    let Some(prefix) = m.strip_suffix("/*") else {
        return vec![m.to_string()];
    };
    let mut out: Vec<String> = std::fs::read_dir(root.join(prefix))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| format!("{prefix}/{}", e.file_name().to_string_lossy()))
        .collect();
    out.sort();
    out
}

#[derive(Debug, Default)]
struct PackageInfo {
    name: Option<String>,
    /// `path = …` of `[lib]` and `[[bin]]` tables.
    target_paths: Vec<String>,
}

fn package_info(cargo_toml: &str) -> PackageInfo {
    let mut info = PackageInfo::default();
    let mut section = String::new();
    for line in cargo_toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        let value = quoted_strings(v).into_iter().next();
        match (section.as_str(), k.trim()) {
            ("package", "name") => info.name = value,
            ("lib" | "bin", "path") => info.target_paths.extend(value),
            _ => {}
        }
    }
    info
}

/// Calls `f` with each file under `rel` (relative to `root`), sorted, skipping hidden entries
/// and `target` directories.
fn walk(root: &Path, rel: &str, f: &mut dyn FnMut(&str)) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    let mut entries: Vec<(String, bool)> = rd
        .filter_map(|e| e.ok())
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (e.file_name().to_string_lossy().into_owned(), is_dir)
        })
        .filter(|(n, _)| !n.starts_with('.'))
        .collect();
    entries.sort();
    for (name, is_dir) in entries {
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if is_dir {
            if name != "target" {
                walk(root, &child, f);
            }
        } else {
            f(&child);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small Rust lexer: enough to tell code from comments, strings and char literals.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Punct,
    /// Any string literal, its source text kept whole (prefix, quotes, hashes).
    Str,
    Char,
    Lifetime,
    Num,
}

#[derive(Debug, Clone)]
struct Tok {
    kind: Kind,
    text: String,
    line: usize,
}

impl Tok {
    fn is(&self, kind: Kind, text: &str) -> bool {
        self.kind == kind && self.text == text
    }
    fn ident(&self, text: &str) -> bool {
        self.is(Kind::Ident, text)
    }
    fn punct(&self, c: char) -> bool {
        self.kind == Kind::Punct && self.text.len() == c.len_utf8() && self.text.starts_with(c)
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn lex(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident_end = |mut i: usize| {
        while i < n && is_ident_continue(c[i]) {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < n {
        let (ch, s, start_line) = (c[i], i, line);
        // Each branch either skips (`continue`) or ends a token of `kind` at `i`.
        let kind = if ch == '\n' {
            line += 1;
            i += 1;
            continue;
        } else if ch.is_whitespace() {
            i += 1;
            continue;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
            continue;
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 1;
            i += 2;
            while i < n && depth > 0 {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
            continue;
        } else if is_ident_start(ch) {
            i = ident_end(i);
            let word: String = c[s..i].iter().collect();
            let raw = matches!(word.as_str(), "r" | "br" | "cr");
            let prefix = raw || matches!(word.as_str(), "b" | "c");
            if prefix && at(i) == '"' || raw && at(i) == '#' && raw_string_follows(&c, i) {
                i = if raw {
                    end_of_raw_string(&c, i, &mut line)
                } else {
                    end_of_string(&c, i, &mut line)
                };
                Kind::Str
            } else if word == "b" && at(i) == '\'' {
                i = end_of_char(&c, i);
                Kind::Char
            } else if word == "r" && at(i) == '#' && is_ident_start(at(i + 1)) {
                // A raw identifier: `r#unsafe` is not the keyword.
                i = ident_end(i + 1);
                Kind::Ident
            } else {
                Kind::Ident
            }
        } else if ch == '"' {
            i = end_of_string(&c, i, &mut line);
            Kind::Str
        } else if ch == '\'' {
            // `'x'` and `'\n'` are chars; `'a` (no closing quote after one char) a lifetime.
            if at(i + 1) == '\\' || (at(i + 2) == '\'' && at(i + 1) != '\n') {
                i = end_of_char(&c, i);
                Kind::Char
            } else if is_ident_start(at(i + 1)) {
                i = ident_end(i + 1);
                Kind::Lifetime
            } else {
                i += 1;
                Kind::Punct
            }
        } else if ch.is_ascii_digit() {
            while i < n && (is_ident_continue(c[i]) || (c[i] == '.' && at(i + 1).is_ascii_digit()))
            {
                i += 1;
            }
            Kind::Num
        } else {
            i += 1;
            Kind::Punct
        };
        out.push(Tok {
            kind,
            text: c[s..i].iter().collect(),
            line: start_line,
        });
    }
    out
}

/// At `c[i] == '#'`: do hashes then a quote follow?
fn raw_string_follows(c: &[char], mut i: usize) -> bool {
    while c.get(i) == Some(&'#') {
        i += 1;
    }
    c.get(i) == Some(&'"')
}

/// From the opening quote at `i`: the index after the closing one.
fn end_of_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => return i + 1,
            ch => {
                if ch == '\n' {
                    *line += 1;
                }
                i += 1;
            }
        }
    }
    c.len()
}

/// From the hashes or quote at `i` of a raw string: the index after its end.
fn end_of_raw_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        if c[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    c.len()
}

/// From the opening `'` at `i` of a char literal: the index after the closing one.
fn end_of_char(c: &[char], mut i: usize) -> usize {
    i += 1;
    while i < c.len() && c[i] != '\'' && c[i] != '\n' {
        i += if c[i] == '\\' { 2 } else { 1 };
    }
    (i + 1).min(c.len())
}

/// The value of a string literal token, with the source line of each of its lines.
fn string_value(tok: &Tok) -> Option<Vec<(String, usize)>> {
    let t = tok.text.as_str();
    let body_start = t.find(['"', '#'])?;
    let prefix = &t[..body_start];
    let raw = prefix.contains('r');
    let c: Vec<char> = t[body_start..].chars().collect();
    let mut line = tok.line;
    let mut out: Vec<(char, usize)> = Vec::new();
    if raw {
        let hashes = c.iter().take_while(|&&ch| ch == '#').count();
        let inner = &c[hashes + 1..c.len().checked_sub(hashes + 1)?];
        for &ch in inner {
            out.push((ch, line));
            if ch == '\n' {
                line += 1;
            }
        }
    } else {
        let inner = &c[1..c.len().checked_sub(1)?];
        let mut i = 0;
        while i < inner.len() {
            let ch = inner[i];
            if ch != '\\' {
                out.push((ch, line));
                if ch == '\n' {
                    line += 1;
                }
                i += 1;
                continue;
            }
            let esc = *inner.get(i + 1)?;
            i += 2;
            let v = match esc {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                '\\' | '"' | '\'' => esc,
                'x' => {
                    let hex: String = inner.get(i..i + 2)?.iter().collect();
                    i += 2;
                    char::from(u8::from_str_radix(&hex, 16).ok()?)
                }
                'u' => {
                    let close = inner[i..].iter().position(|&ch| ch == '}')?;
                    let hex: String = inner[i + 1..i + close].iter().collect();
                    i += close + 1;
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                }
                '\n' => {
                    line += 1;
                    while i < inner.len() && inner[i].is_whitespace() {
                        if inner[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                    continue;
                }
                _ => return None,
            };
            out.push((v, line));
        }
    }
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut cur_line = None;
    for (ch, l) in out {
        let first = *cur_line.get_or_insert(l);
        if ch == '\n' {
            lines.push((std::mem::take(&mut cur), first));
            cur_line = None;
        } else {
            cur.push(ch);
        }
    }
    if cur_line.is_some() || !cur.is_empty() {
        lines.push((cur, cur_line.unwrap_or(line)));
    }
    Some(lines)
}

/// Index of the bracket closing the one at `open` (`(`, `[` or `{`), counting all three kinds.
fn matching_close(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        if t.kind != Kind::Punct {
            continue;
        }
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// What of a file is test-only: a mask over its tokens (items under `#[cfg(test)]`) and the
/// names of the modules it declares test-only (`#[cfg(test)] mod tests;`).
#[derive(Debug, Default)]
struct TestParts {
    mask: Vec<bool>,
    modules: Vec<String>,
    /// The whole file (`#![cfg(test)]`).
    whole: bool,
}

fn test_parts(toks: &[Tok]) -> TestParts {
    let mut parts = TestParts {
        mask: vec![false; toks.len()],
        ..TestParts::default()
    };
    let mut i = 0;
    while i < toks.len() {
        if !toks[i].punct('#') {
            i += 1;
            continue;
        }
        let inner = toks.get(i + 1).is_some_and(|t| t.punct('!'));
        let open = if inner { i + 2 } else { i + 1 };
        if !toks.get(open).is_some_and(|t| t.punct('[')) {
            i += 1;
            continue;
        }
        let Some(close) = matching_close(toks, open) else {
            break;
        };
        let attr = &toks[open + 1..close];
        let is_test = attr.first().is_some_and(|t| t.ident("cfg"))
            && attr.get(1).is_some_and(|t| t.punct('('))
            && cfg_is_test(&attr[2..attr.len().saturating_sub(1)]);
        if !is_test {
            i = close + 1;
            continue;
        }
        if inner {
            parts.whole = true;
            parts.mask.iter_mut().for_each(|m| *m = true);
            return parts;
        }
        // The item: further attributes, then up to `;` or the block's `}` at depth 0.
        let mut k = close + 1;
        while toks.get(k).is_some_and(|t| t.punct('#'))
            && toks.get(k + 1).is_some_and(|t| t.punct('['))
        {
            match matching_close(toks, k + 1) {
                Some(c) => k = c + 1,
                None => break,
            }
        }
        let item_start = k;
        let mut depth = 0usize;
        let mut end = toks.len().saturating_sub(1);
        while k < toks.len() {
            let t = &toks[k];
            if t.kind == Kind::Punct {
                match t.text.as_str() {
                    "(" | "[" | "{" => depth += 1,
                    ")" | "]" => depth = depth.saturating_sub(1),
                    "}" => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            end = k;
                            break;
                        }
                    }
                    ";" if depth == 0 => {
                        end = k;
                        break;
                    }
                    _ => {}
                }
            }
            k += 1;
        }
        let item = &toks[item_start..=end.min(toks.len() - 1)];
        let words: Vec<&Tok> = item
            .iter()
            .skip_while(|t| {
                t.ident("pub")
                    || t.punct('(')
                    || t.punct(')')
                    || t.ident("crate")
                    || t.ident("super")
            })
            .collect();
        if words.first().is_some_and(|t| t.ident("mod"))
            && let Some(name) = words.get(1)
            && words.get(2).is_some_and(|t| t.punct(';'))
        {
            parts.modules.push(name.text.clone());
        }
        for m in &mut parts.mask[i..=end.min(toks.len() - 1)] {
            *m = true;
        }
        i = end + 1;
    }
    parts
}

/// The predicate of a `cfg(…)`: `test`, or `all(…)` with `test` among its top-level terms.
fn cfg_is_test(pred: &[Tok]) -> bool {
    if pred.len() == 1 && pred[0].ident("test") {
        return true;
    }
    if pred.first().is_some_and(|t| t.ident("all")) && pred.get(1).is_some_and(|t| t.punct('(')) {
        let mut depth = 0;
        for (k, t) in pred.iter().enumerate().skip(1) {
            if t.punct('(') {
                depth += 1;
            } else if t.punct(')') {
                depth -= 1;
            } else if depth == 1
                && t.ident("test")
                && pred[k - 1].kind == Kind::Punct
                && (pred[k - 1].punct('(') || pred[k - 1].punct(','))
                && pred
                    .get(k + 1)
                    .is_some_and(|n| n.punct(',') || n.punct(')'))
            {
                return true;
            }
        }
    }
    false
}

/// Files and directories (ending in `/`) of a member's `src/` that only tests compile, from its
/// `#[cfg(test)] mod x;` declarations and `#![cfg(test)]` files.
fn test_only_paths(ws: &Workspace, m: &Member) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in ws.src_files(m) {
        let Ok(text) = std::fs::read_to_string(ws.abs(&file)) else {
            continue;
        };
        let parts = test_parts(&lex(&text));
        if parts.whole {
            out.insert(file.clone());
        }
        let (dir, stem) = file.rsplit_once('/').unwrap_or(("", &file));
        let stem = stem.trim_end_matches(".rs");
        // `lib.rs`, `main.rs`, `mod.rs` declare children beside them; `foo.rs` in `foo/`.
        let base = if matches!(stem, "lib" | "main" | "mod") {
            dir.to_string()
        } else {
            format!("{dir}/{stem}")
        };
        for name in parts.modules {
            out.insert(format!("{base}/{name}.rs"));
            out.insert(format!("{base}/{name}/"));
        }
    }
    out
}

fn is_under_any(path: &str, set: &BTreeSet<String>) -> bool {
    set.iter().any(|p| {
        if p.ends_with('/') {
            path.starts_with(p.as_str())
        } else {
            path == p
        }
    })
}

// ---------------------------------------------------------------------------------------------
// 1. unsafe

/// An `unsafe` use found in code (not in a comment or a literal).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnsafeUse {
    line: usize,
    what: &'static str,
}

/// Every `unsafe` keyword and every `allow`/`expect`/`warn(unsafe_code)` in `src`.
fn find_unsafe(src: &str) -> Vec<UnsafeUse> {
    let toks = lex(src);
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.ident("unsafe") {
            let next = toks.get(i + 1);
            let prev_is_attr = i >= 2 && toks[i - 1].punct('[') && toks[i - 2].punct('#');
            let what = match next {
                Some(n) if n.punct('{') => "an `unsafe` block",
                Some(n) if n.ident("fn") => "an `unsafe fn`",
                Some(n) if n.ident("impl") => "an `unsafe impl`",
                Some(n) if n.ident("trait") => "an `unsafe trait`",
                Some(n) if n.ident("extern") => "an `unsafe extern` block",
                Some(n) if n.punct('(') && prev_is_attr => "an `#[unsafe(…)]` attribute",
                _ => "`unsafe`",
            };
            out.push(UnsafeUse { line: t.line, what });
        } else if (t.ident("allow") || t.ident("expect") || t.ident("warn"))
            && toks.get(i + 1).is_some_and(|n| n.punct('('))
            && let Some(close) = matching_close(&toks, i + 1)
            && toks[i + 2..close].iter().any(|x| x.ident("unsafe_code"))
        {
            out.push(UnsafeUse {
                line: t.line,
                what: "an `allow(unsafe_code)`",
            });
        }
    }
    out
}

/// The crate-level `forbid`/`deny(unsafe_code)` of a crate root, and whether it declares `mod sys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnsafeLevel {
    Forbid,
    Deny,
    Missing,
}

fn root_unsafe_level(src: &str) -> (UnsafeLevel, bool) {
    let toks = lex(src);
    let mut level = UnsafeLevel::Missing;
    let mut has_sys = false;
    for (i, t) in toks.iter().enumerate() {
        if t.punct('#')
            && toks.get(i + 1).is_some_and(|n| n.punct('!'))
            && toks.get(i + 2).is_some_and(|n| n.punct('['))
            && let Some(close) = matching_close(&toks, i + 2)
        {
            let attr = &toks[i + 3..close];
            if attr.iter().any(|x| x.ident("unsafe_code")) {
                if attr.first().is_some_and(|x| x.ident("forbid")) {
                    level = UnsafeLevel::Forbid;
                } else if attr.first().is_some_and(|x| x.ident("deny"))
                    && level != UnsafeLevel::Forbid
                {
                    level = UnsafeLevel::Deny;
                }
            }
        }
        if t.ident("mod")
            && toks.get(i + 1).is_some_and(|n| n.ident("sys"))
            && toks
                .get(i + 2)
                .is_some_and(|n| n.punct(';') || n.punct('{'))
        {
            has_sys = true;
        }
    }
    (level, has_sys)
}

fn check_unsafe(ws: &Workspace) -> Vec<Problem> {
    let mut problems = Vec::new();
    for m in ws
        .members
        .iter()
        .filter(|m| !UNSAFE_EXEMPT.contains(&m.name.as_str()))
    {
        let allowed = format!("{}/src/sys.rs", m.dir);
        for file in ws.src_files(m) {
            if file == allowed {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(ws.abs(&file)) else {
                problems.push(Problem::file(&file, "cannot read it"));
                continue;
            };
            for u in find_unsafe(&text) {
                problems.push(Problem::at(
                    &file,
                    u.line,
                    format!(
                        "{} outside {allowed}, the only file of `{}` that may hold unsafe \
                         code: move it there behind a safe function",
                        u.what, m.name
                    ),
                ));
            }
        }
        for root in &m.roots {
            let Ok(text) = std::fs::read_to_string(ws.abs(root)) else {
                problems.push(Problem::file(root, "cannot read it"));
                continue;
            };
            let (level, has_sys) = root_unsafe_level(&text);
            let msg = match (level, has_sys) {
                (UnsafeLevel::Missing, false) => Some(format!(
                    "crate root of `{}` without `#![forbid(unsafe_code)]`: add it at the top",
                    m.name
                )),
                (UnsafeLevel::Missing, true) => Some(format!(
                    "crate root of `{}` declares `mod sys` but not `#![deny(unsafe_code)]`: add \
                     it at the top (and `#![allow(unsafe_code)]` at the top of {allowed})",
                    m.name
                )),
                (UnsafeLevel::Deny, false) => Some(format!(
                    "crate root of `{}` says `#![deny(unsafe_code)]` but declares no `mod sys`: \
                     make it `#![forbid(unsafe_code)]`",
                    m.name
                )),
                _ => None,
            };
            if let Some(msg) = msg {
                problems.push(Problem::at(root, 1, msg));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// 2. file writes

/// `std::fs` functions that change the filesystem.
const FS_WRITERS: &[&str] = &[
    "write",
    "rename",
    "remove_file",
    "remove_dir",
    "remove_dir_all",
    "create_dir",
    "create_dir_all",
    "set_permissions",
    "copy",
    "hard_link",
    "soft_link",
    "symlink",
    "chown",
    "fchown",
    "lchown",
];

/// Calls (libc, nix, `std::os::unix::fs`) that change the filesystem, whatever their path.
const CALL_WRITERS: &[&str] = &[
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "chmod",
    "fchmod",
    "fchmodat",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mkfifo",
    "mkfifoat",
    "linkat",
    "symlink",
    "symlinkat",
    "truncate",
    "ftruncate",
    "utimensat",
    "futimens",
    "creat",
];

/// Open flags that make an `open`/`openat` a write.
const WRITE_FLAGS: &[&str] = &[
    "O_WRONLY",
    "O_RDWR",
    "O_CREAT",
    "O_TRUNC",
    "O_APPEND",
    "O_TMPFILE",
];

/// `OpenOptions` switches that make an open a write, when passed `true`.
const OPEN_WRITE_OPTIONS: &[&str] = &["write", "append", "create", "create_new", "truncate"];

/// Methods that change a file through a handle.
const METHOD_WRITERS: &[&str] = &["set_len", "set_permissions", "set_times", "set_modified"];

/// Every file-writing call in the code of `src` outside `#[cfg(test)]` items: (line, what),
/// at most one per line.
fn file_writes(src: &str) -> Vec<(usize, String)> {
    let toks = lex(src);
    let test = test_parts(&toks);
    if test.whole {
        return Vec::new();
    }
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut push = |line: usize, what: String| {
        if !out.iter().any(|(l, _)| *l == line) {
            out.push((line, what));
        }
    };
    let path_sep = |k: usize| {
        toks.get(k).is_some_and(|t| t.punct(':')) && toks.get(k + 1).is_some_and(|t| t.punct(':'))
    };
    let mut i = 0;
    while i < toks.len() {
        if test.mask[i] {
            i += 1;
            continue;
        }
        let t = &toks[i];
        let next_is_call = toks.get(i + 1).is_some_and(|n| n.punct('('));
        let after_dot = i > 0 && toks[i - 1].punct('.');
        if t.ident("use") {
            // `use std::fs::{write, …}`: the call would then be a bare `write(…)`.
            let end = (i..toks.len())
                .find(|&k| toks[k].punct(';'))
                .unwrap_or(toks.len());
            let stmt = &toks[i..end];
            if let Some(fs) = stmt.iter().position(|x| x.ident("fs")) {
                for x in &stmt[fs + 1..] {
                    if x.kind == Kind::Ident && FS_WRITERS.contains(&x.text.as_str()) {
                        push(x.line, format!("imports `fs::{}`", x.text));
                    }
                }
            }
            i = end;
            continue;
        }
        if t.ident("fs")
            && path_sep(i + 1)
            && let Some(f) = toks.get(i + 3)
            && f.kind == Kind::Ident
            && FS_WRITERS.contains(&f.text.as_str())
        {
            push(t.line, format!("`fs::{}`", f.text));
        } else if t.ident("File")
            && path_sep(i + 1)
            && let Some(f) = toks.get(i + 3)
            && (f.ident("create") || f.ident("create_new"))
        {
            push(t.line, format!("`File::{}`", f.text));
        } else if t.ident("DirBuilder") {
            push(t.line, "`DirBuilder`".into());
        } else if (t.ident("UnixListener") || t.ident("UnixDatagram"))
            && path_sep(i + 1)
            && toks.get(i + 3).is_some_and(|f| f.ident("bind"))
        {
            push(
                t.line,
                format!("`{}::bind`, which creates a socket file", t.text),
            );
        } else if t.kind == Kind::Ident && WRITE_FLAGS.contains(&t.text.as_str()) {
            push(t.line, format!("an open with `{}`", t.text));
        } else if after_dot
            && next_is_call
            && OPEN_WRITE_OPTIONS.contains(&t.text.as_str())
            && toks.get(i + 2).is_some_and(|a| a.ident("true"))
            && toks.get(i + 3).is_some_and(|a| a.punct(')'))
        {
            push(t.line, format!("an open with `.{}(true)`", t.text));
        } else if after_dot && next_is_call && METHOD_WRITERS.contains(&t.text.as_str()) {
            push(t.line, format!("`.{}(…)`", t.text));
        } else if t.kind == Kind::Ident
            && next_is_call
            && !after_dot
            && !(i > 0 && toks[i - 1].ident("fn"))
            && CALL_WRITERS.contains(&t.text.as_str())
        {
            push(t.line, format!("`{}(…)`", t.text));
        }
        i += 1;
    }
    out
}

/// An entry of the writers list: a file, or a directory ending in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Writer {
    path: String,
    line: usize,
}

/// The writers list of `ARCHITECTURE.md`: `Err` says why there is none.
fn writers_list(arch: &str) -> std::result::Result<Vec<Writer>, String> {
    marked_list(arch, WRITERS_BEGIN, WRITERS_END)
}

/// The admin-writers list of `ARCHITECTURE.md`: empty when there is no such section; `Err` says
/// what is wrong with one that is there.
fn admin_writers_list(arch: &str) -> std::result::Result<Vec<Writer>, String> {
    let norm = |s: &str| s.split_whitespace().collect::<String>();
    if !arch.lines().any(|l| norm(l) == norm(ADMIN_WRITERS_BEGIN)) {
        return Ok(Vec::new());
    }
    marked_list(arch, ADMIN_WRITERS_BEGIN, ADMIN_WRITERS_END)
}

/// The files listed between the lines `begin_marker` and `end_marker`: `Err` says why there are
/// none.
fn marked_list(
    arch: &str,
    begin_marker: &str,
    end_marker: &str,
) -> std::result::Result<Vec<Writer>, String> {
    let lines: Vec<&str> = arch.lines().collect();
    let norm = |s: &str| s.split_whitespace().collect::<String>();
    let begin = lines
        .iter()
        .position(|l| norm(l) == norm(begin_marker))
        .ok_or_else(|| format!("no `{begin_marker}` marker"))?;
    let end = lines[begin..]
        .iter()
        .position(|l| norm(l) == norm(end_marker))
        .map(|k| begin + k)
        .ok_or_else(|| format!("`{begin_marker}` without a closing `{end_marker}`"))?;
    let region = lines[begin + 1..end].join("\n");
    let mut out = Vec::new();
    for table in tables(&region) {
        for row in &table.rows {
            if let Some(p) = row.cells.first().and_then(|c| first_code(c)) {
                out.push(Writer {
                    path: p,
                    line: begin + 1 + row.line,
                });
            }
        }
    }
    for (k, l) in lines[begin + 1..end].iter().enumerate() {
        let t = l.trim_start();
        if (t.starts_with("- ") || t.starts_with("* "))
            && let Some(p) = first_code(t)
        {
            out.push(Writer {
                path: p,
                line: begin + 2 + k,
            });
        }
    }
    if out.is_empty() {
        return Err(format!(
            "the `{begin_marker}` section names no file (a table whose first column holds \
             `` `CRATE/src/FILE.rs` ``, or list items starting with one)"
        ));
    }
    Ok(out)
}

fn writer_allows(w: &Writer, file: &str) -> bool {
    if w.path.ends_with('/') {
        file.starts_with(w.path.as_str())
    } else {
        file == w.path
    }
}

fn check_writes(ws: &Workspace, arch: &Doc) -> Vec<Problem> {
    let mut problems = Vec::new();
    let privileged_dir = ws.member(PRIVILEGED_CRATE).map(|m| format!("{}/", m.dir));
    let cli_dir = ws.member(CLI_CRATE).map(|m| format!("{}/", m.dir));
    let (writers, admin) = match arch {
        Err(p) => {
            problems.push(p.clone());
            (Vec::new(), Vec::new())
        }
        Ok(text) => {
            let writers = writers_list(text).unwrap_or_else(|why| {
                problems.push(Problem::file(
                    ARCHITECTURE,
                    format!(
                        "{why}: list the files that may write between `{WRITERS_BEGIN}` and \
                         `{WRITERS_END}` (see xtask/src/tidy.rs)"
                    ),
                ));
                Vec::new()
            });
            let admin = admin_writers_list(text).unwrap_or_else(|why| {
                problems.push(Problem::file(
                    ARCHITECTURE,
                    format!(
                        "{why}: list the files of `{CLI_CRATE}` that write when an admin runs \
                         them as root between `{ADMIN_WRITERS_BEGIN}` and \
                         `{ADMIN_WRITERS_END}`, or drop the markers (see xtask/src/tidy.rs)"
                    ),
                ));
                Vec::new()
            });
            (writers, admin)
        }
    };
    let list_where = format!("the writers list of {ARCHITECTURE}");
    let admin_where = format!("the admin-writers list of {ARCHITECTURE}");
    let only_helper = format!("only `{PRIVILEGED_CRATE}` may write files");
    let only_admin =
        format!("it lists files of `{CLI_CRATE}` that write when an admin runs them as root");
    for (list, name, dir, owner, rule) in [
        (
            &writers,
            "writers list",
            &privileged_dir,
            "the privileged helper",
            &only_helper,
        ),
        (
            &admin,
            "admin-writers list",
            &cli_dir,
            "the CLI",
            &only_admin,
        ),
    ] {
        for w in list {
            if !ws.abs(&w.path).exists() {
                problems.push(Problem::at(
                    ARCHITECTURE,
                    w.line,
                    format!("{name} names `{}`, which does not exist", w.path),
                ));
            }
            match dir {
                Some(d) if w.path.starts_with(d.as_str()) => {}
                _ => problems.push(Problem::at(
                    ARCHITECTURE,
                    w.line,
                    format!(
                        "{name} names `{}`, outside {owner} ({}): {rule}",
                        w.path,
                        dir.as_deref().unwrap_or("not a workspace member")
                    ),
                )),
            }
        }
    }
    let mut used = vec![false; writers.len()];
    let mut admin_used = vec![false; admin.len()];
    for m in ws
        .members
        .iter()
        .filter(|m| !WRITE_EXEMPT.contains(&m.name.as_str()))
    {
        let test_only = test_only_paths(ws, m);
        let privileged = m.name == PRIVILEGED_CRATE;
        let cli = m.name == CLI_CRATE;
        for file in ws.src_files(m) {
            if is_under_any(&file, &test_only) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(ws.abs(&file)) else {
                problems.push(Problem::file(&file, "cannot read it"));
                continue;
            };
            let writes = file_writes(&text);
            if writes.is_empty() {
                continue;
            }
            let (list, marks): (&[Writer], &mut Vec<bool>) = if privileged {
                (&writers, &mut used)
            } else if cli {
                (&admin, &mut admin_used)
            } else {
                (&[], &mut Vec::new())
            };
            let listed: Vec<usize> = (0..list.len())
                .filter(|&k| writer_allows(&list[k], &file))
                .collect();
            if !listed.is_empty() {
                listed.iter().for_each(|&k| marks[k] = true);
                continue;
            }
            for (line, what) in writes {
                let msg = if privileged {
                    format!(
                        "writes a file ({what}), but {file} is not in {list_where}: add it there \
                         with what it writes, or move the write into a listed file"
                    )
                } else if cli {
                    format!(
                        "writes a file ({what}): `{CLI_CRATE}` holds no privilege and writes \
                         stdout and stderr only, besides the files of {admin_where} (writes an \
                         admin runs as root); add {file} there with what it writes, or drop \
                         the write"
                    )
                } else {
                    format!(
                        "writes a file ({what}): only `{PRIVILEGED_CRATE}` writes files, in the \
                         files of {list_where}; `{}` holds no privilege and may write stdout and \
                         stderr only",
                        m.name
                    )
                };
                problems.push(Problem::at(&file, line, msg));
            }
        }
    }
    for (list, marks, name) in [
        (&writers, &used, "writers list"),
        (&admin, &admin_used, "admin-writers list"),
    ] {
        for (k, w) in list.iter().enumerate() {
            if !marks[k] && ws.abs(&w.path).exists() {
                problems.push(Problem::at(
                    ARCHITECTURE,
                    w.line,
                    format!(
                        "{name} names `{}`, but tidy finds no file write in its production \
                         code: drop the entry",
                        w.path
                    ),
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Markdown

/// A markdown table: its header cells, its rows, and the heading it sits under.
#[derive(Debug, Clone)]
struct Table {
    heading: String,
    /// 1-based line of the header row.
    line: usize,
    header: Vec<String>,
    rows: Vec<Row>,
}

#[derive(Debug, Clone)]
struct Row {
    /// 1-based line.
    line: usize,
    cells: Vec<String>,
}

impl Table {
    fn column(&self, name: &str) -> Option<usize> {
        self.header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
    }
}

/// `| a | `b|c` | d |` → `["a", "`b|c`", "d"]` (pipes in code spans and `\|` stay in the cell).
fn split_row(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut in_code = false;
    let mut prev = '\0';
    for ch in t.chars() {
        if ch == '`' {
            in_code = !in_code;
        }
        if ch == '|' && !in_code && prev != '\\' {
            cells.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(ch);
        }
        prev = ch;
    }
    cells.push(cur.trim().to_string());
    cells
}

fn is_separator_row(line: &str) -> bool {
    let t = line.trim();
    t.starts_with('|') && t.contains('-') && t.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

/// Every table of `md` (outside code fences).
fn tables(md: &str) -> Vec<Table> {
    let mut out: Vec<Table> = Vec::new();
    let mut heading = String::new();
    let mut fence = false;
    let mut current: Option<Table> = None;
    let lines: Vec<&str> = md.lines().collect();
    for (k, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = !fence;
        }
        let is_row = !fence && t.starts_with('|');
        if !is_row {
            out.extend(current.take());
            if !fence && t.starts_with('#') {
                heading = t.trim_start_matches('#').trim().to_string();
            }
            continue;
        }
        match &mut current {
            Some(table) => {
                if !is_separator_row(line) {
                    table.rows.push(Row {
                        line: k + 1,
                        cells: split_row(line),
                    });
                }
            }
            None => {
                if lines.get(k + 1).is_some_and(|n| is_separator_row(n)) {
                    current = Some(Table {
                        heading: heading.clone(),
                        line: k + 1,
                        header: split_row(line),
                        rows: Vec::new(),
                    });
                }
            }
        }
    }
    out.extend(current);
    out
}

/// The first `` `code` `` span of `s`.
fn first_code(s: &str) -> Option<String> {
    let (_, rest) = s.split_once('`')?;
    let (code, _) = rest.split_once('`')?;
    let code = code.trim();
    (!code.is_empty()).then(|| code.to_string())
}

// ---------------------------------------------------------------------------------------------
// 3. The code map

/// A crate row of the code map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CrateRow {
    name: Option<String>,
    /// Without the trailing slash.
    path: String,
    line: usize,
}

/// A module table: the directory named by its heading and its rows (module name, line).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModuleTable {
    /// Like `helper/src`, without the trailing slash; `None` if the heading names none.
    dir: Option<String>,
    line: usize,
    modules: Vec<(String, usize)>,
}

fn code_map(arch: &str) -> (Vec<CrateRow>, Vec<ModuleTable>) {
    let mut crates = Vec::new();
    let mut modules = Vec::new();
    for table in tables(arch) {
        if let Some(pc) = table.column("path") {
            let nc = table.column("crate");
            for row in &table.rows {
                let Some(path) = row.cells.get(pc).and_then(|c| first_code(c)) else {
                    continue;
                };
                crates.push(CrateRow {
                    name: nc
                        .and_then(|c| row.cells.get(c))
                        .and_then(|c| first_code(c)),
                    path: path.trim_end_matches('/').to_string(),
                    line: row.line,
                });
            }
        } else if table.column("module") == Some(0) {
            let dir = table
                .heading
                .split('`')
                .skip(1)
                .step_by(2)
                .find(|c| c.trim_end_matches('/').ends_with("/src"))
                .map(|c| c.trim_end_matches('/').to_string());
            modules.push(ModuleTable {
                dir,
                line: table.line,
                modules: table
                    .rows
                    .iter()
                    .filter_map(|r| {
                        let m = first_code(r.cells.first()?)?;
                        Some((m.trim_end_matches('/').to_string(), r.line))
                    })
                    .collect(),
            });
        }
    }
    (crates, modules)
}

/// The modules of a `src/` directory on disk: `*.rs` files and directories holding `.rs` files,
/// crate roots, `mod.rs`, `bin/` and test-only modules aside.
fn disk_modules(ws: &Workspace, dir: &str, test_only: &BTreeSet<String>) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(ws.abs(dir)) else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{dir}/{name}");
        if name.starts_with('.') {
            continue;
        }
        if e.path().is_dir() {
            let mut has_rs = false;
            walk(&ws.root, &rel, &mut |f| has_rs |= f.ends_with(".rs"));
            if has_rs && name != "bin" && !is_under_any(&format!("{rel}/"), test_only) {
                out.insert(name);
            }
        } else if let Some(stem) = name.strip_suffix(".rs")
            && !matches!(stem, "lib" | "main" | "mod")
            && !is_under_any(&rel, test_only)
        {
            out.insert(stem.to_string());
        }
    }
    out.into_iter().collect()
}

fn check_code_map(ws: &Workspace, arch: &Doc) -> Vec<Problem> {
    let text = match arch {
        Ok(t) => t,
        Err(p) => return vec![p.clone()],
    };
    let mut problems = Vec::new();
    let (crates, module_tables) = code_map(text);
    if crates.is_empty() {
        problems.push(Problem::file(
            ARCHITECTURE,
            "no code map: a table with a `path` column (`` `helper/` ``) naming every crate",
        ));
    }
    for m in &ws.members {
        match crates.iter().find(|c| c.path == m.dir) {
            None => problems.push(Problem::file(
                ARCHITECTURE,
                format!(
                    "workspace member `{}/` (crate `{}`) is missing from the code map",
                    m.dir, m.name
                ),
            )),
            Some(row) => {
                if let Some(n) = &row.name
                    && *n != m.name
                {
                    problems.push(Problem::at(
                        ARCHITECTURE,
                        row.line,
                        format!(
                            "the code map calls `{}/` `{n}`, but its Cargo.toml names it `{}`",
                            m.dir, m.name
                        ),
                    ));
                }
            }
        }
    }
    for c in &crates {
        if !ws.abs(&c.path).exists() {
            problems.push(Problem::at(
                ARCHITECTURE,
                c.line,
                format!("the code map names `{}/`, which does not exist", c.path),
            ));
        } else if c.name.is_some() && !ws.members.iter().any(|m| m.dir == c.path) {
            problems.push(Problem::at(
                ARCHITECTURE,
                c.line,
                format!(
                    "the code map names crate `{}` at `{}/`, which is not a workspace member",
                    c.name.as_deref().unwrap_or_default(),
                    c.path
                ),
            ));
        }
    }
    let helper_src = ws
        .member(PRIVILEGED_CRATE)
        .map(|m| format!("{}/src", m.dir));
    if let Some(h) = &helper_src
        && !module_tables
            .iter()
            .any(|t| t.dir.as_deref() == Some(h.as_str()))
    {
        problems.push(Problem::file(
            ARCHITECTURE,
            format!(
                "no table of the helper's modules: a table whose first column is `module`, under \
                 a heading naming `{h}/`"
            ),
        ));
    }
    for t in &module_tables {
        let Some(dir) = &t.dir else {
            problems.push(Problem::at(
                ARCHITECTURE,
                t.line,
                "a `module` table under a heading that names no `` `CRATE/src/` `` directory",
            ));
            continue;
        };
        let Some(m) = ws.members.iter().find(|m| {
            dir == &format!("{}/src", m.dir) || dir.starts_with(&format!("{}/src/", m.dir))
        }) else {
            problems.push(Problem::at(
                ARCHITECTURE,
                t.line,
                format!("a `module` table for `{dir}/`, which is in no workspace member"),
            ));
            continue;
        };
        let test_only = test_only_paths(ws, m);
        let on_disk = disk_modules(ws, dir, &test_only);
        for name in &on_disk {
            if !t.modules.iter().any(|(n, _)| n == name) {
                let what = if ws.abs(&format!("{dir}/{name}")).is_dir() {
                    format!("{dir}/{name}/")
                } else {
                    format!("{dir}/{name}.rs")
                };
                problems.push(Problem::at(
                    ARCHITECTURE,
                    t.line,
                    format!("module `{name}` ({what}) is missing from this table of `{dir}/`"),
                ));
            }
        }
        for (name, line) in &t.modules {
            let file = ws.abs(&format!("{dir}/{name}.rs"));
            let sub = ws.abs(&format!("{dir}/{name}"));
            if !file.is_file() && !sub.is_dir() {
                problems.push(Problem::at(
                    ARCHITECTURE,
                    *line,
                    format!("module `{name}` names nothing in `{dir}/` (no {name}.rs, no {name}/)"),
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// 4. Exit codes

/// One exit code: its number, its meaning, and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExitEntry {
    code: u32,
    text: String,
    line: usize,
}

/// The CLI's table: lines `  N  meaning`, continued by more deeply indented lines.
fn parse_help_codes(lines: &[(String, usize)]) -> Vec<ExitEntry> {
    let mut out: Vec<ExitEntry> = Vec::new();
    let mut open = false;
    for (l, line) in lines {
        let t = l.trim_start();
        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
        let rest = &t[digits.len()..];
        if !digits.is_empty() && rest.starts_with(char::is_whitespace) {
            out.push(ExitEntry {
                code: digits.parse().unwrap_or(u32::MAX),
                text: rest.trim().to_string(),
                line: *line,
            });
            open = true;
        } else if open && l.starts_with(char::is_whitespace) && !t.is_empty() {
            let e = out.last_mut().expect("open");
            e.text.push(' ');
            e.text.push_str(t);
        } else {
            open = false;
        }
    }
    out
}

/// README's `Exit codes: 0 ok, 1 …, 9 ….` paragraph: its line and entries.
fn parse_readme_codes(md: &str) -> Option<(usize, Vec<ExitEntry>)> {
    const LEAD: &str = "Exit codes:";
    let lines: Vec<&str> = md.lines().collect();
    let mut fence = false;
    let mut start = None;
    for (k, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if t.starts_with("```") {
            fence = !fence;
        }
        if !fence && t.starts_with(LEAD) {
            start = Some(k);
            break;
        }
    }
    let start = start?;
    // The paragraph, with each character's line.
    let mut chars: Vec<(char, usize)> = Vec::new();
    for (k, l) in lines.iter().enumerate().skip(start) {
        if l.trim().is_empty() {
            break;
        }
        let t = if k == start {
            l.trim_start().strip_prefix(LEAD).unwrap_or(l)
        } else {
            l.trim()
        };
        if !chars.is_empty() {
            chars.push((' ', k + 1));
        }
        chars.extend(t.chars().map(|c| (c, k + 1)));
    }
    // Up to the first sentence end outside parentheses and code spans.
    let mut depth = 0i32;
    let mut code = false;
    let mut end = chars.len();
    for (i, &(c, _)) in chars.iter().enumerate() {
        match c {
            '`' => code = !code,
            '(' if !code => depth += 1,
            ')' if !code => depth -= 1,
            '.' if !code
                && depth == 0
                && chars.get(i + 1).is_none_or(|&(n, _)| n.is_whitespace()) =>
            {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let chars = &chars[..end];
    // Split at `, N ` outside parentheses and code spans.
    let starts_entry = |i: usize| {
        let digits = chars[i..]
            .iter()
            .take_while(|(c, _)| c.is_ascii_digit())
            .count();
        digits > 0 && chars.get(i + digits).is_some_and(|(c, _)| *c == ' ')
    };
    let mut segments: Vec<Vec<(char, usize)>> = vec![Vec::new()];
    let (mut depth, mut code) = (0i32, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].0;
        match c {
            '`' => code = !code,
            '(' if !code => depth += 1,
            ')' if !code => depth -= 1,
            _ => {}
        }
        if c == ',' && !code && depth == 0 {
            let mut j = i + 1;
            while chars.get(j).is_some_and(|(c, _)| *c == ' ') {
                j += 1;
            }
            if j < chars.len() && starts_entry(j) {
                segments.push(Vec::new());
                i = j;
                continue;
            }
        }
        segments.last_mut().expect("one").push(chars[i]);
        i += 1;
    }
    let mut entries = Vec::new();
    for seg in segments {
        let first = seg.iter().position(|(c, _)| !c.is_whitespace());
        let Some(first) = first else { continue };
        let text: String = seg[first..].iter().map(|(c, _)| *c).collect();
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            continue;
        }
        entries.push(ExitEntry {
            code: digits.parse().unwrap_or(u32::MAX),
            text: text[digits.len()..].trim().to_string(),
            line: seg[first].1,
        });
    }
    Some((start + 1, entries))
}

/// Words that carry no meaning in an exit code's description.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "be", "or", "and", "of", "to", "by", "with", "for", "in", "on",
    "at", "it", "its", "as", "this", "that",
];

/// Lower case words (letters, digits, inner `-`), stopwords aside.
fn meaning_words(s: &str) -> BTreeSet<String> {
    s.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .map(|w| w.trim_matches('-'))
        .filter(|w| !w.is_empty() && !STOPWORDS.contains(w))
        .map(str::to_string)
        .collect()
}

/// README entries against the CLI's: the same numbers once each, and each README meaning's
/// words all in the CLI's text for that number.
fn compare_exit_codes(
    readme: &[ExitEntry],
    readme_file: &str,
    cli: &[ExitEntry],
    cli_file: &str,
) -> Vec<Problem> {
    fn by_code<'e>(
        entries: &'e [ExitEntry],
        file: &str,
        problems: &mut Vec<Problem>,
    ) -> BTreeMap<u32, &'e ExitEntry> {
        let mut map = BTreeMap::new();
        for e in entries {
            if map.insert(e.code, e).is_some() {
                problems.push(Problem::at(
                    file,
                    e.line,
                    format!("exit code {} listed twice", e.code),
                ));
            }
        }
        map
    }
    let mut problems = Vec::new();
    let r = by_code(readme, readme_file, &mut problems);
    let c = by_code(cli, cli_file, &mut problems);
    for (code, e) in &r {
        match c.get(code) {
            None => problems.push(Problem::at(
                readme_file,
                e.line,
                format!(
                    "exit code {code} (\"{}\") is not in the CLI's `{EXIT_HELP_CONST}` ({cli_file})",
                    e.text
                ),
            )),
            Some(ce) => {
                let cw = meaning_words(&ce.text);
                let missing: Vec<String> = meaning_words(&e.text)
                    .into_iter()
                    .filter(|w| !cw.contains(w))
                    .collect();
                if meaning_words(&e.text).is_empty() {
                    problems.push(Problem::at(
                        readme_file,
                        e.line,
                        format!("exit code {code} has no meaning"),
                    ));
                } else if !missing.is_empty() {
                    problems.push(Problem::at(
                        readme_file,
                        e.line,
                        format!(
                            "exit code {code} says \"{}\", but the CLI ({cli_file}:{}) says \"{}\": \
                             {} not in the CLI's words; use its words",
                            e.text,
                            ce.line,
                            ce.text,
                            missing
                                .iter()
                                .map(|w| format!("\"{w}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
    }
    for (code, e) in &c {
        if !r.contains_key(code) {
            problems.push(Problem::at(
                cli_file,
                e.line,
                format!(
                    "exit code {code} (\"{}\") is missing from {readme_file}'s `Exit codes:` line",
                    e.text
                ),
            ));
        }
    }
    problems
}

/// `EXIT_STATUS_HELP` anywhere under the CLI's `src/`: (file, its lines with source lines).
fn find_exit_help(ws: &Workspace) -> std::result::Result<(String, Vec<(String, usize)>), Problem> {
    let Some(cli) = ws.member(CLI_CRATE) else {
        return Err(Problem::file(
            "Cargo.toml",
            format!("no workspace member named `{CLI_CRATE}` (the CLI)"),
        ));
    };
    let mut found = Vec::new();
    for file in ws.src_files(cli) {
        let Ok(text) = std::fs::read_to_string(ws.abs(&file)) else {
            continue;
        };
        if !text.contains(EXIT_HELP_CONST) {
            continue;
        }
        let toks = lex(&text);
        for (i, t) in toks.iter().enumerate() {
            if t.ident(EXIT_HELP_CONST)
                && i > 0
                && (toks[i - 1].ident("const") || toks[i - 1].ident("static"))
            {
                let value = toks[i..]
                    .iter()
                    .take_while(|x| !x.punct(';'))
                    .find(|x| x.kind == Kind::Str)
                    .and_then(string_value);
                match value {
                    Some(v) => found.push((file.clone(), t.line, v)),
                    None => {
                        return Err(Problem::at(
                            &file,
                            t.line,
                            format!("`{EXIT_HELP_CONST}` is not a plain string literal"),
                        ));
                    }
                }
            }
        }
    }
    match found.len() {
        1 => {
            let (file, _, v) = found.pop().expect("one");
            Ok((file, v))
        }
        0 => Err(Problem::file(
            &format!("{}/src", cli.dir),
            format!("no `const {EXIT_HELP_CONST}: &str` under it"),
        )),
        _ => Err(Problem::at(
            &found[1].0,
            found[1].1,
            format!(
                "a second `{EXIT_HELP_CONST}` (the first: {}:{})",
                found[0].0, found[0].1
            ),
        )),
    }
}

fn check_exit_codes(ws: &Workspace, readme: &Doc) -> Vec<Problem> {
    let text = match readme {
        Ok(t) => t,
        Err(p) => return vec![p.clone()],
    };
    let (cli_file, help) = match find_exit_help(ws) {
        Ok(v) => v,
        Err(p) => return vec![p],
    };
    let cli = parse_help_codes(&help);
    if cli.is_empty() {
        return vec![Problem::file(
            &cli_file,
            format!("`{EXIT_HELP_CONST}` has no `  N  meaning` lines"),
        )];
    }
    let Some((_, entries)) = parse_readme_codes(text) else {
        return vec![Problem::file(
            README,
            "no paragraph starting `Exit codes:` (`Exit codes: 0 success, 1 …`)",
        )];
    };
    compare_exit_codes(&entries, README, &cli, &cli_file)
}

// ---------------------------------------------------------------------------------------------
// 5. The helper's dependencies

/// `cargo tree --prefix none` output → the distinct crates (`name vX (path)` lines, `(*)` off).
fn tree_crates(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .map(|l| l.trim())
        .map(|l| l.strip_suffix(" (*)").unwrap_or(l).to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The problems, and the count if `cargo tree` ran.
fn check_helper_deps(ws: &Workspace) -> (Vec<Problem>, Option<usize>) {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ws.root).args([
        "tree",
        "-p",
        PRIVILEGED_CRATE,
        "-e",
        "normal",
        "--prefix",
        "none",
    ]);
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return (
                vec![Problem::file(
                    "Cargo.toml",
                    format!(
                        "`{}` failed ({}): {}",
                        display(&cmd),
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                )],
                None,
            );
        }
        Err(e) => {
            return (
                vec![Problem::file(
                    "Cargo.toml",
                    format!("cannot run `{}`: {e}", display(&cmd)),
                )],
                None,
            );
        }
    };
    let crates = tree_crates(&String::from_utf8_lossy(&out.stdout));
    let manifest = ws
        .member(PRIVILEGED_CRATE)
        .map_or("Cargo.toml".to_string(), |m| {
            format!("{}/Cargo.toml", m.dir)
        });
    let problems = if crates.len() > MAX_HELPER_DEPS {
        vec![Problem::file(
            &manifest,
            format!(
                "{} crates in `{}`, more than {MAX_HELPER_DEPS}: drop a dependency or a feature \
                 (the helper runs as root): {}",
                crates.len(),
                display(&cmd),
                crates.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        )]
    } else {
        Vec::new()
    };
    (problems, Some(crates.len()))
}

// ---------------------------------------------------------------------------------------------
// 6. Links

/// A link target found in markdown, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    target: String,
    line: usize,
}

/// The targets of inline links (`[t](x)`, `![t](x)`) and reference definitions (`[t]: x`),
/// outside code fences and code spans.
fn md_links(md: &str) -> Vec<Link> {
    let mut out = Vec::new();
    let mut fence = false;
    for (k, line) in md.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        // Code spans blanked out, positions kept.
        let mut in_code = false;
        let masked: Vec<char> = line
            .chars()
            .map(|c| {
                if c == '`' {
                    in_code = !in_code;
                    '_'
                } else if in_code {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let s: String = masked.iter().collect();
        // Reference definitions.
        let st = s.trim_start();
        if st.starts_with('[')
            && let Some(close) = st.find("]:")
            && close > 1
            && !st[1..close].contains(['[', ']'])
        {
            let target = st[close + 2..].split_whitespace().next().unwrap_or("");
            if !target.is_empty() {
                out.push(Link {
                    target: target.trim_matches(['<', '>']).to_string(),
                    line: k + 1,
                });
            }
        }
        let mut from = 0;
        while let Some(p) = s[from..].find("](") {
            let open = from + p + 2;
            let mut depth = 1;
            let mut end = None;
            for (j, c) in s[open..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(open + j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { break };
            // The target from the original line (a code span cannot sit in a destination).
            let orig: String = line
                .chars()
                .skip(s[..open].chars().count())
                .take(s[open..end].chars().count())
                .collect();
            let target = orig.trim();
            let target = if let Some(rest) = target.strip_prefix('<') {
                rest.split('>').next().unwrap_or("")
            } else {
                target.split_whitespace().next().unwrap_or("")
            };
            if !target.is_empty() {
                out.push(Link {
                    target: target.to_string(),
                    line: k + 1,
                });
            }
            from = end + 1;
        }
    }
    out
}

/// Where a relative link from `doc` (relative to the root) leads: `Ok(path)` relative to the
/// root, `Err` if it leaves the repository; `None` for external links and bare anchors.
fn resolve_link(doc: &str, target: &str) -> Option<std::result::Result<String, ()>> {
    if target.starts_with('#') || target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let path = target.split(['#', '?']).next().unwrap_or("");
    if path.is_empty() {
        return None;
    }
    if path.starts_with('/') {
        return Some(Err(()));
    }
    let mut parts: Vec<&str> = doc.split('/').collect();
    parts.pop(); // the document itself
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Some(Err(()));
                }
            }
            s => parts.push(s),
        }
    }
    Some(Ok(parts.join("/")))
}

fn check_links(ws: &Workspace) -> Vec<Problem> {
    let mut docs: Vec<String> = Vec::new();
    let mut top: Vec<String> = std::fs::read_dir(&ws.root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    top.sort();
    docs.extend(top);
    walk(&ws.root, "docs", &mut |f| {
        if f.ends_with(".md") {
            docs.push(f.to_string());
        }
    });
    for m in &ws.members {
        walk(&ws.root, &m.dir, &mut |f| {
            if f.ends_with(".md") && !docs.iter().any(|d| d == f) {
                docs.push(f.to_string());
            }
        });
    }
    let mut problems = Vec::new();
    for doc in docs {
        let Ok(text) = std::fs::read_to_string(ws.abs(&doc)) else {
            problems.push(Problem::file(&doc, "cannot read it"));
            continue;
        };
        for link in md_links(&text) {
            match resolve_link(&doc, &link.target) {
                Some(Err(())) => problems.push(Problem::at(
                    &doc,
                    link.line,
                    format!(
                        "links to `{}`, outside the repository: a reader of this repository \
                         alone cannot follow it; link inside it or drop the link",
                        link.target
                    ),
                )),
                Some(Ok(path)) if !ws.abs(&path).exists() => problems.push(Problem::at(
                    &doc,
                    link.line,
                    format!("links to `{}`, but `{path}` does not exist", link.target),
                )),
                None | Some(Ok(_)) => {}
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[(&str, usize)]) -> Vec<(String, usize)> {
        v.iter().map(|(s, l)| (s.to_string(), *l)).collect()
    }

    #[test]
    fn unsafe_in_code_is_found_with_its_form_and_line() {
        let src = "fn a() {\n    let x = unsafe { f() };\n}\nunsafe fn b() {}\nunsafe impl Send for S {}\n\
                   #[allow(unsafe_code)]\nmod m {}\n#[allow(dead_code, unsafe_code)]\nfn c() {}\n\
                   #[unsafe(no_mangle)]\nextern \"C\" fn d() {}\nunsafe extern \"C\" {}\n";
        let found = find_unsafe(src);
        assert_eq!(
            found,
            [
                UnsafeUse {
                    line: 2,
                    what: "an `unsafe` block"
                },
                UnsafeUse {
                    line: 4,
                    what: "an `unsafe fn`"
                },
                UnsafeUse {
                    line: 5,
                    what: "an `unsafe impl`"
                },
                UnsafeUse {
                    line: 6,
                    what: "an `allow(unsafe_code)`"
                },
                UnsafeUse {
                    line: 8,
                    what: "an `allow(unsafe_code)`"
                },
                UnsafeUse {
                    line: 10,
                    what: "an `#[unsafe(…)]` attribute"
                },
                UnsafeUse {
                    line: 12,
                    what: "an `unsafe extern` block"
                },
            ]
        );
    }

    #[test]
    fn unsafe_in_comments_strings_and_chars_is_not_code() {
        let src = r####"
//! The helper's only unsafe code: `unsafe { … }` lives in sys.rs.
/// unsafe fn in a doc comment
// unsafe { line comment }
/* unsafe { block /* nested unsafe { */ still a comment unsafe fn } */
fn f<'a>(x: &'a str) -> &'a str {
    let q = '"'; let e = '\''; let b = b'"';
    let s = "cache=unsafe, a quote \" then unsafe {";
    let r = r#"raw "unsafe {" here"#;
    let rr = r##"a "# inside unsafe fn"##;
    let bs = b"unsafe {";
    let c = c"unsafe";
    let raw_ident = r#unsafe;
    let unsafe_code_words = unsafe_op_in_unsafe_fn;
    x
}
#![deny(unsafe_code)]
#![forbid(unsafe_code)]
"####;
        assert_eq!(find_unsafe(src), []);
        // The quote in the char literal must not open a string that hides the next line.
        let src = "let q = '\"';\nunsafe { f() }\n";
        assert_eq!(find_unsafe(src).len(), 1);
        assert_eq!(find_unsafe(src)[0].line, 2);
        // A lifetime must not open a char literal.
        let src = "fn f<'a>(x: &'a u8) {}\nunsafe fn g() {}\n";
        assert_eq!(find_unsafe(src)[0].line, 2);
    }

    #[test]
    fn line_numbers_survive_multi_line_strings_and_comments() {
        let src = "let s = \"one\ntwo\nthree\";\n/* a\nb */\nlet t = r#\"x\ny\"#;\nunsafe {}\n";
        assert_eq!(find_unsafe(src)[0].line, 8);
    }

    #[test]
    fn crate_root_levels() {
        assert_eq!(
            root_unsafe_level("//! Doc.\n#![forbid(unsafe_code)]\nmod a;\n"),
            (UnsafeLevel::Forbid, false)
        );
        assert_eq!(
            root_unsafe_level("#![deny(unsafe_code)]\npub mod a;\nmod sys;\n"),
            (UnsafeLevel::Deny, true)
        );
        assert_eq!(
            root_unsafe_level("// #![forbid(unsafe_code)]\nmod system;\n"),
            (UnsafeLevel::Missing, false)
        );
    }

    #[test]
    fn cfg_test_items_and_modules_are_test_only() {
        let src = "fn prod() { fs::write(p, b) }\n#[cfg(test)]\nmod tests {\n    fn t() { fs::write(p, b); }\n}\n\
                   #[cfg(test)]\nmod more;\n#[cfg(all(test, feature = \"x\"))]\nfn helper() { fs::remove_file(p); }\n\
                   #[cfg(not(test))]\nfn real() { fs::rename(a, b); }\n";
        let toks = lex(src);
        let parts = test_parts(&toks);
        assert_eq!(parts.modules, ["more"]);
        let writes = file_writes(src);
        assert_eq!(
            writes,
            [
                (1, "`fs::write`".to_string()),
                (11, "`fs::rename`".to_string())
            ]
        );
        assert!(file_writes("#![cfg(test)]\nfn f() { fs::write(a, b); }\n").is_empty());
    }

    #[test]
    fn file_writes_are_recognised() {
        let src = "use std::fs::{self, OpenOptions};\nuse std::fs::remove_file;\n\
                   fn f() {\n\
                   OpenOptions::new()\n.write(true)\n.open(p);\n\
                   OpenOptions::new().read(true).write(false).open(p);\n\
                   let fd = openat(&dir, n, OFlag::O_WRONLY | OFlag::O_CREAT, m);\n\
                   let fd = libc::openat(d, n, libc::O_RDONLY | libc::O_NOFOLLOW);\n\
                   renameat(&d, a, &d, b);\n\
                   nix::unistd::fchownat(AT_FDCWD, p, u, g, f);\n\
                   std::fs::File::create(p);\n\
                   file.write_all(b\"x\");\n\
                   out.write(buf);\n\
                   fn chown_group_node() {}\n\
                   k.chown_group_node(8, o);\n\
                   UnixListener::bind(&tmp);\n\
                   // fs::write(p, b) in a comment\n\
                   let s = \"fs::write(\";\n\
                   }\n";
        let got: Vec<usize> = file_writes(src).into_iter().map(|(l, _)| l).collect();
        assert_eq!(got, [2, 5, 8, 10, 11, 12, 17]);
    }

    #[test]
    fn writers_list_from_the_marked_section() {
        let arch = "# A\n\n| file | writes |\n|---|---|\n| `not/this.rs` | x |\n\n\
                    <!-- tidy:writers -->\n| file | writes |\n|---|---|\n\
                    | `helper/src/sysfs/real.rs` | sysfs |\n| `helper/src/state.rs` | leases |\n\
                    - `helper/src/kernel/` everything below\n<!-- /tidy:writers -->\n";
        let w = writers_list(arch).unwrap();
        assert_eq!(
            w,
            [
                Writer {
                    path: "helper/src/sysfs/real.rs".into(),
                    line: 10
                },
                Writer {
                    path: "helper/src/state.rs".into(),
                    line: 11
                },
                Writer {
                    path: "helper/src/kernel/".into(),
                    line: 12
                },
            ]
        );
        assert!(writer_allows(&w[2], "helper/src/kernel/real.rs"));
        assert!(!writer_allows(&w[1], "helper/src/state/x.rs"));
        assert!(writers_list("no markers").is_err());
        assert!(writers_list("<!-- tidy:writers -->\n| a |\n").is_err());
    }

    #[test]
    fn the_admin_writers_list_is_optional_and_apart_from_the_writers_list() {
        let arch = "<!-- tidy:writers -->\n- `helper/src/state.rs` leases\n<!-- /tidy:writers -->\n\n\
                    <!-- tidy:admin-writers -->\n| file | writes |\n|---|---|\n\
                    | `frontend/src/cmd/boot_config/write.rs` | modprobe.d, as root |\n\
                    <!-- /tidy:admin-writers -->\n";
        let paths = |w: Vec<Writer>| w.into_iter().map(|w| w.path).collect::<Vec<_>>();
        assert_eq!(paths(writers_list(arch).unwrap()), ["helper/src/state.rs"]);
        assert_eq!(
            admin_writers_list(arch).unwrap(),
            [Writer {
                path: "frontend/src/cmd/boot_config/write.rs".into(),
                line: 8
            }]
        );
        // Absent: the CLI writes nothing. Unclosed or empty: a problem.
        assert_eq!(admin_writers_list("no markers"), Ok(Vec::new()));
        assert!(admin_writers_list("<!-- tidy:admin-writers -->\n- `a.rs`\n").is_err());
        assert!(
            admin_writers_list("<!-- tidy:admin-writers -->\n<!-- /tidy:admin-writers -->\n")
                .is_err()
        );
    }

    /// A workspace in a temporary directory, removed when dropped.
    struct TempTree(PathBuf);

    impl TempTree {
        fn new(name: &str, files: &[(&str, &str)]) -> Self {
            let root =
                std::env::temp_dir().join(format!("xtask-tidy-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for (rel, text) in files {
                let path = root.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            Self(root)
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn writes_are_checked_against_both_lists() {
        let package = |name: &str| format!("[package]\nname = \"{name}\"\n");
        let tree = TempTree::new(
            "writes",
            &[
                (
                    "Cargo.toml",
                    "[workspace]\nmembers = [\"helper\", \"frontend\", \"host\"]\n",
                ),
                ("helper/Cargo.toml", &package("vfio-gated")),
                ("frontend/Cargo.toml", &package("vfio-gate")),
                ("host/Cargo.toml", &package("vfio-gate-host")),
                ("helper/src/lib.rs", "fn f() { fs::write(a, b); }\n"),
                (
                    "frontend/src/lib.rs",
                    "mod admin;\nmod quiet;\nfn g() { fs::remove_file(x); }\n",
                ),
                ("frontend/src/admin.rs", "fn w() { fs::rename(a, b); }\n"),
                ("frontend/src/quiet.rs", "fn q() {}\n"),
                ("host/src/lib.rs", "fn h() { fs::write(a, b); }\n"),
            ],
        );
        let ws = Workspace::load(&tree.0).unwrap();
        let arch = "<!-- tidy:writers -->\n- `helper/src/lib.rs` x\n<!-- /tidy:writers -->\n\
                    <!-- tidy:admin-writers -->\n- `frontend/src/admin.rs` y\n\
                    - `frontend/src/quiet.rs` z\n- `helper/src/lib.rs` w\n\
                    <!-- /tidy:admin-writers -->\n";
        let problems: Vec<String> = check_writes(&ws, &Ok(arch.to_owned()))
            .iter()
            .map(ToString::to_string)
            .collect();
        let has = |start: &str, part: &str| {
            problems
                .iter()
                .any(|p| p.starts_with(start) && p.contains(part))
        };
        assert!(
            has(
                "ARCHITECTURE.md:7: admin-writers list names `helper/src/lib.rs`, outside the CLI",
                "that write when an admin runs them as root"
            ),
            "{problems:#?}"
        );
        assert!(
            has(
                "ARCHITECTURE.md:6: admin-writers list names `frontend/src/quiet.rs`",
                "drop the entry"
            ),
            "{problems:#?}"
        );
        assert!(
            has(
                "frontend/src/lib.rs:3: writes a file (`fs::remove_file`)",
                "admin-writers list"
            ),
            "{problems:#?}"
        );
        assert!(
            has(
                "host/src/lib.rs:1: writes a file (`fs::write`)",
                "only `vfio-gated` writes files"
            ),
            "{problems:#?}"
        );
        // The listed writers themselves are fine.
        assert!(
            !problems
                .iter()
                .any(|p| p.starts_with("frontend/src/admin.rs") || p.starts_with("helper/src")),
            "{problems:#?}"
        );
        // Without the admin section, the CLI's write is a problem like any other.
        let plain = "<!-- tidy:writers -->\n- `helper/src/lib.rs` x\n<!-- /tidy:writers -->\n";
        let problems = check_writes(&ws, &Ok(plain.to_owned()));
        assert!(
            problems.iter().any(|p| p.file == "frontend/src/admin.rs"),
            "{problems:#?}"
        );
    }

    #[test]
    fn code_map_tables() {
        let arch = "## Code map\n\n| crate | path | job |\n|---|---|---|\n\
                    | `vfio-gate-protocol` | `protocol/` | The wire: `A \\| B`. |\n\
                    | — | `dist/` | units |\n\n### Inside the helper (`helper/src/`)\n\n\
                    | module | concern |\n|---|---|\n| `sandbox` | fds |\n| `service/` | decide |\n\n\
                    ```\n| module | x |\n|---|---|\n| `fenced` | no |\n```\n";
        let (crates, modules) = code_map(arch);
        assert_eq!(
            crates,
            [
                CrateRow {
                    name: Some("vfio-gate-protocol".into()),
                    path: "protocol".into(),
                    line: 5
                },
                CrateRow {
                    name: None,
                    path: "dist".into(),
                    line: 6
                },
            ]
        );
        assert_eq!(
            modules,
            [ModuleTable {
                dir: Some("helper/src".into()),
                line: 10,
                modules: vec![("sandbox".into(), 12), ("service".into(), 13)],
            }]
        );
    }

    #[test]
    fn the_help_text_is_unescaped_with_its_lines() {
        let src = "pub const EXIT_STATUS_HELP: &str = \"\\\nExit status:\n  0  success\n  3  denied: by \
                   the policy, or\n     another user\n  9  the \\\"policy\\\" is refused\";\n";
        let toks = lex(src);
        let lit = toks.iter().find(|t| t.kind == Kind::Str).unwrap();
        let v = string_value(lit).unwrap();
        assert_eq!(
            v,
            lines(&[
                ("Exit status:", 2),
                ("  0  success", 3),
                ("  3  denied: by the policy, or", 4),
                ("     another user", 5),
                ("  9  the \"policy\" is refused", 6),
            ])
        );
        let codes = parse_help_codes(&v);
        assert_eq!(
            codes,
            [
                ExitEntry {
                    code: 0,
                    text: "success".into(),
                    line: 3
                },
                ExitEntry {
                    code: 3,
                    text: "denied: by the policy, or another user".into(),
                    line: 4
                },
                ExitEntry {
                    code: 9,
                    text: "the \"policy\" is refused".into(),
                    line: 6
                },
            ]
        );
    }

    #[test]
    fn readme_exit_codes_paragraph() {
        let md = "text\n\nExit codes: 0 success, 1 other failure, 3 denied (by the policy, or a guard), 8\n\
                  warnings (`policy check`, 2 x), 9 the policy is refused. `--json` errors, 4 no.\n";
        let (line, e) = parse_readme_codes(md).unwrap();
        assert_eq!(line, 3);
        let got: Vec<(u32, &str, usize)> = e
            .iter()
            .map(|e| (e.code, e.text.as_str(), e.line))
            .collect();
        assert_eq!(
            got,
            [
                (0, "success", 3),
                (1, "other failure", 3),
                (3, "denied (by the policy, or a guard)", 3),
                (8, "warnings (`policy check`, 2 x)", 3),
                (9, "the policy is refused", 4),
            ]
        );
        assert!(parse_readme_codes("no such line").is_none());
    }

    #[test]
    fn exit_codes_compare_by_number_and_words() {
        let e = |code, text: &str, line| ExitEntry {
            code,
            text: text.into(),
            line,
        };
        let cli = [
            e(0, "success", 10),
            e(4, "no such device", 11),
            e(6, "busy: try again", 12),
            e(7, "protocol version mismatch: different releases", 13),
        ];
        let good = [
            e(0, "success", 1),
            e(4, "no such device", 1),
            e(6, "busy (try again)", 1),
            e(7, "protocol version mismatch", 2),
        ];
        assert_eq!(compare_exit_codes(&good, "README.md", &cli, "error.rs"), []);
        let bad = [
            e(0, "ok", 1),
            e(4, "no such device", 1),
            e(6, "busy", 1),
            e(8, "x", 2),
        ];
        let p = compare_exit_codes(&bad, "README.md", &cli, "error.rs");
        let text: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("README.md:1: exit code 0 says \"ok\""),
            "{}",
            text[0]
        );
        assert!(
            text[0].contains("\"ok\" not in the CLI's words"),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("README.md:2: exit code 8"),
            "{}",
            text[1]
        );
        assert!(
            text[2].starts_with("error.rs:13: exit code 7"),
            "{}",
            text[2]
        );
        let twice = [e(0, "success", 1), e(0, "success", 2)];
        let p = compare_exit_codes(&twice, "README.md", &cli[..1], "error.rs");
        assert_eq!(p[0].to_string(), "README.md:2: exit code 0 listed twice");
    }

    #[test]
    fn cargo_tree_output_is_deduplicated() {
        let out = "vfio-gated v0.1.0 (/w/helper)\nlibc v0.2.1\nnix v0.32.0\nlibc v0.2.1 (*)\n\n\
                   bitflags v2.0.0\nbitflags v2.0.0 (*)\n";
        assert_eq!(tree_crates(out).len(), 4);
    }

    #[test]
    fn links_and_where_they_lead() {
        let md = "See [`docs/x.md`](docs/x.md#part) and [web](https://example.org) and \
                  [here](#anchor).\n[`../shared/a.md`](../shared/a.md)\n```\n[not](a/link.md)\n```\n\
                  `[also not](code.md)` ![img](img/a.png \"title\")\n[ref]: ../../up.md\n";
        let links = md_links(md);
        let got: Vec<(&str, usize)> = links.iter().map(|l| (l.target.as_str(), l.line)).collect();
        assert_eq!(
            got,
            [
                ("docs/x.md#part", 1),
                ("https://example.org", 1),
                ("#anchor", 1),
                ("../shared/a.md", 2),
                ("img/a.png", 6),
                ("../../up.md", 7),
            ]
        );
        assert_eq!(
            resolve_link("README.md", "docs/x.md#part"),
            Some(Ok("docs/x.md".into()))
        );
        assert_eq!(
            resolve_link("docs/guest.md", "../README.md"),
            Some(Ok("README.md".into()))
        );
        assert_eq!(resolve_link("README.md", "../shared/a.md"), Some(Err(())));
        assert_eq!(resolve_link("docs/a.md", "../../x.md"), Some(Err(())));
        assert_eq!(resolve_link("README.md", "/etc/passwd"), Some(Err(())));
        assert_eq!(resolve_link("README.md", "https://x.org/a"), None);
        assert_eq!(resolve_link("README.md", "#top"), None);
    }

    #[test]
    fn workspace_manifest_parsing() {
        let root = "[workspace]\nresolver = \"3\"\nmembers = [\n  \"protocol\", # the wire\n  \"helper\",\n]\n\
                    default-members = [\"protocol\"]\n";
        assert_eq!(workspace_members(root), ["protocol", "helper"]);
        let pkg = "[package]\nname = \"vfio-gated\"\n[lib]\nname = \"vfio_gated\"\npath = \"src/lib.rs\"\n\
                   [[bin]]\nname = \"vfio-gated\"\npath = \"src/main.rs\"\n[dependencies]\nnix = { path = \"x\" }\n";
        let info = package_info(pkg);
        assert_eq!(info.name.as_deref(), Some("vfio-gated"));
        assert_eq!(info.target_paths, ["src/lib.rs", "src/main.rs"]);
    }
}
