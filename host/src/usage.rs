//! Is the host using this PCI device right now?
//!
//! The built-in guards that no policy can override ask this before a device leaves its host
//! driver: handing away the disk under a mounted filesystem, or the NIC that carries the host's
//! network, takes the host down with it. [`HostView::usage`] lists everything below one PCI device
//! that the host is using. It reads sysfs and procfs under roots that are parameters (`/sys` and
//! `/proc` in production, fixture trees in tests) and never writes anything.
//!
//! # What is "below" a device
//!
//! `SYS/bus/pci/devices/<addr>` is a link into `SYS/devices/…`. A block device belongs to the PCI
//! device when its own directory (`SYS/class/block/<name>`, resolved) lies below that directory —
//! through an NVMe controller, a virtio bus, a SCSI host or a USB controller; partitions sit below
//! their disk. A network interface belongs to it when its `device` link resolves to that directory
//! or below it (virtio-net's points at `virtioN` below the PCI function).
//!
//! One exception: with native NVMe multipath (`nvme_core.multipath=Y`, the default of kernels
//! built with `CONFIG_NVME_MULTIPATH`, Debian's among them) the namespace disks `nvme0n1`,
//! `nvme0n1p1` live under `SYS/devices/virtual/nvme-subsystem/nvme-subsysN/`, not below the PCI
//! function; only the hidden path disk `nvme0c0n1` does. The subsystem directory links to each of
//! its controllers (`nvme0 -> …/<addr>/nvme/nvme0`), so a subsystem with a controller below the
//! PCI device counts as below it, namespaces and all. (With
//! two controllers on two PCI functions, both functions report the namespace: refusing either is
//! the safe answer.)
//!
//! # Block devices: mounted, swap, held
//!
//! For every block device below the PCI device, disks and partitions alike:
//! - **Mounted** when `PROC/self/mountinfo` has its `major:minor` (field 3) or names it as the
//!   mount source (`/dev/<name>`, or `/dev/mapper/<dm name>`). The source matters for btrfs, which
//!   reports an anonymous `0:N` in field 3. A member of a multi-device btrfs that is not the one
//!   named as the source is found through `SYS/fs/btrfs/<fsid>/devices/<name>`, a directory that
//!   exists only while that filesystem is mounted. One mount point is reported per block device:
//!   the first in mount order.
//! - **Swap** when `PROC/swaps` names `/dev/<name>` (or `/dev/mapper/<dm name>`). Matching by name
//!   is enough: the kernel prints the path of the file it opened, after following links, so
//!   `swapon /dev/disk/by-uuid/…` shows as `/dev/sda2` and `/dev/mapper/vg-swap` as `/dev/dm-1` (as
//!   long as `/dev` is the kernel's devtmpfs).
//! - **Held** when a device in its `holders/` (device-mapper: LVM, dm-crypt, multipath; md RAID;
//!   bcache) is itself in use: mounted, swap, or holding something in use, at any depth and
//!   through the holder's own partitions. A holder stack that is active but used by nothing does
//!   not count.
//!
//! # Network interfaces: up with addresses or routes
//!
//! An interface below the device is in use when its `flags` have `IFF_UP` and it has an address
//! other than a link-local one, or an IPv4 route: dpdk-devbind's `*Active*`. IPv6 addresses come
//! from `PROC/net/if_inet6` (scope `0x20`, link-local, is left out), IPv4 routes from
//! `PROC/net/route` (lines whose `Iface` is the interface; a configured IPv4 address normally
//! brings its connected route with it), and IPv4 addresses from an [`AddressSource`]: procfs lists
//! them nowhere by interface, so the real source is `getifaddrs(3)`. An interface that is up with
//! only link-local addresses and no route is **not** in use; dpdk-devbind binds it as well.
//!
//! An interface enslaved to a bridge or bond, or carrying VLANs, usually has no address itself: the
//! upper device does. Its `upper_<name>` links are followed like block holders; an upper device
//! that is in use makes the interface [`Usage::NetUpper`].
//!
//! # What this does not see
//!
//! - A block device opened without being mounted (a VM's raw disk, `dd`, an iSCSI target), an
//!   active but unused dm/md stack, and ZFS pools, whose vdevs appear in neither mountinfo nor
//!   `holders/`.
//! - Mounts that exist only in another mount namespace, and addresses and routes in another network
//!   namespace: procfs and `getifaddrs` answer for the reader's namespaces, so the helper must run
//!   in the host's network namespace (no `PrivateNetwork=` in its unit). systemd's private mount
//!   namespaces are fine: they receive the host's mounts.
//! - IPv6 routes without an address (rare; `PROC/net/ipv6_route` holds link-local and multicast
//!   routes for every interface that is up, so it cannot tell use from presence).
//!
//! # Reading untrusted trees
//!
//! Paths are built only from the roots, fixed names, a [`PciAddress`] and names taken from
//! directory listings, and those names are checked first: empty names, `/`, `..`, whitespace and
//! control characters are skipped (the kernel makes none of them). Text read out of files (mount
//! points, device-mapper names) is compared or reported, never used to build a path. Every file
//! read is bounded, and a file or directory larger than any real one is an error rather than a
//! truncated answer: a guard that errs refuses.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use vfio_gate_protocol::PciAddress;

/// Sysfs attributes are at most a page.
const MAX_ATTR: u64 = 4096;
/// Procfs tables (`mountinfo` on a container host runs to a few MiB).
const MAX_TABLE: u64 = 16 << 20;
/// Entries in one directory listing.
const MAX_ENTRIES: usize = 1 << 16;
/// `IFF_UP` in `SYS/class/net/<iface>/flags`.
const IFF_UP: u32 = 0x1;
/// `IPV6_ADDR_LINKLOCAL`, the scope column of `PROC/net/if_inet6`.
const IPV6_SCOPE_LINKLOCAL: u32 = 0x20;

/// What below a PCI device the host is using, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// A block device with a mounted filesystem (`nvme0n1p1` mounted on `/data`).
    Mounted { block: String, mountpoint: String },
    /// A block device in use as swap.
    Swap { block: String },
    /// A block device held by another block device (`dm-0`, `md0`) that is itself in use.
    Holder { block: String, holder: String },
    /// A network interface that is up with addresses other than link-local ones, or IPv4 routes.
    NetUp {
        iface: String,
        addresses: Vec<String>,
        routes: usize,
    },
    /// A network interface below a bridge, bond or VLAN (`upper`) that is itself in use.
    NetUpper { iface: String, upper: String },
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Usage::Mounted { block, mountpoint } => {
                write!(
                    f,
                    "block device {block} is mounted on {}",
                    OneLine(mountpoint)
                )
            }
            Usage::Swap { block } => write!(f, "block device {block} is in use as swap"),
            Usage::Holder { block, holder } => write!(
                f,
                "block device {block} is held by {holder} (LVM, RAID or dm-crypt), which is in use"
            ),
            Usage::NetUp {
                iface,
                addresses,
                routes,
            } => {
                write!(f, "network interface {iface} is up")?;
                if !addresses.is_empty() {
                    let s = if addresses.len() == 1 { "" } else { "es" };
                    write!(f, " with address{s} {}", addresses.join(", "))?;
                }
                if *routes > 0 {
                    let joint = if addresses.is_empty() { "with" } else { "and" };
                    let s = if *routes == 1 { "" } else { "s" };
                    write!(f, " {joint} {routes} IPv4 route{s}")?;
                }
                Ok(())
            }
            Usage::NetUpper { iface, upper } => write!(
                f,
                "network interface {iface} is part of {upper} (bridge, bond or VLAN), which is in use"
            ),
        }
    }
}

/// Text read from a file, shown on one line: control characters are escaped.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Reading the host's state failed; the guard that asked must refuse. Keeps the path and errno.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("no PCI device {0}")]
    NoDevice(PciAddress),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {limit} bytes, which is not what the kernel writes there")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} has more than {limit} entries")]
    TooManyEntries { path: PathBuf, limit: usize },
    #[error("{path} holds {value:?}, which is not what the kernel writes there")]
    Unexpected { path: PathBuf, value: String },
    #[error("listing the IPv4 addresses of {iface}: {source}")]
    Addresses {
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// Where the IPv4 addresses of an interface come from.
///
/// Procfs lists IPv4 addresses nowhere by interface (`fib_trie` has no interface column), so the
/// real source is a netlink dump ([`GetIfAddrs`]); tests give a fixed list ([`StaticAddresses`]).
pub trait AddressSource: fmt::Debug + Send + Sync {
    /// The IPv4 addresses of `iface` with their prefix lengths, link-local ones included.
    fn ipv4_addresses(&self, iface: &str) -> io::Result<Vec<(Ipv4Addr, u8)>>;
}

/// The running kernel's IPv4 addresses, from `getifaddrs(3)` (a netlink dump) in the caller's
/// network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetIfAddrs;

impl AddressSource for GetIfAddrs {
    fn ipv4_addresses(&self, iface: &str) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs()? {
            // Addresses with a label (`ip addr add … label eth0:1`) are listed under the label.
            let name = ifa.interface_name.as_str();
            let ours = name == iface
                || name
                    .strip_prefix(iface)
                    .is_some_and(|rest| rest.starts_with(':'));
            if !ours {
                continue;
            }
            let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
                continue;
            };
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .and_then(|m| u8::try_from(u32::from(m.ip()).count_ones()).ok())
                .unwrap_or(32);
            out.push((addr.ip(), prefix));
        }
        Ok(out)
    }
}

/// A fixed table of IPv4 addresses per interface: fixtures, and hosts without IPv4.
#[derive(Debug, Clone, Default)]
pub struct StaticAddresses(Vec<(String, Ipv4Addr, u8)>);

impl StaticAddresses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `addr/prefix` to `iface`.
    pub fn with(mut self, iface: &str, addr: Ipv4Addr, prefix: u8) -> Self {
        self.0.push((iface.to_owned(), addr, prefix));
        self
    }
}

impl AddressSource for StaticAddresses {
    fn ipv4_addresses(&self, iface: &str) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .0
            .iter()
            .filter(|(name, _, _)| name == iface)
            .map(|&(_, addr, prefix)| (addr, prefix))
            .collect())
    }
}

/// The host as sysfs and procfs show it, for the in-use guards.
#[derive(Debug)]
pub struct HostView {
    sys: PathBuf,
    proc_: PathBuf,
    ipv4: Box<dyn AddressSource>,
}

impl HostView {
    /// The host seen through the sysfs and procfs trees at `sys_root` and `proc_root` (`/sys` and
    /// `/proc` in production).
    ///
    /// A real procfs answers for the process that reads it: `PROC/self/mountinfo` lists the mounts
    /// of the caller's mount namespace, `PROC/net/*` its network namespace. IPv4 addresses per
    /// interface are in no file, so they come from [`GetIfAddrs`] — the caller's network
    /// namespace — whatever `proc_root` is. A view of trees that are not the running kernel's (a
    /// fixture) says where its addresses come from with [`HostView::with_address_source`].
    pub fn new(sys_root: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys_root.into(),
            proc_: proc_root.into(),
            ipv4: Box::new(GetIfAddrs),
        }
    }

    /// The same view with IPv4 addresses from `source`.
    pub fn with_address_source(mut self, source: impl AddressSource + 'static) -> Self {
        self.ipv4 = Box::new(source);
        self
    }

    /// Everything below the PCI device `dev` that the host is using: block devices first, then
    /// network interfaces, each sorted by name. Empty when nothing is in use or nothing is below.
    pub fn usage(&self, dev: PciAddress) -> Result<Vec<Usage>, UsageError> {
        let dev_dir = self.device_dir(dev)?;
        let roots = self.roots(&dev_dir)?;
        let mut out = self.block_usage(&roots)?;
        out.extend(self.net_usage(&dev_dir)?);
        Ok(out)
    }

    /// The real directory of `dev` in `SYS/devices`.
    fn device_dir(&self, dev: PciAddress) -> Result<PathBuf, UsageError> {
        let link = self.sys.join("bus/pci/devices").join(dev.to_string());
        match resolve(&link)? {
            Some(dir) if dir.is_dir() => Ok(dir),
            _ => Err(UsageError::NoDevice(dev)),
        }
    }

    /// The directories whose block devices belong to the device in `dev_dir`: that directory, and
    /// every NVMe subsystem with a controller below it (see the module docs).
    fn roots(&self, dev_dir: &Path) -> Result<Vec<PathBuf>, UsageError> {
        let mut roots = vec![dev_dir.to_owned()];
        let class = self.sys.join("class/nvme-subsystem");
        for subsys in list(&class)? {
            let Some(subsys_dir) = resolve(&class.join(&subsys))? else {
                continue;
            };
            for entry in list(&subsys_dir)? {
                let path = subsys_dir.join(&entry);
                // Controllers are links; the namespace disks beside them are directories.
                if !is_symlink(&path) {
                    continue;
                }
                if resolve(&path)?.is_some_and(|target| target.starts_with(dev_dir)) {
                    roots.push(subsys_dir);
                    break;
                }
            }
        }
        Ok(roots)
    }

    // ---- block devices ----

    fn block_usage(&self, roots: &[PathBuf]) -> Result<Vec<Usage>, UsageError> {
        let blocks = self.blocks()?;
        let below = |b: &&Block| roots.iter().any(|r| b.dir.starts_with(r));
        if !blocks.iter().any(|b| below(&b)) {
            return Ok(Vec::new());
        }
        let tables = self.block_tables()?;
        let mut out = Vec::new();
        for block in blocks.iter().filter(below) {
            out.extend(self.direct_use(block, &tables)?);
            for holder in list(&block.dir.join("holders"))? {
                if self.holder_in_use(&holder, &blocks, &tables)? {
                    out.push(Usage::Holder {
                        block: block.name.clone(),
                        holder,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Every entry of `SYS/class/block`, resolved, sorted by name.
    fn blocks(&self) -> Result<Vec<Block>, UsageError> {
        let class = self.sys.join("class/block");
        let mut out = Vec::new();
        for name in list(&class)? {
            // Gone since the listing, or a dangling link: nothing to use.
            if let Some(dir) = resolve(&class.join(&name))? {
                out.push(Block { name, dir });
            }
        }
        Ok(out)
    }

    fn block_tables(&self) -> Result<BlockTables, UsageError> {
        let path = self.proc_.join("self/mountinfo");
        // Every Linux has a mount table; a missing one is an error, not "nothing mounted".
        let text = read_bounded(&path, MAX_TABLE)?.ok_or_else(|| UsageError::Read {
            path: path.clone(),
            source: io::ErrorKind::NotFound.into(),
        })?;
        let mounts = parse_mountinfo(&text, &path)?;
        // No /proc/swaps: a kernel built without swap.
        let swaps = read_bounded(&self.proc_.join("swaps"), MAX_TABLE)?
            .map(|text| parse_swaps(&text))
            .unwrap_or_default();
        let btrfs_root = self.sys.join("fs/btrfs");
        let mut btrfs = Vec::new();
        for fsid in list(&btrfs_root)? {
            let members = list(&btrfs_root.join(&fsid).join("devices"))?;
            if !members.is_empty() {
                btrfs.push(Btrfs { fsid, members });
            }
        }
        Ok(BlockTables {
            mounts,
            swaps,
            btrfs,
        })
    }

    /// `block` mounted or swap, by itself (not through holders).
    fn direct_use(&self, block: &Block, t: &BlockTables) -> Result<Vec<Usage>, UsageError> {
        let dev_path = block.dir.join("dev");
        // A block device without `dev` is matched by name only.
        let devno = match read_bounded(&dev_path, MAX_ATTR)? {
            None => None,
            Some(text) => Some(parse_devno(text.trim_end()).ok_or(UsageError::Unexpected {
                path: dev_path,
                value: text,
            })?),
        };
        let mut names = vec![format!("/dev/{}", block.name)];
        if let Some(dm) = read_bounded(&block.dir.join("dm/name"), MAX_ATTR)? {
            let dm = dm.trim_end();
            if valid_name(dm) {
                names.push(format!("/dev/mapper/{dm}"));
            }
        }
        let mut out = Vec::new();
        let mount = t
            .mounts
            .iter()
            .find(|m| Some(m.devno) == devno || names.contains(&m.source));
        if let Some(m) = mount {
            out.push(Usage::Mounted {
                block: block.name.clone(),
                mountpoint: m.mountpoint.clone(),
            });
        } else if let Some(fs) = t.btrfs.iter().find(|fs| fs.members.contains(&block.name)) {
            // Mounted through another member of the same filesystem.
            let mountpoint = t
                .mounts
                .iter()
                .find(|m| {
                    m.fstype == "btrfs"
                        && m.source
                            .strip_prefix("/dev/")
                            .is_some_and(|n| fs.members.iter().any(|member| member == n))
                })
                .map(|m| m.mountpoint.clone())
                .unwrap_or_else(|| format!("btrfs filesystem {} (in another namespace)", fs.fsid));
            out.push(Usage::Mounted {
                block: block.name.clone(),
                mountpoint,
            });
        }
        if t.swaps.iter().any(|s| names.contains(s)) {
            out.push(Usage::Swap {
                block: block.name.clone(),
            });
        }
        Ok(out)
    }

    /// Whether the holder `start`, its partitions, or anything holding them is mounted or swap.
    fn holder_in_use(
        &self,
        start: &str,
        blocks: &[Block],
        t: &BlockTables,
    ) -> Result<bool, UsageError> {
        // Breadth first with a seen set: each block device is looked at once, whatever the links.
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([start.to_owned()]);
        while let Some(name) = queue.pop_front() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(block) = blocks.iter().find(|b| b.name == name) else {
                continue;
            };
            if !self.direct_use(block, t)?.is_empty() {
                return Ok(true);
            }
            queue.extend(
                blocks
                    .iter()
                    .filter(|p| p.dir != block.dir && p.dir.starts_with(&block.dir))
                    .map(|p| p.name.clone()),
            );
            queue.extend(list(&block.dir.join("holders"))?);
        }
        Ok(false)
    }

    // ---- network interfaces ----

    fn net_usage(&self, dev_dir: &Path) -> Result<Vec<Usage>, UsageError> {
        let class = self.sys.join("class/net");
        let mut ifaces = Vec::new();
        for name in list(&class)? {
            // Virtual interfaces have no `device` link.
            if resolve(&class.join(&name).join("device"))?.is_some_and(|d| d.starts_with(dev_dir)) {
                ifaces.push(name);
            }
        }
        if ifaces.is_empty() {
            return Ok(Vec::new());
        }
        let tables = self.net_tables()?;
        let mut out = Vec::new();
        for iface in ifaces {
            if let Some(up) = self.net_up(&iface, &tables)? {
                out.push(up);
            }
            for upper in self.uppers(&iface)? {
                if self.upper_in_use(&iface, &upper, &tables)? {
                    out.push(Usage::NetUpper {
                        iface: iface.clone(),
                        upper,
                    });
                }
            }
        }
        Ok(out)
    }

    fn net_tables(&self) -> Result<NetTables, UsageError> {
        // No if_inet6 with IPv6 disabled, no route without IPv4: neither means "in use".
        let path = self.proc_.join("net/if_inet6");
        let inet6 = match read_bounded(&path, MAX_TABLE)? {
            Some(text) => parse_if_inet6(&text, &path)?,
            None => Vec::new(),
        };
        let routes = read_bounded(&self.proc_.join("net/route"), MAX_TABLE)?
            .map(|text| parse_route(&text))
            .unwrap_or_default();
        Ok(NetTables { inet6, routes })
    }

    /// `iface` as [`Usage::NetUp`] if it is up with addresses or routes of its own.
    fn net_up(&self, iface: &str, t: &NetTables) -> Result<Option<Usage>, UsageError> {
        let path = self.sys.join("class/net").join(iface).join("flags");
        let text = match read_bounded(&path, MAX_ATTR) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(None),
            // An interface being unregistered (its driver unbinding right now) answers EINVAL or
            // ENODEV: it is going away, and a device without it is not in use through it.
            Err(UsageError::Read { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENODEV)) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let flags = parse_hex(text.trim_end()).ok_or(UsageError::Unexpected {
            path,
            value: text.clone(),
        })?;
        if flags & IFF_UP == 0 {
            return Ok(None);
        }
        let ipv4 = self
            .ipv4
            .ipv4_addresses(iface)
            .map_err(|source| UsageError::Addresses {
                iface: iface.to_owned(),
                source,
            })?;
        let mut addresses: Vec<String> = ipv4
            .into_iter()
            .filter(|(addr, _)| !addr.is_link_local())
            .map(|(addr, prefix)| format!("{addr}/{prefix}"))
            .collect();
        addresses.extend(
            t.inet6
                .iter()
                .filter(|a| a.iface == iface && a.scope != IPV6_SCOPE_LINKLOCAL)
                .map(|a| format!("{}/{}", a.addr, a.prefix)),
        );
        let routes = t.routes.iter().filter(|r| *r == iface).count();
        if addresses.is_empty() && routes == 0 {
            return Ok(None);
        }
        Ok(Some(Usage::NetUp {
            iface: iface.to_owned(),
            addresses,
            routes,
        }))
    }

    /// The interfaces directly above `iface` (its `upper_<name>` links: bridge, bond, VLAN).
    fn uppers(&self, iface: &str) -> Result<Vec<String>, UsageError> {
        let entries = list(&self.sys.join("class/net").join(iface))?;
        Ok(entries
            .iter()
            .filter_map(|e| e.strip_prefix("upper_"))
            .filter(|n| valid_name(n))
            .map(str::to_owned)
            .collect())
    }

    /// Whether `start` (above `iface`), or anything above it, is up with addresses or routes.
    fn upper_in_use(&self, iface: &str, start: &str, t: &NetTables) -> Result<bool, UsageError> {
        let mut seen = HashSet::from([iface.to_owned()]);
        let mut queue = VecDeque::from([start.to_owned()]);
        while let Some(name) = queue.pop_front() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if self.net_up(&name, t)?.is_some() {
                return Ok(true);
            }
            queue.extend(self.uppers(&name)?);
        }
        Ok(false)
    }
}

/// A block device: its name in `SYS/class/block` and its real directory.
#[derive(Debug)]
struct Block {
    name: String,
    dir: PathBuf,
}

type DevNo = (u32, u32);

#[derive(Debug, PartialEq, Eq)]
struct Mount {
    devno: DevNo,
    mountpoint: String,
    fstype: String,
    source: String,
}

#[derive(Debug)]
struct Btrfs {
    fsid: String,
    members: Vec<String>,
}

#[derive(Debug)]
struct BlockTables {
    mounts: Vec<Mount>,
    swaps: Vec<String>,
    btrfs: Vec<Btrfs>,
}

#[derive(Debug, PartialEq, Eq)]
struct Inet6 {
    addr: Ipv6Addr,
    prefix: u8,
    scope: u32,
    iface: String,
}

#[derive(Debug)]
struct NetTables {
    inet6: Vec<Inet6>,
    /// The `Iface` column of every IPv4 route.
    routes: Vec<String>,
}

/// A name from a directory listing that is safe to join to a path and to show on one line.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && !name.contains('/')
        && !name.contains("..")
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The valid names in `dir`, sorted. A missing directory has none (containers, old kernels).
fn list(dir: &Path) -> Result<Vec<String>, UsageError> {
    let read_err = |source| UsageError::Read {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut names = Vec::new();
    for (i, entry) in entries.enumerate() {
        if i == MAX_ENTRIES {
            return Err(UsageError::TooManyEntries {
                path: dir.to_owned(),
                limit: MAX_ENTRIES,
            });
        }
        let entry = entry.map_err(read_err)?;
        // Names the kernel never makes are not ours to follow.
        if let Some(name) = entry.file_name().to_str().filter(|n| valid_name(n)) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `path` with every link resolved; `None` when it does not exist (gone, or a dangling link).
fn resolve(path: &Path) -> Result<Option<PathBuf>, UsageError> {
    match fs::canonicalize(path) {
        Ok(real) => Ok(Some(real)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UsageError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// The contents of `path`, at most `limit` bytes; `None` when it does not exist.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<String>, UsageError> {
    let read_err = |source| UsageError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > limit {
        return Err(UsageError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// `major:minor`, as in a `dev` attribute and field 3 of mountinfo.
fn parse_devno(text: &str) -> Option<DevNo> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `0x1003` as sysfs prints interface flags.
fn parse_hex(text: &str) -> Option<u32> {
    u32::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// Undoes the kernel's octal escapes (`\040` for a space, also tab, newline and backslash) in a
/// mountinfo or swaps field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `PROC/self/mountinfo`: `id parent major:minor root mountpoint options [optional…] - fstype
/// source superoptions`. A line that does not parse is an error: it could be the mount we look
/// for.
fn parse_mountinfo(text: &str, path: &Path) -> Result<Vec<Mount>, UsageError> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let parsed = (|| {
            let devno = parse_devno(fields.get(2)?)?;
            let mountpoint = unescape(fields.get(4)?);
            let sep = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
            let fstype = unescape(fields.get(sep + 1)?);
            let source = unescape(fields.get(sep + 2)?);
            Some(Mount {
                devno,
                mountpoint,
                fstype,
                source,
            })
        })();
        mounts.push(parsed.ok_or_else(|| UsageError::Unexpected {
            path: path.to_owned(),
            value: line.to_owned(),
        })?);
    }
    Ok(mounts)
}

/// `PROC/swaps`: a header, then `Filename Type Size Used Priority`. Returns the file names.
fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect()
}

/// `PROC/net/route`: a header, then one IPv4 route a line with the interface first.
fn parse_route(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `PROC/net/if_inet6`: `address ifindex prefix scope flags name`, all hex but the name.
fn parse_if_inet6(text: &str, path: &Path) -> Result<Vec<Inet6>, UsageError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields[..] {
            [addr, _index, prefix, scope, _flags, iface] if addr.len() == 32 => (|| {
                Some(Inet6 {
                    addr: Ipv6Addr::from(u128::from_str_radix(addr, 16).ok()?),
                    prefix: u8::from_str_radix(prefix, 16).ok()?,
                    scope: u32::from_str_radix(scope, 16).ok()?,
                    iface: iface.to_owned(),
                })
            })(),
            _ => None,
        };
        out.push(parsed.ok_or_else(|| UsageError::Unexpected {
            path: path.to_owned(),
            value: line.to_owned(),
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    // Exactly what this machine's kernel prints (the header lines carry their trailing blanks).
    const ROUTE_HEADER: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT                                                       \n";
    const SWAPS_HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
    const MOUNTINFO_BASE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,nr_inodes=3083623,mode=755
27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
";

    fn route(iface: &str, dest: &str, gateway: &str, flags: &str, mask: &str) -> String {
        format!(
            "{iface}\t{dest}\t{gateway}\t{flags}\t0\t0\t0\t{mask}\t0\t0\t0                                                                               \n"
        )
    }

    /// A sysfs + procfs fixture in a tempdir, shaped like the real trees: class entries are
    /// relative links into `devices/`, as the kernel makes them.
    struct Fx {
        _tmp: tempfile::TempDir,
        sys: PathBuf,
        proc_: PathBuf,
    }

    impl Fx {
        /// A host with a virtio-blk root disk at 00:02.0 (vda1 mounted on /), a virtio-net at
        /// 00:03.0 (eth0, down), and loopback.
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let sys = tmp.path().join("sys");
            let proc_ = tmp.path().join("proc");
            fs::create_dir_all(&sys).unwrap();
            fs::create_dir_all(proc_.join("self")).unwrap();
            fs::create_dir_all(proc_.join("net")).unwrap();
            let fx = Self {
                _tmp: tmp,
                sys,
                proc_,
            };
            fx.pci("0000:00:02.0", "devices/pci0000:00/0000:00:02.0");
            fx.block(
                "vda",
                "devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
                "254:0",
            );
            fx.block(
                "vda1",
                "devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1",
                "254:1",
            );
            fx.pci("0000:00:03.0", "devices/pci0000:00/0000:00:03.0");
            fx.net(
                "eth0",
                "devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
                Some("devices/pci0000:00/0000:00:03.0/virtio2"),
                "0x1002",
            );
            fx.net("lo", "devices/virtual/net/lo", None, "0x9");
            fx.proc("self/mountinfo", MOUNTINFO_BASE);
            fx.proc("swaps", SWAPS_HEADER);
            fx.proc("net/route", ROUTE_HEADER);
            fx.proc(
                "net/if_inet6",
                "00000000000000000000000000000001 01 80 10 80       lo\n",
            );
            fx
        }

        /// No kernel behind the fixture: no IPv4 addresses unless a test gives some.
        fn view(&self) -> HostView {
            HostView::new(&self.sys, &self.proc_).with_address_source(StaticAddresses::new())
        }

        fn usage(&self, dev: &str) -> Vec<Usage> {
            self.view().usage(dev.parse().unwrap()).unwrap()
        }

        fn mkdir(&self, rel: &str) -> PathBuf {
            let dir = self.sys.join(rel);
            fs::create_dir_all(&dir).unwrap();
            dir
        }

        /// `SYS/<link>` -> `SYS/<target>`, relative like the kernel's links.
        fn link(&self, link: &str, target: &str) {
            let up = link.matches('/').count();
            let path = self.sys.join(link);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(format!("{}{target}", "../".repeat(up)), path).unwrap();
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.sys.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn proc(&self, rel: &str, text: &str) {
            fs::write(self.proc_.join(rel), text).unwrap();
        }

        fn append_proc(&self, rel: &str, text: &str) {
            let path = self.proc_.join(rel);
            let mut old = fs::read_to_string(&path).unwrap();
            old.push_str(text);
            fs::write(path, old).unwrap();
        }

        fn pci(&self, addr: &str, real: &str) {
            self.mkdir(real);
            self.write(&format!("{real}/vendor"), "0x8086\n");
            self.link(&format!("bus/pci/devices/{addr}"), real);
        }

        fn block(&self, name: &str, real: &str, devno: &str) {
            self.mkdir(&format!("{real}/holders"));
            self.mkdir(&format!("{real}/slaves"));
            self.write(&format!("{real}/dev"), &format!("{devno}\n"));
            self.link(&format!("class/block/{name}"), real);
        }

        /// `holder` (at `holder_real`) holds the block device at `lower_real`.
        fn hold(&self, lower_real: &str, lower: &str, holder: &str, holder_real: &str) {
            self.link(&format!("{lower_real}/holders/{holder}"), holder_real);
            self.link(&format!("{holder_real}/slaves/{lower}"), lower_real);
        }

        fn net(&self, name: &str, real: &str, device: Option<&str>, flags: &str) {
            self.mkdir(real);
            self.write(&format!("{real}/flags"), &format!("{flags}\n"));
            if let Some(device) = device {
                self.link(&format!("{real}/device"), device);
            }
            self.link(&format!("class/net/{name}"), real);
        }

        /// A Samsung-like NVMe at 0000:03:00.0 behind a root port, without native multipath:
        /// nvme0n1 with partitions p1 (259:1), p2 (259:2), p3 (259:3).
        fn nvme(&self) -> &'static str {
            let ctrl = "devices/pci0000:00/0000:00:1c.0/0000:03:00.0/nvme/nvme0";
            self.pci(
                "0000:03:00.0",
                "devices/pci0000:00/0000:00:1c.0/0000:03:00.0",
            );
            self.mkdir(ctrl);
            self.block("nvme0n1", &format!("{ctrl}/nvme0n1"), "259:0");
            for p in 1..=3 {
                self.block(
                    &format!("nvme0n1p{p}"),
                    &format!("{ctrl}/nvme0n1/nvme0n1p{p}"),
                    &format!("259:{p}"),
                );
            }
            "0000:03:00.0"
        }
    }

    const NVME_DISK: &str = "devices/pci0000:00/0000:00:1c.0/0000:03:00.0/nvme/nvme0/nvme0n1";

    fn mounted(block: &str, mountpoint: &str) -> Usage {
        Usage::Mounted {
            block: block.into(),
            mountpoint: mountpoint.into(),
        }
    }

    #[test]
    fn nvme_with_a_mounted_partition_is_mounted() {
        let fx = Fx::new();
        let dev = fx.nvme();
        // The mount point has a space, escaped by the kernel as \040.
        fx.append_proc(
            "self/mountinfo",
            "45 27 259:1 / /srv/my\\040data rw,relatime shared:20 - ext4 /dev/nvme0n1p1 rw\n",
        );
        assert_eq!(fx.usage(dev), vec![mounted("nvme0n1p1", "/srv/my data")]);
        // The root disk elsewhere is not this device's business, nor the other way round.
        assert_eq!(fx.usage("0000:00:02.0"), vec![mounted("vda1", "/")]);
    }

    #[test]
    fn nvme_under_native_multipath_is_found_through_its_subsystem() {
        let fx = Fx::new();
        let ctrl = "devices/pci0000:00/0000:00:04.0/nvme/nvme0";
        let subsys = "devices/virtual/nvme-subsystem/nvme-subsys0";
        fx.pci("0000:00:04.0", "devices/pci0000:00/0000:00:04.0");
        fx.mkdir(ctrl);
        fx.link(&format!("{ctrl}/subsystem"), "class/nvme");
        // The hidden path disk sits below the controller; the namespace head and its
        // partitions live in the subsystem, which links to its controllers.
        fx.block("nvme0c0n1", &format!("{ctrl}/nvme0c0n1"), "259:3");
        fx.mkdir(subsys);
        fx.write(&format!("{subsys}/model"), "QEMU NVMe Ctrl\n");
        fx.link(&format!("{subsys}/nvme0"), ctrl);
        fx.link(&format!("{subsys}/subsystem"), "class/nvme-subsystem");
        fx.link("class/nvme-subsystem/nvme-subsys0", subsys);
        fx.block("nvme0n1", &format!("{subsys}/nvme0n1"), "259:0");
        fx.block("nvme0n1p1", &format!("{subsys}/nvme0n1/nvme0n1p1"), "259:1");
        fx.append_proc(
            "self/mountinfo",
            "50 27 259:1 / /mnt rw,relatime shared:30 - ext4 /dev/nvme0n1p1 rw\n",
        );
        assert_eq!(fx.usage("0000:00:04.0"), vec![mounted("nvme0n1p1", "/mnt")]);
        // Another device's controller does not pull the subsystem in.
        assert_eq!(fx.usage("0000:00:03.0"), vec![]);
    }

    #[test]
    fn swap_partition_is_swap() {
        let fx = Fx::new();
        let dev = fx.nvme();
        fx.append_proc(
            "swaps",
            "/dev/nvme0n1p2                          partition\t8388604\t\t0\t\t-2\n",
        );
        assert_eq!(
            fx.usage(dev),
            vec![Usage::Swap {
                block: "nvme0n1p2".into()
            }]
        );
    }

    /// nvme0n1p3 is an LVM physical volume; dm-0 (vg0-data) is a logical volume on it.
    fn lvm(fx: &Fx) -> &'static str {
        let dm = "devices/virtual/block/dm-0";
        fx.block("dm-0", dm, "254:16");
        fx.write(&format!("{dm}/dm/name"), "vg0-data\n");
        fx.hold(&format!("{NVME_DISK}/nvme0n1p3"), "nvme0n1p3", "dm-0", dm);
        dm
    }

    #[test]
    fn disk_under_a_mounted_lvm_volume_is_held() {
        let fx = Fx::new();
        let dev = fx.nvme();
        lvm(&fx);
        // Active but unmounted: not in use.
        assert_eq!(fx.usage(dev), vec![]);
        fx.append_proc(
            "self/mountinfo",
            "60 27 254:16 / /data rw,relatime shared:40 - xfs /dev/mapper/vg0-data rw\n",
        );
        let held = vec![Usage::Holder {
            block: "nvme0n1p3".into(),
            holder: "dm-0".into(),
        }];
        assert_eq!(fx.usage(dev), held);
        // The mapper name alone finds it too (a device number the table does not show).
        fx.proc(
            "self/mountinfo",
            &format!(
                "{MOUNTINFO_BASE}60 27 0:40 / /data rw,relatime shared:40 - btrfs /dev/mapper/vg0-data rw\n"
            ),
        );
        assert_eq!(fx.usage(dev), held);
    }

    #[test]
    fn holders_are_followed_through_stacks_and_partitions() {
        let fx = Fx::new();
        let dev = fx.nvme();
        // nvme0n1p3 -> md0 (RAID) -> dm-0 (crypt) ; dm-0 is swap.
        let md = "devices/virtual/block/md0";
        fx.block("md0", md, "9:0");
        fx.hold(&format!("{NVME_DISK}/nvme0n1p3"), "nvme0n1p3", "md0", md);
        let dm = "devices/virtual/block/dm-0";
        fx.block("dm-0", dm, "254:16");
        fx.write(&format!("{dm}/dm/name"), "crypt-md0\n");
        fx.hold(md, "md0", "dm-0", dm);
        fx.append_proc(
            "swaps",
            "/dev/dm-0                               partition\t2097148\t\t0\t\t-2\n",
        );
        let held = |holder: &str| Usage::Holder {
            block: "nvme0n1p3".into(),
            holder: holder.into(),
        };
        assert_eq!(fx.usage(dev), vec![held("md0")]);

        // A whole-disk RAID whose partition is mounted.
        let fx = Fx::new();
        let dev = fx.nvme();
        let md = "devices/virtual/block/md127";
        fx.block("md127", md, "9:127");
        fx.block("md127p1", &format!("{md}/md127p1"), "259:9");
        fx.hold(NVME_DISK, "nvme0n1", "md127", md);
        fx.append_proc(
            "self/mountinfo",
            "70 27 259:9 / /raid rw,relatime - ext4 /dev/md127p1 rw\n",
        );
        assert_eq!(
            fx.usage(dev),
            vec![Usage::Holder {
                block: "nvme0n1".into(),
                holder: "md127".into()
            }]
        );
    }

    #[test]
    fn holder_cycles_end() {
        let fx = Fx::new();
        let dev = fx.nvme();
        let a = "devices/virtual/block/dm-1";
        let b = "devices/virtual/block/dm-2";
        fx.block("dm-1", a, "254:31");
        fx.block("dm-2", b, "254:32");
        fx.hold(NVME_DISK, "nvme0n1", "dm-1", a);
        fx.hold(a, "dm-1", "dm-2", b);
        fx.hold(b, "dm-2", "dm-1", a);
        assert_eq!(fx.usage(dev), vec![]);
    }

    #[test]
    fn btrfs_is_found_by_source_and_by_membership() {
        let fx = Fx::new();
        let dev = fx.nvme();
        // btrfs shows an anonymous device number; its source names the partition.
        fx.append_proc(
            "self/mountinfo",
            "80 27 0:33 /@home /home rw,relatime shared:2 - btrfs /dev/nvme0n1p1 rw,ssd,subvol=/@home\n",
        );
        assert_eq!(fx.usage(dev), vec![mounted("nvme0n1p1", "/home")]);

        // nvme0n1p2 is a second member of the same filesystem, named nowhere in mountinfo.
        let fsid = "fs/btrfs/0f7e4b1c-5d7a-4f3e-9a8b-2c1d3e4f5a6b";
        fx.write(&format!("{fsid}/label"), "home\n");
        fx.link(
            &format!("{fsid}/devices/nvme0n1p1"),
            &format!("{NVME_DISK}/nvme0n1p1"),
        );
        fx.link(
            &format!("{fsid}/devices/nvme0n1p2"),
            &format!("{NVME_DISK}/nvme0n1p2"),
        );
        assert_eq!(
            fx.usage(dev),
            vec![mounted("nvme0n1p1", "/home"), mounted("nvme0n1p2", "/home")]
        );
    }

    #[test]
    fn unmounted_disk_is_not_in_use() {
        let fx = Fx::new();
        let dev = fx.nvme();
        assert_eq!(fx.usage(dev), vec![]);
    }

    #[test]
    fn device_with_nothing_below_is_not_in_use() {
        let fx = Fx::new();
        fx.pci("0000:00:05.0", "devices/pci0000:00/0000:00:05.0");
        assert_eq!(fx.usage("0000:00:05.0"), vec![]);
    }

    #[test]
    fn unknown_device_is_an_error() {
        let fx = Fx::new();
        let err = fx
            .view()
            .usage("0000:09:00.0".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, UsageError::NoDevice(_)), "{err:?}");
        assert_eq!(err.to_string(), "no PCI device 0000:09:00.0");
        // A dangling device link is no device either.
        fx.link("bus/pci/devices/0000:0a:00.0", "devices/pci0000:00/gone");
        let err = fx
            .view()
            .usage("0000:0a:00.0".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, UsageError::NoDevice(_)), "{err:?}");
    }

    #[test]
    fn missing_class_and_optional_proc_files_mean_none() {
        let fx = Fx::new();
        fs::remove_dir_all(fx.sys.join("class")).unwrap();
        fs::remove_file(fx.proc_.join("swaps")).unwrap();
        fs::remove_file(fx.proc_.join("net/if_inet6")).unwrap();
        fs::remove_file(fx.proc_.join("net/route")).unwrap();
        assert_eq!(fx.usage("0000:00:02.0"), vec![]);
        assert_eq!(fx.usage("0000:00:03.0"), vec![]);
    }

    #[test]
    fn missing_mountinfo_is_an_error() {
        let fx = Fx::new();
        fs::remove_file(fx.proc_.join("self/mountinfo")).unwrap();
        let err = fx
            .view()
            .usage("0000:00:02.0".parse().unwrap())
            .unwrap_err();
        assert!(
            matches!(&err, UsageError::Read { path, .. } if path.ends_with("self/mountinfo")),
            "{err:?}"
        );
    }

    #[test]
    fn nic_up_with_a_route_is_up() {
        let fx = Fx::new();
        fx.write(
            "devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/flags",
            "0x1003\n",
        );
        fx.append_proc(
            "net/route",
            &(route("eth0", "00000000", "010200C0", "0003", "00000000")
                + &route("eth0", "000200C0", "00000000", "0001", "00FFFFFF")),
        );
        fx.proc(
            "net/if_inet6",
            "fe8000000000000000fc00fffe000001 02 40 20 80     eth0\n\
             fd000000000000000000000000000002 02 40 00 82     eth0\n\
             00000000000000000000000000000001 01 80 10 80       lo\n",
        );
        let view = fx.view().with_address_source(StaticAddresses::new().with(
            "eth0",
            Ipv4Addr::new(192, 0, 2, 15),
            24,
        ));
        let got = view.usage("0000:00:03.0".parse().unwrap()).unwrap();
        let want = Usage::NetUp {
            iface: "eth0".into(),
            addresses: vec!["192.0.2.15/24".into(), "fd00::2/64".into()],
            routes: 2,
        };
        assert_eq!(got, vec![want.clone()]);
        assert_eq!(
            want.to_string(),
            "network interface eth0 is up with addresses 192.0.2.15/24, fd00::2/64 and 2 IPv4 routes"
        );
        // Routes alone are enough (a fixture view asks no kernel for IPv4 addresses).
        assert_eq!(
            fx.usage("0000:00:03.0"),
            vec![Usage::NetUp {
                iface: "eth0".into(),
                addresses: vec!["fd00::2/64".into()],
                routes: 2,
            }]
        );
    }

    #[test]
    fn nic_up_with_an_address_and_no_route_is_up() {
        let fx = Fx::new();
        // An e1000e-style NIC: the `device` link points at the PCI function itself.
        fx.pci(
            "0000:01:00.0",
            "devices/pci0000:00/0000:00:1c.0/0000:01:00.0",
        );
        fx.net(
            "enp1s0",
            "devices/pci0000:00/0000:00:1c.0/0000:01:00.0/net/enp1s0",
            Some("devices/pci0000:00/0000:00:1c.0/0000:01:00.0"),
            "0x1003",
        );
        let view = fx.view().with_address_source(
            StaticAddresses::new()
                .with("enp1s0", Ipv4Addr::new(169, 254, 7, 1), 16)
                .with("enp1s0", Ipv4Addr::new(10, 0, 0, 2), 32),
        );
        assert_eq!(
            view.usage("0000:01:00.0".parse().unwrap()).unwrap(),
            vec![Usage::NetUp {
                iface: "enp1s0".into(),
                addresses: vec!["10.0.0.2/32".into()],
                routes: 0,
            }]
        );
    }

    #[test]
    fn nic_up_with_only_link_local_is_not_in_use() {
        let fx = Fx::new();
        fx.write(
            "devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/flags",
            "0x1003\n",
        );
        fx.append_proc(
            "net/if_inet6",
            "fe8000000000000000fc00fffe000001 02 40 20 80     eth0\n",
        );
        let view = fx.view().with_address_source(StaticAddresses::new().with(
            "eth0",
            Ipv4Addr::new(169, 254, 3, 4),
            16,
        ));
        assert_eq!(view.usage("0000:00:03.0".parse().unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn nic_down_with_an_address_is_not_in_use() {
        let fx = Fx::new();
        // eth0 is 0x1002: broadcast + multicast, not IFF_UP.
        fx.append_proc(
            "net/if_inet6",
            "20010db8000000000000000000000010 02 40 00 80     eth0\n",
        );
        fx.append_proc(
            "net/route",
            &route("eth0", "000200C0", "00000000", "0001", "00FFFFFF"),
        );
        let view = fx.view().with_address_source(StaticAddresses::new().with(
            "eth0",
            Ipv4Addr::new(192, 0, 2, 15),
            24,
        ));
        assert_eq!(view.usage("0000:00:03.0".parse().unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn nic_in_a_bridge_with_an_address_is_held() {
        let fx = Fx::new();
        let eth0 = "devices/pci0000:00/0000:00:03.0/virtio2/net/eth0";
        fx.write(&format!("{eth0}/flags"), "0x1003\n");
        // eth0 -> bond0 (no address) -> br0 (address); upper_* links as the kernel makes them.
        fx.net("bond0", "devices/virtual/net/bond0", None, "0x1403");
        fx.net("br0", "devices/virtual/net/br0", None, "0x1003");
        fx.link(&format!("{eth0}/upper_bond0"), "devices/virtual/net/bond0");
        fx.link(&format!("{eth0}/master"), "devices/virtual/net/bond0");
        fx.link(
            "devices/virtual/net/bond0/upper_br0",
            "devices/virtual/net/br0",
        );
        fx.link("devices/virtual/net/bond0/lower_eth0", eth0);
        fx.link(
            "devices/virtual/net/br0/lower_bond0",
            "devices/virtual/net/bond0",
        );
        // Not in use until br0 has an address or a route.
        assert_eq!(fx.usage("0000:00:03.0"), vec![]);
        fx.append_proc(
            "net/route",
            &route("br0", "000200C0", "00000000", "0001", "00FFFFFF"),
        );
        let want = Usage::NetUpper {
            iface: "eth0".into(),
            upper: "bond0".into(),
        };
        assert_eq!(fx.usage("0000:00:03.0"), vec![want.clone()]);
        assert_eq!(
            want.to_string(),
            "network interface eth0 is part of bond0 (bridge, bond or VLAN), which is in use"
        );
    }

    #[test]
    fn hostile_names_in_listings_are_ignored() {
        let fx = Fx::new();
        let dev = fx.nvme();
        let eth0 = "devices/pci0000:00/0000:00:03.0/virtio2/net/eth0";
        // Block entries below the NVMe, mounted, under names the kernel never makes.
        for (i, name) in ["..sneaky", "sp ace", "new\nline", "tab\tbed"]
            .iter()
            .enumerate()
        {
            fx.block(
                name,
                &format!("{NVME_DISK}/nvme0n1p1/x{i}"),
                &format!("259:{}", 20 + i),
            );
            fx.append_proc(
                "self/mountinfo",
                &format!(
                    "{} 27 259:{} / /evil{i} rw - ext4 /dev/x rw\n",
                    90 + i,
                    20 + i
                ),
            );
        }
        // A holder of nvme0n1 under a hostile name, mounted.
        fx.block("dm-9", "devices/virtual/block/dm-9", "254:9");
        fx.link(
            &format!("{NVME_DISK}/holders/..dm-9"),
            "devices/virtual/block/dm-9",
        );
        fx.append_proc(
            "self/mountinfo",
            "99 27 254:9 / /evil rw - ext4 /dev/dm-9 rw\n",
        );
        // An interface below 00:03.0 with a hostile name, up with routes; a hostile upper.
        fx.net(
            "..eth",
            "devices/pci0000:00/0000:00:03.0/virtio2/net/..eth",
            Some("devices/pci0000:00/0000:00:03.0/virtio2"),
            "0x1003",
        );
        fx.append_proc(
            "net/route",
            &route("..eth", "00000000", "010200C0", "0003", "00000000"),
        );
        fx.write(&format!("{eth0}/flags"), "0x1003\n");
        fx.net("br0", "devices/virtual/net/br0", None, "0x1003");
        fx.link(&format!("{eth0}/upper_..br0"), "devices/virtual/net/br0");
        fx.append_proc(
            "net/route",
            &route("br0", "000200C0", "00000000", "0001", "00FFFFFF"),
        );
        assert_eq!(fx.usage(dev), vec![]);
        assert_eq!(fx.usage("0000:00:03.0"), vec![]);

        // The same under the kernel's own names is found: the fixture is not broken.
        fx.link(
            &format!("{NVME_DISK}/holders/dm-9"),
            "devices/virtual/block/dm-9",
        );
        fx.link(&format!("{eth0}/upper_br0"), "devices/virtual/net/br0");
        assert_eq!(
            fx.usage(dev),
            vec![Usage::Holder {
                block: "nvme0n1".into(),
                holder: "dm-9".into()
            }]
        );
        assert_eq!(
            fx.usage("0000:00:03.0"),
            vec![Usage::NetUpper {
                iface: "eth0".into(),
                upper: "br0".into()
            }]
        );
    }

    #[test]
    fn garbage_in_kernel_files_is_an_error() {
        let fx = Fx::new();
        fx.write(
            "devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/flags",
            "up\n",
        );
        let err = fx
            .view()
            .usage("0000:00:03.0".parse().unwrap())
            .unwrap_err();
        assert!(
            matches!(&err, UsageError::Unexpected { path, value } if path.ends_with("eth0/flags") && value == "up\n"),
            "{err:?}"
        );

        let fx = Fx::new();
        fx.append_proc("self/mountinfo", "garbage\n");
        let err = fx
            .view()
            .usage("0000:00:02.0".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, UsageError::Unexpected { .. }), "{err:?}");
    }

    #[test]
    fn oversized_tables_are_refused() {
        let fx = Fx::new();
        let line = "28 27 0:50 / /x rw - tmpfs tmpfs rw\n";
        let big = line.repeat(usize::try_from(MAX_TABLE).unwrap() / line.len() + 1);
        fx.proc("self/mountinfo", &big);
        let err = fx
            .view()
            .usage("0000:00:02.0".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, UsageError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn unescape_undoes_the_kernels_escapes() {
        assert_eq!(unescape("/a\\040b\\011c\\012d\\134e"), "/a b\tc\nd\\e");
        // Not an escape: left as it is.
        assert_eq!(unescape("/x\\9\\04"), "/x\\9\\04");
        assert_eq!(unescape("\\777"), "\\777");
    }

    #[test]
    fn tables_parse_as_the_kernel_prints_them() {
        let path = Path::new("/proc/self/mountinfo");
        let mounts = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 shared:7 - ext3 /dev/root rw\n\
             37 35 0:40 / /t rw - tmpfs  rw\n",
            path,
        )
        .unwrap();
        assert_eq!(
            mounts[0],
            Mount {
                devno: (98, 0),
                mountpoint: "/mnt/parent".into(),
                fstype: "ext3".into(),
                source: "/dev/root".into(),
            }
        );
        assert_eq!(mounts[1].source, "");
        assert_eq!(
            parse_if_inet6(
                "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n",
                path
            )
            .unwrap(),
            vec![Inet6 {
                addr: "fe80::fc:ff:fe00:1".parse().unwrap(),
                prefix: 64,
                scope: 0x20,
                iface: "eth0".into(),
            }]
        );
        assert!(parse_if_inet6("fe80 04 40 20 80 eth0\n", path).is_err());
        assert_eq!(
            parse_swaps(&format!(
                "{SWAPS_HEADER}/swap\\040file                          file\t1048572\t\t0\t\t-2\n"
            )),
            vec!["/swap file".to_owned()]
        );
        assert_eq!(
            parse_route(&(ROUTE_HEADER.to_owned() + &route("eth0", "0", "0", "1", "0"))),
            vec!["eth0".to_owned()]
        );
    }

    #[test]
    fn reasons_read_as_one_line() {
        assert_eq!(
            mounted("nvme0n1p1", "/mnt/a\nb").to_string(),
            "block device nvme0n1p1 is mounted on /mnt/a\\nb"
        );
        assert_eq!(
            Usage::Swap {
                block: "sda2".into()
            }
            .to_string(),
            "block device sda2 is in use as swap"
        );
        assert_eq!(
            Usage::Holder {
                block: "nvme0n1".into(),
                holder: "dm-0".into()
            }
            .to_string(),
            "block device nvme0n1 is held by dm-0 (LVM, RAID or dm-crypt), which is in use"
        );
        assert_eq!(
            Usage::NetUp {
                iface: "eth0".into(),
                addresses: vec![],
                routes: 1
            }
            .to_string(),
            "network interface eth0 is up with 1 IPv4 route"
        );
        assert_eq!(
            Usage::NetUp {
                iface: "eth0".into(),
                addresses: vec!["fd00::2/64".into()],
                routes: 0
            }
            .to_string(),
            "network interface eth0 is up with address fd00::2/64"
        );
    }

    #[test]
    fn ipv4_addresses_come_from_the_running_kernel_unless_a_source_is_given() {
        // Constructing reads nothing. The root does not choose the source: no path comparison.
        assert!(format!("{:?}", HostView::new("/sys", "/proc")).contains("GetIfAddrs"));
        assert!(format!("{:?}", HostView::new("/x/sys", "/x/proc")).contains("GetIfAddrs"));
        let fixture =
            HostView::new("/x/sys", "/x/proc").with_address_source(StaticAddresses::new());
        assert!(format!("{fixture:?}").contains("StaticAddresses"));
    }
}
