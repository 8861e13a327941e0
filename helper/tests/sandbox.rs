//! The helper's landlock ruleset on this machine's own kernel, against a temporary tree shaped
//! like sysfs (never the host's `/sys`).
//!
//! `the_ruleset_confines_a_child` re-runs this test binary as a child process that runs only
//! `sandboxed_child` (which does nothing in a normal run): the child builds the helper's grants
//! for temporary [`Roots`], applies `ruleset(&grants)` with `restrict_self`, then tries what
//! must fail and what the helper needs, printing one line per attempt. A child process, because
//! a landlock domain cannot be left: the test process itself stays unconfined.
//!
//! `VFIO_GATE_TEST_LANDLOCK_ABI=N` states the landlock ABI this machine's kernel must have at
//! least (`.ci/run` sets it for the CI machines): a kernel that silently offers less fails the
//! test instead of skipping checks. Without it, checks the kernel's ABI cannot enforce are
//! reported and skipped, and a kernel without landlock skips the test.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::symlink;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;

use landlock::{LandlockStatus, RulesetStatus};
use vfio_gated::roots::Roots;
use vfio_gated::sandbox::landlock::{grants, ruleset};

/// The temporary tree's root, for the child.
const CHILD_ENV: &str = "VFIO_GATE_SANDBOX_CHILD";
/// The landlock ABI this machine's kernel must have at least.
const ABI_ENV: &str = "VFIO_GATE_TEST_LANDLOCK_ABI";

const DEV: &str = "devices/pci0000:00/0000:00:02.0/0000:01:00.0";
const DEV2: &str = "devices/pci0000:00/0000:00:06.1";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// A tree shaped like the parts of sysfs and procfs the helper uses, plus files it must not
/// touch.
fn build_tree(root: &Path) {
    let sys = root.join("sys");
    for (dev, vendor) in [(DEV, "0x8086"), (DEV2, "0x1b36")] {
        write(&sys, &format!("{dev}/vendor"), &format!("{vendor}\n"));
        write(&sys, &format!("{dev}/driver_override"), "(null)\n");
        write(&sys, &format!("{dev}/remove"), "");
    }
    write(&sys, &format!("{DEV}/reset"), "");
    write(&sys, &format!("{DEV}/sriov_numvfs"), "0\n");
    fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
    symlink(
        format!("../../../{DEV}"),
        sys.join("bus/pci/devices/0000:01:00.0"),
    )
    .unwrap();
    symlink(
        format!("../../../{DEV2}"),
        sys.join("bus/pci/devices/0000:00:06.1"),
    )
    .unwrap();
    for f in ["bind", "unbind", "new_id"] {
        write(&sys, &format!("bus/pci/drivers/e1000e/{f}"), "");
    }
    write(&sys, "bus/pci/drivers_probe", "");
    write(&sys, "bus/pci/rescan", "");
    fs::create_dir_all(sys.join("kernel/iommu_groups/8/devices")).unwrap();
    symlink(
        format!("../../../../{DEV}"),
        sys.join("kernel/iommu_groups/8/devices/0000:01:00.0"),
    )
    .unwrap();
    write(
        root,
        "proc/self/mountinfo",
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n",
    );
    write(
        root,
        "proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
    );
    write(root, "proc/1/environ", "SECRET=1\0");
    fs::create_dir_all(root.join("state")).unwrap();
    write(root, "vfio/vfio", "");
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    write(root, "etc/group", "root:x:0:\n");
    write(root, "etc/shadow", "root:*:1::::::\n");
    fs::create_dir_all(root.join("tmp")).unwrap();
}

/// Every root in the temporary tree: the sandbox must follow each of them there.
fn roots(root: &Path) -> Roots {
    Roots {
        sys: root.join("sys"),
        proc: root.join("proc"),
        etc: root.to_owned(),
        state: root.join("state"),
        vfio: root.join("vfio"),
    }
}

#[test]
fn the_ruleset_confines_a_child() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    build_tree(tmp.path());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandboxed_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let abi: i32 = stdout
        .lines()
        // libtest may print `test sandboxed_child ... ` in front of the first line.
        .find_map(|l| l.split_once("landlock-abi ").map(|(_, n)| n))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the child reported no ABI:\n{stdout}\n{stderr}"));
    match std::env::var(ABI_ENV) {
        Ok(want) => {
            let want: i32 = want
                .parse()
                .expect("VFIO_GATE_TEST_LANDLOCK_ABI is a number");
            assert!(
                abi >= want,
                "this kernel's landlock ABI is {abi}, below the {want} that {ABI_ENV} says this machine has"
            );
        }
        Err(_) if abi == 0 => {
            eprintln!("skipping: this kernel has no landlock (set {ABI_ENV} to make that fail)");
            return;
        }
        Err(_) => {}
    }
    assert!(
        out.status.success(),
        "the sandboxed child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    for must in [
        "denied write etc/passwd: EACCES",
        "denied create in tmp: EACCES",
        "denied write sys/bus/pci/rescan: EACCES",
        "denied write sys/bus/pci/devices/0000:01:00.0/remove: EACCES",
        "denied write sys/bus/pci/devices/0000:01:00.0/reset: EACCES",
        "denied write sys/bus/pci/devices/0000:01:00.0/sriov_numvfs: EACCES",
        "denied write sys/bus/pci/drivers/e1000e/bind: EACCES",
        "denied exec /bin/sh: EACCES",
        "allowed write sys/bus/pci/devices/0000:01:00.0/driver_override",
        "allowed write sys/bus/pci/drivers/e1000e/unbind",
        "allowed write, rename, remove in state",
        "denied read etc/shadow: EACCES",
        "allowed read etc/passwd",
        "allowed read etc/group",
        "allowed read proc/self/mountinfo",
    ] {
        assert!(stdout.contains(must), "missing {must:?} in:\n{stdout}");
    }
    if abi >= 4 {
        assert!(stdout.contains("denied tcp connect"), "{stdout}");
    }
    if abi >= 6 {
        assert!(
            stdout.contains("denied signal to the parent: EPERM"),
            "{stdout}"
        );
    }
}

/// Lines the child prints; `UNEXPECTED` marks a failure.
struct Child {
    ok: bool,
}

impl Child {
    fn line(&mut self, expected: bool, text: String) {
        if !expected {
            self.ok = false;
        }
        println!("{}{text}", if expected { "" } else { "UNEXPECTED " });
    }

    fn denied(&mut self, what: &str, res: io::Result<()>, errno: i32) {
        match res {
            Err(e) if e.raw_os_error() == Some(errno) => {
                self.line(true, format!("denied {what}: {}", name(errno)))
            }
            Err(e) => self.line(
                false,
                format!("denied {what} with {e}, not {}", name(errno)),
            ),
            Ok(()) => self.line(false, format!("allowed {what}")),
        }
    }

    fn allowed(&mut self, what: &str, res: io::Result<()>) {
        match res {
            Ok(()) => self.line(true, format!("allowed {what}")),
            Err(e) => self.line(false, format!("denied {what}: {e}")),
        }
    }
}

fn name(errno: i32) -> &'static str {
    match errno {
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        _ => "another error",
    }
}

fn open_w(p: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(p).map(drop)
}

fn read(p: &Path) -> io::Result<()> {
    let mut s = String::new();
    fs::File::open(p)?.read_to_string(&mut s).map(drop)
}

/// Runs only in the child process `the_ruleset_confines_a_child` starts.
#[test]
fn sandboxed_child() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let root = Path::new(&root);
    let mut c = Child { ok: true };
    // Peers made before the domain exists: outside it.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let name_ = format!("vfio-gate-sandbox-test-{}", std::process::id());
    let _unix = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name_).unwrap()).unwrap();

    let grants = grants(&roots(root));
    let status = ruleset(&grants).unwrap().restrict_self().unwrap();
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
        _ => 0,
    };
    println!("landlock-abi {abi}");
    println!("ruleset {:?}", status.ruleset);
    if abi == 0 {
        return;
    }
    assert_ne!(status.ruleset, RulesetStatus::NotEnforced);
    let eacces = libc::EACCES;
    let p = |rel: &str| root.join(rel);

    c.denied("write etc/passwd", open_w(&p("etc/passwd")), eacces);
    c.denied("read etc/shadow", read(&p("etc/shadow")), eacces);
    c.denied(
        "create in tmp",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("tmp/x"))
            .map(drop),
        eacces,
    );
    c.denied(
        "write sys/bus/pci/rescan",
        open_w(&p("sys/bus/pci/rescan")),
        eacces,
    );
    for f in ["remove", "reset", "sriov_numvfs"] {
        let rel = format!("sys/bus/pci/devices/0000:01:00.0/{f}");
        c.denied(&format!("write {rel}"), open_w(&p(&rel)), eacces);
    }
    for f in ["bind", "new_id"] {
        let rel = format!("sys/bus/pci/drivers/e1000e/{f}");
        c.denied(&format!("write {rel}"), open_w(&p(&rel)), eacces);
    }
    c.denied("read proc/1/environ", read(&p("proc/1/environ")), eacces);
    c.denied("mkdir in state", fs::create_dir(p("state/d")), eacces);
    c.denied(
        "symlink in state",
        symlink("/etc/passwd", p("state/l")),
        eacces,
    );
    c.denied(
        "exec /bin/sh",
        Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .status()
            .map(drop),
        eacces,
    );
    let connect = TcpStream::connect(("127.0.0.1", port)).map(drop);
    if abi >= 4 {
        c.denied("tcp connect", connect, eacces);
        c.denied(
            "tcp bind",
            TcpListener::bind("127.0.0.1:0").map(drop),
            eacces,
        );
    } else {
        println!("not checked: tcp (ABI {abi} < 4)");
    }
    let unix = SocketAddr::from_abstract_name(&name_)
        .and_then(|a| UnixStream::connect_addr(&a))
        .map(drop);
    let parent = std::os::unix::process::parent_id() as libc::pid_t;
    // SAFETY: kill(2) takes plain integers; SIGCONT to a running process changes nothing.
    let rc = unsafe { libc::kill(parent, libc::SIGCONT) };
    let signal = if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    if abi >= 6 {
        c.denied(
            "abstract unix connect outside the domain",
            unix,
            libc::EPERM,
        );
        c.denied("signal to the parent", signal, libc::EPERM);
    } else {
        println!("not checked: abstract sockets, signals (ABI {abi} < 6)");
    }

    c.allowed(
        "read sys/bus/pci/devices/0000:01:00.0/vendor",
        read(&p("sys/bus/pci/devices/0000:01:00.0/vendor")),
    );
    c.allowed(
        "list sys/kernel/iommu_groups/8/devices",
        fs::read_dir(p("sys/kernel/iommu_groups/8/devices")).map(drop),
    );
    c.allowed(
        "write sys/bus/pci/devices/0000:01:00.0/driver_override",
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p("sys/bus/pci/devices/0000:01:00.0/driver_override"))
            .and_then(|mut f| f.write_all(b"vfio-pci\n")),
    );
    c.allowed(
        "write sys/bus/pci/devices/0000:00:06.1/driver_override",
        open_w(&p("sys/bus/pci/devices/0000:00:06.1/driver_override")),
    );
    c.allowed(
        "write sys/bus/pci/drivers/e1000e/unbind",
        open_w(&p("sys/bus/pci/drivers/e1000e/unbind")),
    );
    c.allowed(
        "write sys/bus/pci/drivers_probe",
        open_w(&p("sys/bus/pci/drivers_probe")),
    );
    c.allowed(
        "write, rename, remove in state",
        fs::write(p("state/.lease.tmp"), "lease\n")
            .and_then(|()| fs::rename(p("state/.lease.tmp"), p("state/group-8.lease")))
            .and_then(|()| read(&p("state/group-8.lease")))
            .and_then(|()| fs::remove_file(p("state/group-8.lease"))),
    );
    c.allowed("read proc/self/mountinfo", read(&p("proc/self/mountinfo")));
    c.allowed("read proc/swaps", read(&p("proc/swaps")));
    // The accounts under the etc root (an admin's `explain --user`), and nothing beside them.
    c.allowed("read etc/passwd", read(&p("etc/passwd")));
    c.allowed("read etc/group", read(&p("etc/group")));
    c.allowed(
        "open vfio/vfio read-write",
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p("vfio/vfio"))
            .map(drop),
    );
    assert!(
        c.ok,
        "some attempts went unexpectedly (lines marked UNEXPECTED)"
    );
}
