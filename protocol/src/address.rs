//! PCI addresses as the kernel names them in `/sys/bus/pci/devices`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PCI function address: domain, bus, device (0–31) and function (0–7).
///
/// Only valid addresses can be constructed, so a `PciAddress` is always safe to use as a single
/// path component under `/sys/bus/pci/devices/`: its text form is exactly twelve characters from
/// `[0-9a-f:.]`, never `..`, `/`, NUL or a newline.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    domain: u16,
    bus: u8,
    device: u8,
    function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "{0:?} is not a PCI address: expected DDDD:BB:DD.F or BB:DD.F (for example 0000:01:00.0)"
    )]
    Malformed(String),
    #[error("{0:?} is not a PCI address: the device number must be 00-1f")]
    DeviceOutOfRange(String),
    #[error("{0:?} is not a PCI address: the function number must be 0-7")]
    FunctionOutOfRange(String),
}

impl PciAddress {
    /// Builds an address from its parts, checking the device and function ranges.
    pub fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    pub fn domain(self) -> u16 {
        self.domain
    }
    pub fn bus(self) -> u8 {
        self.bus
    }
    pub fn device(self) -> u8 {
        self.device
    }
    pub fn function(self) -> u8 {
        self.function
    }

    /// The lspci-style short form (`01:00.0`) when the domain is 0, the full form otherwise.
    pub fn short(self) -> String {
        if self.domain == 0 {
            format!("{:02x}:{:02x}.{}", self.bus, self.device, self.function)
        } else {
            self.to_string()
        }
    }
}

fn hex_field(s: &str, whole: &str) -> Result<u32, AddressError> {
    // `from_str_radix` accepts a leading '+', so check the characters ourselves.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AddressError::Malformed(whole.to_owned()));
    }
    u32::from_str_radix(s, 16).map_err(|_| AddressError::Malformed(whole.to_owned()))
}

impl FromStr for PciAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || AddressError::Malformed(s.to_owned());
        // Fixed widths: "DDDD:BB:DD.F" (12) or "BB:DD.F" (7). Checking the length first bounds the
        // work and rejects padding, whitespace and trailing newlines outright.
        let (domain, rest) = match s.len() {
            12 => {
                let (d, rest) = s.split_at_checked(4).ok_or_else(malformed)?;
                let rest = rest.strip_prefix(':').ok_or_else(malformed)?;
                (hex_field(d, s)?, rest)
            }
            7 => (0, s),
            _ => return Err(malformed()),
        };
        let bytes = rest.as_bytes();
        if bytes.len() != 7 || bytes[2] != b':' || bytes[5] != b'.' {
            return Err(malformed());
        }
        let bus = hex_field(&rest[0..2], s)?;
        let device = hex_field(&rest[3..5], s)?;
        let function = hex_field(&rest[6..7], s)?;
        if device >= 32 {
            return Err(AddressError::DeviceOutOfRange(s.to_owned()));
        }
        if function >= 8 {
            return Err(AddressError::FunctionOutOfRange(s.to_owned()));
        }
        // The casts cannot truncate: each field is at most 4/2/2/1 hex digits and range-checked.
        Ok(Self {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl fmt::Debug for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PciAddress({self})")
    }
}

// On the wire and in JSON an address is its canonical text, parsed (and so validated) on the way in.
impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PciAddress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PCI address such as 0000:01:00.0")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PciAddress, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_full_and_short_forms() {
        let a: PciAddress = "0000:01:00.0".parse().unwrap();
        assert_eq!(a, PciAddress::new(0, 1, 0, 0).unwrap());
        assert_eq!("01:00.0".parse::<PciAddress>().unwrap(), a);
        assert_eq!(a.to_string(), "0000:01:00.0");
        assert_eq!(a.short(), "01:00.0");
        let b: PciAddress = "10DE:ff:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "10de:ff:1f.7");
        assert_eq!(b.short(), "10de:ff:1f.7");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "0",
            "01:00",
            "01:00.",
            "1:00.0",
            "001:00.0",
            "0000:01:00.0\n",
            "01:00.0\n",
            " 01:00.0",
            "0000:01:00.0\0",
            "0000:01:00.00",
            "00000:01:00.0",
            "0000-01:00.0",
            "0000:01-00.0",
            "0000:01:00:0",
            "../01:00.0",
            "0000:../00.0",
            "0000/01:00.0",
            "01:00./",
            "+1:00.0",
            "0x:00.0",
            "g000:01:00.0",
            "01:0g.0",
            "01:00.g",
            "01:00.8",
            "01:20.0",
            "01:ff.0",
            "٠١:٠٠.٠",
            "0000:01:00.0/../../..",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn range_errors_say_which_field() {
        assert!(matches!(
            "01:20.0".parse::<PciAddress>(),
            Err(AddressError::DeviceOutOfRange(_))
        ));
        assert!(matches!(
            "01:00.9".parse::<PciAddress>(),
            Err(AddressError::FunctionOutOfRange(_))
        ));
    }

    proptest! {
        #[test]
        fn display_round_trips(d in any::<u16>(), b in any::<u8>(), dev in 0u8..32, f in 0u8..8) {
            let a = PciAddress::new(d, b, dev, f).unwrap();
            let text = a.to_string();
            prop_assert_eq!(text.len(), 12);
            prop_assert!(text.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.'));
            prop_assert_eq!(text.parse::<PciAddress>().unwrap(), a);
            prop_assert_eq!(a.short().parse::<PciAddress>().unwrap(), a);
        }

        #[test]
        fn arbitrary_text_never_panics_and_only_valid_text_parses(s in ".{0,16}") {
            if let Ok(a) = s.parse::<PciAddress>() {
                // Whatever parsed must print back to the same address, lowercase.
                prop_assert_eq!(a.to_string().parse::<PciAddress>().unwrap(), a);
                prop_assert!(!s.contains('/') && !s.contains("..") && !s.contains('\0'));
            }
        }
    }
}
