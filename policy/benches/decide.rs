//! Decision time with a large policy: 10,000 rules against 16,384 simulated devices.
//!
//! `cargo bench -p vfio-gate-policy`. Prints microseconds per decision for the large policy
//! and, measured in the same run with the same loop, for a one-rule policy, and their ratio.
//! No assertions on time: machines differ; the numbers are for reading.

use std::fmt::Write;
use std::hint::black_box;
use std::time::{Duration, Instant};

use vfio_gate_policy::{DeviceFacts, NameResolver, Policy, SlotName, Subject};
use vfio_gate_protocol::{Driver, PciAddress};

const RULES: usize = 10_000;
const DEVICES: usize = 16_384;
const USERS: u32 = 400;
const GROUPS: u32 = 60;
const RUNS: usize = 5;

/// Users `u0`..`u399` (uid 10000+i) and groups `g0`..`g59` (gid 20000+i).
struct BenchNames;

impl NameResolver for BenchNames {
    fn uid(&self, user: &str) -> Option<u32> {
        let n: u32 = user.strip_prefix('u')?.parse().ok()?;
        (n < USERS).then_some(10_000 + n)
    }
    fn gid(&self, group: &str) -> Option<u32> {
        let n: u32 = group.strip_prefix('g')?.parse().ok()?;
        (n < GROUPS).then_some(20_000 + n)
    }
}

/// A small deterministic generator (xorshift), so every run benches the same policy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const VENDORS: [u16; 12] = [
    0x8086, 0x10de, 0x1002, 0x15b3, 0x14e4, 0x1af4, 0x1b36, 0x1234, 0x144d, 0x1022, 0x10ec, 0x8088,
];
/// (class, weight): NICs and GPUs dominate what people pass through; storage and bridges exist.
const CLASSES: [u32; 9] = [
    0x020000, 0x020000, 0x030000, 0x030200, 0x010802, 0x040300, 0x0c0330, 0x00ff00, 0x120000,
];

fn devices() -> Vec<DeviceFacts> {
    let mut rng = Rng(0x5eed_0000_0000_0001);
    (0..DEVICES)
        .map(|i| {
            // Injective: 2 domains × 256 buses × 32 devices = 16,384; the function varies.
            let (domain, rem) = (i / 8192, i % 8192);
            let address = PciAddress::new(
                domain as u16,
                (rem / 32) as u8,
                (rem % 32) as u8,
                (i * 7 % 8) as u8,
            )
            .expect("valid address");
            let vendor = *rng.pick(&VENDORS);
            DeviceFacts {
                address,
                vendor,
                device: rng.below(0x40) as u16 | 0x1000,
                subsystem_vendor: *rng.pick(&VENDORS),
                subsystem_device: rng.below(0x10) as u16,
                class: *rng.pick(&CLASSES),
                physical_slot: (rng.below(4) == 0)
                    .then(|| SlotName::new(&format!("{}", rng.below(64))).expect("slot")),
            }
        })
        .collect()
}

fn subjects_text(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!("{{ users = [\"u{}\"] }}", rng.below(u64::from(USERS))),
        1 => format!(
            "{{ users = [\"u{}\", \"u{}\"], groups = [\"g{}\"] }}",
            rng.below(u64::from(USERS)),
            rng.below(u64::from(USERS)),
            rng.below(u64::from(GROUPS))
        ),
        2 => format!("{{ groups = [\"g{}\"] }}", rng.below(u64::from(GROUPS))),
        _ => format!(
            "{{ uids = [{}], gids = [{}] }}",
            10_000 + rng.below(u64::from(USERS)),
            20_000 + rng.below(u64::from(GROUPS))
        ),
    }
}

fn matcher_text(rng: &mut Rng) -> String {
    let vendor = rng.pick(&VENDORS);
    match rng.below(7) {
        0 => format!(
            "{{ vendor = \"{vendor:04x}\", device = \"{:04x}\" }}",
            0x1000 | rng.below(0x40)
        ),
        1 => format!("{{ vendor = \"{vendor:04x}\", class = \"0200xx\" }}"),
        2 => format!(
            "{{ address = \"000{}:{:02x}:*\", vendor = \"{vendor:04x}\" }}",
            rng.below(2),
            rng.below(256)
        ),
        3 => format!(
            "{{ address = \"000{}:{:02x}:{:02x}.{}\", vendor = \"{vendor:04x}\", device = \"{:04x}\" }}",
            rng.below(2),
            rng.below(256),
            rng.below(32),
            rng.below(8),
            0x1000 | rng.below(0x40)
        ),
        4 => format!("{{ class = \"03\", vendor = \"{vendor:04x}\" }}"),
        5 => format!(
            "{{ subsystem_vendor = \"{vendor:04x}\", subsystem_device = \"{:04x}\", class = \"xx00xx\" }}",
            rng.below(0x10)
        ),
        _ => format!(
            "{{ physical_slot = \"{}\", vendor = \"{vendor:04x}\" }}",
            rng.below(64)
        ),
    }
}

/// 10,000 rules: about 93% allow rules with one to three matchers, 7% denies.
fn big_policy() -> String {
    let mut rng = Rng(0xdec1_de00_0000_0001);
    let mut text = String::from("version = 1\n\n");
    for i in 0..RULES {
        let matchers: Vec<String> = (0..1 + rng.below(3))
            .map(|_| matcher_text(&mut rng))
            .collect();
        if rng.below(100) < 7 {
            let _ = writeln!(text, "[[deny]]\nname = \"deny {i}\"");
            let _ = writeln!(text, "devices = [{}]", matchers.join(", "));
            if rng.below(2) == 0 {
                let _ = writeln!(text, "subjects = {}", subjects_text(&mut rng));
            }
            if rng.below(3) == 0 {
                let _ = writeln!(text, "drivers = [\"pci-stub\"]");
            }
        } else {
            let _ = writeln!(text, "[[rule]]\nname = \"rule {i}\"");
            let _ = writeln!(text, "subjects = {}", subjects_text(&mut rng));
            let _ = writeln!(text, "devices = [{}]", matchers.join(", "));
            let drivers = *rng.pick(&[
                "[\"vfio-pci\"]",
                "[\"vfio-pci\"]",
                "[\"vfio-pci\", \"pci-stub\"]",
                "[\"pci-stub\"]",
            ]);
            let _ = writeln!(text, "drivers = {drivers}");
        }
        text.push('\n');
    }
    text
}

const SMALL: &str = r#"version = 1
[[rule]]
name = "the lab NIC"
subjects = { groups = ["g1"] }
devices = [{ address = "0000:01:00.*", vendor = "8086", device = "1010" }]
drivers = ["vfio-pci"]
"#;

fn subjects() -> Vec<Subject> {
    vec![
        // In a few rules by name.
        Subject {
            uid: 10_007,
            gid: 10_007,
            groups: vec![],
        },
        // In several groups.
        Subject {
            uid: 10_123,
            gid: 20_001,
            groups: vec![20_002, 20_017, 20_033],
        },
        // Known to no rule: every rule is looked at and none applies.
        Subject {
            uid: 4242,
            gid: 4242,
            groups: vec![],
        },
        // Root: no special treatment by the policy.
        Subject {
            uid: 0,
            gid: 0,
            groups: vec![],
        },
    ]
}

/// One pass of `decide` over every device × subject; returns (time, allowed count).
fn pass(policy: &Policy, devices: &[DeviceFacts], subjects: &[Subject]) -> (Duration, usize) {
    let start = Instant::now();
    let mut allowed = 0;
    for device in devices {
        for subject in subjects {
            if black_box(policy)
                .decide(black_box(subject), black_box(device), Driver::VfioPci)
                .is_allowed()
            {
                allowed += 1;
            }
        }
    }
    (start.elapsed(), allowed)
}

/// The median of `RUNS` passes, after one warm-up pass.
fn measure(policy: &Policy, devices: &[DeviceFacts], subjects: &[Subject]) -> (Duration, usize) {
    let (_, allowed) = pass(policy, devices, subjects);
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| pass(policy, devices, subjects).0)
        .collect();
    times.sort();
    (times[RUNS / 2], allowed)
}

fn micros_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let text = big_policy();
    let started = Instant::now();
    let big = Policy::parse(&text, "bench.toml", &BenchNames).expect("the generated policy parses");
    let parse_time = started.elapsed();
    let small = Policy::parse(SMALL, "small.toml", &BenchNames).expect("parses");
    let devices = devices();
    let subjects = subjects();
    let decisions = devices.len() * subjects.len();
    let denies = big
        .rules()
        .iter()
        .filter(|r| r.effect() == vfio_gate_policy::Effect::Deny)
        .count();

    println!(
        "policy: {} rules ({} allow, {denies} deny), {} KiB of TOML, parsed and resolved in {:.1} ms",
        big.rules().len(),
        big.rules().len() - denies,
        text.len() / 1024,
        parse_time.as_secs_f64() * 1e3
    );
    println!(
        "devices: {}; subjects: {}; decisions per pass: {decisions}; median of {RUNS} passes",
        devices.len(),
        subjects.len()
    );

    let (big_time, big_allowed) = measure(&big, &devices, &subjects);
    let (small_time, small_allowed) = measure(&small, &devices, &subjects);
    let big_us = micros_per(big_time, decisions);
    let small_us = micros_per(small_time, decisions);
    println!(
        "decide, {} rules: {big_us:.3} µs per decision ({:.1} ms per pass; {big_allowed} allowed)",
        big.rules().len(),
        big_time.as_secs_f64() * 1e3
    );
    println!(
        "decide, 1 rule (baseline): {small_us:.3} µs per decision ({:.1} ms per pass; {small_allowed} allowed)",
        small_time.as_secs_f64() * 1e3
    );
    println!("ratio: {:.0}x the 1-rule baseline", big_us / small_us);
}
