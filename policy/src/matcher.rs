//! Device matchers: which PCI functions a rule talks about.
//!
//! A [`DeviceMatcher`] is a conjunction: every field the admin wrote must match. A rule's
//! `devices` list is a disjunction of matchers. Each field is parsed here, once, at load time, so
//! evaluation compares integers and short byte strings and never fails.

use std::fmt;

use vfio_gate_protocol::PciAddress;

use crate::device::{DeviceFacts, SlotName};

/// The longest address pattern accepted. A canonical address is 12 characters; the bound keeps
/// glob matching trivially cheap however the pattern is written.
const MAX_ADDRESS_PATTERN: usize = 32;

/// One entry of a rule's `devices` list: all given fields must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceMatcher {
    pub(crate) address: Option<AddressPattern>,
    pub(crate) vendor: Option<u16>,
    pub(crate) device: Option<u16>,
    pub(crate) subsystem_vendor: Option<u16>,
    pub(crate) subsystem_device: Option<u16>,
    pub(crate) class: Option<ClassPattern>,
    pub(crate) physical_slot: Option<SlotName>,
}

impl DeviceMatcher {
    /// Whether `facts` satisfies every field of this matcher. `address_text` is the canonical
    /// form of `facts.address`, formatted once per decision by the caller.
    pub(crate) fn matches(&self, facts: &DeviceFacts, address_text: &str) -> bool {
        self.address
            .as_ref()
            .is_none_or(|a| a.matches(facts.address, address_text))
            && self.vendor.is_none_or(|v| v == facts.vendor)
            && self.device.is_none_or(|v| v == facts.device)
            && self
                .subsystem_vendor
                .is_none_or(|v| v == facts.subsystem_vendor)
            && self
                .subsystem_device
                .is_none_or(|v| v == facts.subsystem_device)
            && self.class.is_none_or(|c| c.matches(facts.class))
            && self
                .physical_slot
                .is_none_or(|s| facts.physical_slot == Some(s))
    }

    /// True when the matcher pins nothing but an address: no ID, class or slot. Such a matcher
    /// follows whatever card is put at that address later.
    pub fn is_address_only(&self) -> bool {
        self.address.is_some()
            && DeviceMatcher {
                address: None,
                ..self.clone()
            }
            .is_empty()
    }

    /// True when the matcher says nothing about where the device sits (no address, no physical
    /// slot): it holds every card with those ids or that class, wherever it is.
    pub fn is_id_only(&self) -> bool {
        self.address.is_none() && self.physical_slot.is_none() && !self.is_empty()
    }

    /// True when no field is set (such a matcher is refused at load time: it would match every
    /// device, which an admin should have to say outright).
    pub(crate) fn is_empty(&self) -> bool {
        *self == DeviceMatcher::default()
    }

    /// The address pattern, if the matcher has one.
    pub fn address(&self) -> Option<&AddressPattern> {
        self.address.as_ref()
    }
    pub fn vendor(&self) -> Option<u16> {
        self.vendor
    }
    pub fn device(&self) -> Option<u16> {
        self.device
    }
    pub fn subsystem_vendor(&self) -> Option<u16> {
        self.subsystem_vendor
    }
    pub fn subsystem_device(&self) -> Option<u16> {
        self.subsystem_device
    }
    pub fn class(&self) -> Option<ClassPattern> {
        self.class
    }
    /// The physical slot name, if the matcher has one.
    pub fn physical_slot(&self) -> Option<SlotName> {
        self.physical_slot
    }
}

/// A PCI address, exact or a glob over the canonical lowercase form `dddd:bb:dd.f`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressPattern {
    Exact(PciAddress),
    /// Lowercase, in the full form (a short pattern has had `0000:` prepended).
    Glob(String),
}

impl AddressPattern {
    /// Parses `BB:DD.F` or `DDDD:BB:DD.F`, optionally with `*` (any run of characters) and `?`
    /// (any one character). A pattern with one `:` is the short form and means domain `0000`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected DDDD:BB:DD.F or BB:DD.F, optionally with * or ? \
                        (for example \"0000:01:00.0\" or \"01:00.*\")";
        if text.is_empty() || text.len() > MAX_ADDRESS_PATTERN {
            return Err(format!(
                "address {text:?} is not an address pattern: {expected}"
            ));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '*' | '?')))
        {
            return Err(format!(
                "address {text:?} contains {bad:?}: only hex digits, ':', '.', '*' and '?' are allowed"
            ));
        }
        let lower = text.to_ascii_lowercase();
        let full = match lower.matches(':').count() {
            1 => format!("0000:{lower}"),
            2 => lower,
            _ => return Err(format!("address {text:?}: {expected}")),
        };
        if !full.contains(['*', '?']) {
            // Parse what the admin wrote, so the error quotes it (both forms are accepted).
            return text
                .parse::<PciAddress>()
                .map(AddressPattern::Exact)
                .map_err(|e| e.to_string());
        }
        if full.matches('.').count() > 1 {
            return Err(format!("address {text:?}: {expected}"));
        }
        // Without '*' the pattern has a fixed length, and it can match something exactly when
        // filling every '?' with '0' gives an address (0 is valid in every position).
        if !full.contains('*') && full.replace('?', "0").parse::<PciAddress>().is_err() {
            return Err(format!(
                "address {text:?} can never match a PCI address: {expected}"
            ));
        }
        Ok(AddressPattern::Glob(full))
    }

    fn matches(&self, address: PciAddress, address_text: &str) -> bool {
        match self {
            AddressPattern::Exact(a) => *a == address,
            AddressPattern::Glob(g) => glob_match(g.as_bytes(), address_text.as_bytes()),
        }
    }
}

impl fmt::Display for AddressPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressPattern::Exact(a) => write!(f, "{a}"),
            AddressPattern::Glob(g) => f.write_str(g),
        }
    }
}

/// Shell-style `*` / `?` matching of the whole of `text`, iteratively, in O(len(p) * len(t)).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the most recent '*': (pattern index after it, text index it covers to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A 24-bit PCI class code with a nibble mask: `"0200xx"` is network/ethernet, any prog-if.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassPattern {
    value: u32,
    mask: u32,
}

impl ClassPattern {
    /// Parses 2, 4 or 6 characters of hex digits or `x` (any nibble). Two or four characters
    /// match as a prefix: `"01"` is the same as `"01xxxx"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "write 2, 4 or 6 hex digits, with x for any nibble \
                    (for example \"01\" for all storage, \"0200xx\" for ethernet)";
        if text.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x")) {
            // "0x0300" would be read as six pattern characters with a wildcard second nibble,
            // silently matching other classes: refuse the prefix rather than guess.
            return Err(format!(
                "class {text:?} starts with 0x, which is ambiguous because x is the wildcard \
                 nibble: drop the prefix; {hint}"
            ));
        }
        if !matches!(text.len(), 2 | 4 | 6) {
            return Err(format!(
                "class {text:?} has {} characters: {hint}",
                text.len()
            ));
        }
        let (mut value, mut mask) = (0u32, 0u32);
        for c in text.chars() {
            let (v, m) = match c {
                'x' | 'X' => (0, 0),
                c => match c.to_digit(16) {
                    Some(d) => (d, 0xf),
                    None => return Err(format!("class {text:?} contains {c:?}: {hint}")),
                },
            };
            value = (value << 4) | v;
            mask = (mask << 4) | m;
        }
        let shift = 4 * (6 - text.len() as u32);
        Ok(ClassPattern {
            value: value << shift,
            mask: mask << shift,
        })
    }

    /// Whether the 24-bit `class` matches.
    pub fn matches(self, class: u32) -> bool {
        class & 0x00ff_ffff & self.mask == self.value
    }

    /// Whether the pattern fixes the base class (its first two characters are hex digits).
    pub fn pins_base_class(self) -> bool {
        self.mask & 0x00ff_0000 == 0x00ff_0000
    }

    /// Whether some class with base class `base` (the top byte: 0x01 storage, 0x02 network,
    /// 0x03 display, ...) matches.
    pub fn admits_base_class(self, base: u8) -> bool {
        let shift = 16;
        (u32::from(base) << shift) & self.mask & 0x00ff_0000 == self.value & 0x00ff_0000
    }
}

impl fmt::Display for ClassPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in (0..6).rev() {
            let shift = 4 * i;
            if (self.mask >> shift) & 0xf == 0 {
                f.write_str("x")?;
            } else {
                write!(f, "{:x}", (self.value >> shift) & 0xf)?;
            }
        }
        Ok(())
    }
}

/// Parses a 16-bit PCI ID (`vendor`, `device`, `subsystem_*`): exactly four hex digits, with an
/// optional `0x`, in any case.
pub fn parse_id(field: &str, text: &str) -> Result<u16, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        // Four checked hex digits always fit.
        Ok(u16::from_str_radix(digits, 16).expect("four hex digits"))
    } else {
        Err(format!(
            "{field} {text:?} is not a PCI ID: write exactly 4 hex digits as a string, \
             for example \"8086\" (lspci -nn shows them in [vendor:device])"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn address_patterns_match_as_documented() {
        // (pattern, address, matches)
        let table = [
            ("0000:01:00.0", "0000:01:00.0", true),
            ("0000:01:00.0", "0000:01:00.1", false),
            ("01:00.0", "0000:01:00.0", true),
            ("01:00.0", "0001:01:00.0", false),
            ("0000:01:00.*", "0000:01:00.0", true),
            ("0000:01:00.*", "0000:01:00.7", true),
            ("0000:01:00.*", "0000:01:01.0", false),
            ("01:00.*", "0000:01:00.3", true),
            ("01:00.*", "0001:01:00.3", false),
            ("0000:0?:00.0", "0000:05:00.0", true),
            ("0000:0?:00.0", "0000:15:00.0", false),
            ("*:01:00.0", "abcd:01:00.0", true),
            ("0000:01:*", "0000:01:1f.7", true),
            ("0000:01:*", "0000:02:00.0", false),
            ("01:*", "0000:01:03.0", true),
            ("*:*.*", "0000:ff:1f.7", true),
            ("*:*.*", "0001:00:00.0", false),
            ("0000:01:00.0", "0000:01:00.0", true),
            ("0000:0A:00.0", "0000:0a:00.0", true),
            ("0A:00.*", "0000:0a:00.2", true),
            ("0000:05:0?.?", "0000:05:02.0", true),
        ];
        for (pattern, address, expected) in table {
            let p = AddressPattern::parse(pattern).unwrap();
            let a = addr(address);
            assert_eq!(
                p.matches(a, &a.to_string()),
                expected,
                "{pattern} vs {address}"
            );
        }
    }

    #[test]
    fn exact_addresses_parse_to_exact() {
        assert_eq!(
            AddressPattern::parse("01:00.0").unwrap(),
            AddressPattern::Exact(addr("0000:01:00.0"))
        );
        assert_eq!(
            AddressPattern::parse("0000:0A:1F.7").unwrap(),
            AddressPattern::Exact(addr("0000:0a:1f.7"))
        );
        assert_eq!(
            AddressPattern::parse("01:00.*").unwrap(),
            AddressPattern::Glob("0000:01:00.*".into())
        );
    }

    #[test]
    fn bad_address_patterns_are_refused() {
        for bad in [
            "",
            "*",
            "01",
            "01:00",
            "0000:01:00.8",
            "01:20.0",
            "0000:01:00.0:0",
            "0000:01:00.0\n",
            " 01:00.0",
            "01:00.0/..",
            "0000:01:00.0.0",
            "01:00.9?",
            "0000:01:2?.0",
            "0000:01:00.?0",
            "0000:01:00.[01]",
            "g0:00.0",
            "01:00.0 ",
            "0000:01:00.*.*",
            "0000:0000:0000:0000:0000:0000:00.0",
        ] {
            assert!(
                AddressPattern::parse(bad).is_err(),
                "{bad:?} was accepted as {:?}",
                AddressPattern::parse(bad)
            );
        }
    }

    #[test]
    fn class_patterns() {
        // (pattern, class, matches)
        let table = [
            ("020000", 0x020000, true),
            ("020000", 0x020001, false),
            ("0200xx", 0x020080, true),
            ("0200xx", 0x020180, false),
            ("0200", 0x0200ff, true),
            ("0200", 0x020100, false),
            ("01", 0x010802, true),
            ("01", 0x010000, true),
            ("01", 0x020000, false),
            ("01xxxx", 0x0106ff, true),
            ("0x0000", 0x010000, false), // refused below; here only to document intent
            ("xx04xx", 0x060400, true),  // any PCI-to-PCI-style subclass 04
            ("xx04xx", 0x0c0600, false),
            ("0C03", 0x0c0330, true),
            ("0c03X0", 0x0c0330, true),
            ("0c03x0", 0x0c0331, false),
            ("xxxxxx", 0xabcdef, true),
            ("03", 0xff030000, true), // bits above the 24-bit class code are ignored
        ];
        for (pattern, class, expected) in table {
            if pattern.starts_with("0x") {
                assert!(ClassPattern::parse(pattern).is_err());
                continue;
            }
            let p = ClassPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(class), expected, "{pattern} vs {class:06x}");
        }
        assert_eq!(ClassPattern::parse("01").unwrap().to_string(), "01xxxx");
        assert_eq!(ClassPattern::parse("0C03X0").unwrap().to_string(), "0c03x0");
    }

    #[test]
    fn bad_class_patterns_are_refused() {
        for bad in [
            "", "0", "010", "01000", "0100000", "0x0300", "0X03", "01-000", "g1", "01 0", "0١",
            "ࠀ", "ࠀࠀ",
        ] {
            assert!(ClassPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ids() {
        for (text, value) in [
            ("8086", 0x8086),
            ("0x8086", 0x8086),
            ("0X10DE", 0x10de),
            ("10De", 0x10de),
            ("0000", 0),
            ("ffff", 0xffff),
        ] {
            assert_eq!(parse_id("vendor", text), Ok(value), "{text}");
        }
        for bad in [
            "", "808", "80866", "0x808", "+808", "-808", "8086 ", "0x", "0x0x80", "xyzw", "٠٠٠٠",
        ] {
            assert!(parse_id("vendor", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn matcher_is_a_conjunction() {
        let facts = DeviceFacts {
            address: addr("0000:01:00.0"),
            vendor: 0x8086,
            device: 0x10d3,
            subsystem_vendor: 0x8086,
            subsystem_device: 0xa01f,
            class: 0x020000,
            physical_slot: SlotName::new("3"),
        };
        let text = facts.address.to_string();
        let m = DeviceMatcher {
            address: Some(AddressPattern::parse("01:00.*").unwrap()),
            vendor: Some(0x8086),
            device: Some(0x10d3),
            subsystem_vendor: Some(0x8086),
            subsystem_device: Some(0xa01f),
            class: Some(ClassPattern::parse("0200").unwrap()),
            physical_slot: SlotName::new("3"),
        };
        assert!(m.matches(&facts, &text));
        let no_slot = DeviceFacts {
            physical_slot: None,
            ..facts
        };
        assert!(!m.matches(&no_slot, &text), "a slot matcher needs a slot");
        for wrong in [
            DeviceMatcher {
                vendor: Some(0x10de),
                ..m.clone()
            },
            DeviceMatcher {
                device: Some(0x10d4),
                ..m.clone()
            },
            DeviceMatcher {
                subsystem_vendor: Some(0x1af4),
                ..m.clone()
            },
            DeviceMatcher {
                subsystem_device: Some(0),
                ..m.clone()
            },
            DeviceMatcher {
                class: Some(ClassPattern::parse("01").unwrap()),
                ..m.clone()
            },
            DeviceMatcher {
                address: Some(AddressPattern::parse("02:00.0").unwrap()),
                ..m.clone()
            },
            DeviceMatcher {
                physical_slot: SlotName::new("4"),
                ..m.clone()
            },
        ] {
            assert!(!wrong.matches(&facts, &text), "{wrong:?}");
        }
    }

    /// A reference glob matcher by plain recursion, to check the iterative one against.
    fn glob_reference(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                glob_reference(&p[1..], t) || (!t.is_empty() && glob_reference(p, &t[1..]))
            }
            (Some(b'?'), Some(_)) => glob_reference(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => glob_reference(&p[1..], &t[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_reference(p in "[01:.*?]{0,10}", t in "[01:.]{0,10}") {
            prop_assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), glob_reference(p.as_bytes(), t.as_bytes()));
        }

        #[test]
        fn exact_pattern_matches_only_itself(d in any::<u16>(), b in any::<u8>(), dev in 0u8..32, f in 0u8..8,
                                             d2 in any::<u16>(), b2 in any::<u8>(), dev2 in 0u8..32, f2 in 0u8..8) {
            let a = PciAddress::new(d, b, dev, f).unwrap();
            let other = PciAddress::new(d2, b2, dev2, f2).unwrap();
            let p = AddressPattern::parse(&a.to_string()).unwrap();
            prop_assert!(p.matches(a, &a.to_string()));
            prop_assert_eq!(p.matches(other, &other.to_string()), a == other);
        }

        #[test]
        fn class_pattern_text_never_panics(s in "[0-9a-fA-FxX]{0,7}|.{0,8}") {
            let _ = ClassPattern::parse(&s);
            let _ = AddressPattern::parse(&s);
            let _ = parse_id("vendor", &s);
        }
    }
}
