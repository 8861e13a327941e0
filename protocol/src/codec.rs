//! Framing and encoding: `u32` little-endian length, then bincode(version, message).

use std::io::{self, Read, Write};

use bincode::config::{self, Config};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Request, Response, WireError};

/// The protocol version both sides must speak.
pub const PROTOCOL_VERSION: u16 = 6;

/// The largest request payload the helper accepts. Requests are a few dozen bytes; the cap leaves
/// room for growth while keeping a hostile client's cost to the helper tiny.
pub const MAX_REQUEST_FRAME: usize = 4096;

/// The largest response payload a client accepts (a `list` of tens of thousands of devices).
pub const MAX_RESPONSE_FRAME: usize = 16 * 1024 * 1024;

fn request_config() -> impl Config {
    config::standard().with_limit::<MAX_REQUEST_FRAME>()
}

fn response_config() -> impl Config {
    config::standard().with_limit::<MAX_RESPONSE_FRAME>()
}

/// Reading a frame off a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames: the normal end of a conversation.
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("reading a frame")]
    Io(#[source] io::Error),
}

/// A frame's payload is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("protocol version {got}, expected {expected}")]
    VersionMismatch { got: u16, expected: u16 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
}

impl From<DecodeError> for WireError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::VersionMismatch { got, expected } => WireError::VersionMismatch {
                server: expected,
                client: got,
            },
            other => WireError::BadRequest {
                reason: other.to_string(),
            },
        }
    }
}

/// A message could not be encoded (too large for its frame limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding a message: {0}")]
pub struct EncodeError(String);

/// Reads one frame's payload. Refuses a length over `max` before reading the body, so a hostile
/// length prefix costs nothing. Timeouts are the stream's (set them on the socket).
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut len_bytes = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len_bytes[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(payload)
}

/// Writes one already-encoded frame (length prefix included) and flushes.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

fn encode<T: Serialize>(msg: &T, config: impl Config, max: usize) -> Result<Vec<u8>, EncodeError> {
    let mut frame = vec![0u8; 4];
    bincode::serde::encode_into_std_write(PROTOCOL_VERSION, &mut frame, config)
        .and_then(|_| bincode::serde::encode_into_std_write(msg, &mut frame, config))
        .map_err(|e| EncodeError(e.to_string()))?;
    let len = frame.len() - 4;
    if len > max {
        return Err(EncodeError(format!(
            "message of {len} bytes exceeds the frame limit of {max}"
        )));
    }
    // `len <= max` and both maxima fit in u32.
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

fn decode<T: DeserializeOwned>(payload: &[u8], config: impl Config) -> Result<T, DecodeError> {
    let malformed = |e: bincode::error::DecodeError| DecodeError::Malformed(e.to_string());
    let (version, used): (u16, usize) =
        bincode::serde::decode_from_slice(payload, config).map_err(malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::VersionMismatch {
            got: version,
            expected: PROTOCOL_VERSION,
        });
    }
    let rest = &payload[used..];
    let (msg, used): (T, usize) =
        bincode::serde::decode_from_slice(rest, config).map_err(malformed)?;
    if used != rest.len() {
        return Err(DecodeError::TrailingBytes(rest.len() - used));
    }
    Ok(msg)
}

/// Encodes a request as a complete frame.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, EncodeError> {
    encode(req, request_config(), MAX_REQUEST_FRAME)
}

/// Decodes a request payload (the frame without its length prefix).
pub fn decode_request(payload: &[u8]) -> Result<Request, DecodeError> {
    decode(payload, request_config())
}

/// Encodes a response as a complete frame.
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, EncodeError> {
    encode(resp, response_config(), MAX_RESPONSE_FRAME)
}

/// Decodes a response payload (the frame without its length prefix).
pub fn decode_response(payload: &[u8]) -> Result<Response, DecodeError> {
    decode(payload, response_config())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BindReport, DeviceInfo, Driver, MemberKind, PciAddress, Plan, PlanStep, ReleaseTarget,
        RuleRef, StepAction,
    };
    use proptest::prelude::*;

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn round_trip_request(req: &Request) -> Request {
        let frame = encode_request(req).unwrap();
        let payload = read_frame(&mut &frame[..], MAX_REQUEST_FRAME).unwrap();
        decode_request(&payload).unwrap()
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::List,
            Request::Bind {
                devices: vec![addr("05:02.0"), addr("05:01.0")],
                driver: Driver::VfioPci,
                group: true,
                dry_run: false,
                hold: true,
            },
            Request::Release {
                target: ReleaseTarget::Device(addr("abcd:05:1f.7")),
            },
            Request::Release {
                target: ReleaseTarget::User(1001),
            },
        ] {
            assert_eq!(round_trip_request(&req), req);
        }
    }

    #[test]
    fn responses_round_trip() {
        let resp = Response::Devices(vec![DeviceInfo {
            address: addr("01:00.0"),
            vendor: 0x8086,
            device: 0x10d3,
            subsystem_vendor: 0x8086,
            subsystem_device: 0,
            class: 0x020000,
            driver: Some("e1000e".into()),
            driver_override: None,
            iommu_group: Some(8),
            allowed: vec![Driver::VfioPci],
            holder: None,
            reserved: Some(crate::Reservation {
                driver: Driver::PciStub,
                rule: crate::RuleRef {
                    name: "parked".into(),
                    file: "/etc/vfio-gate/policy.toml".into(),
                    line: 3,
                },
                companion_of: Some(addr("05:02.0")),
            }),
        }]);
        let frame = encode_response(&resp).unwrap();
        let payload = read_frame(&mut &frame[..], MAX_RESPONSE_FRAME).unwrap();
        assert_eq!(decode_response(&payload).unwrap(), resp);
        let bound = Response::Bound(BindReport {
            plan: Plan {
                group: Some(11),
                steps: vec![PlanStep {
                    device: addr("05:01.0"),
                    kind: MemberKind::Endpoint,
                    vendor: 0x8086,
                    device_id: 0x100e,
                    driver: Some("e1000".into()),
                    action: StepAction::Bind {
                        driver: Driver::PciStub,
                        rule: RuleRef {
                            name: "r".into(),
                            file: "/etc/vfio-gate/policy.toml".into(),
                            line: 3,
                        },
                    },
                }],
            },
            dry_run: true,
            vfio_node: Some("/dev/vfio/11".into()),
        });
        let frame = encode_response(&bound).unwrap();
        assert_eq!(decode_response(&frame[4..]).unwrap(), bound);
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let mut frame = ((MAX_REQUEST_FRAME + 1) as u32).to_le_bytes().to_vec();
        // No body at all: the reader must not wait for it.
        assert!(matches!(
            read_frame(&mut &frame[..], MAX_REQUEST_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        frame = u32::MAX.to_le_bytes().to_vec();
        assert!(matches!(
            read_frame(&mut &frame[..], MAX_REQUEST_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn short_and_empty_frames() {
        assert!(matches!(
            read_frame(&mut &[][..], 10),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut &[1u8, 0][..], 10),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[5u8, 0, 0, 0, 1][..], 10),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[0u8; 4][..], 10),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut frame = encode_request(&Request::List).unwrap();
        frame.push(0);
        assert_eq!(
            decode_request(&frame[4..]),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn wrong_version_is_reported_as_such() {
        let mut payload = Vec::new();
        bincode::serde::encode_into_std_write(7u16, &mut payload, config::standard()).unwrap();
        payload.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            decode_request(&payload),
            Err(DecodeError::VersionMismatch {
                got: 7,
                expected: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn invalid_address_on_the_wire_is_malformed() {
        // A Release whose address string is "../../x": valid bincode, invalid address.
        let c = config::standard();
        let encode = |addr: &str| {
            let mut payload = Vec::new();
            bincode::serde::encode_into_std_write(PROTOCOL_VERSION, &mut payload, c).unwrap();
            bincode::serde::encode_into_std_write(2u32, &mut payload, c).unwrap(); // Release
            bincode::serde::encode_into_std_write(0u32, &mut payload, c).unwrap(); // Device
            bincode::serde::encode_into_std_write(addr, &mut payload, c).unwrap();
            payload
        };
        // The same bytes with a valid address decode, so the failure is the address's.
        assert_eq!(
            decode_request(&encode("0000:01:00.0")),
            Ok(Request::Release {
                target: ReleaseTarget::Device(addr("01:00.0"))
            })
        );
        let err = decode_request(&encode("../../x")).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Malformed(m) if m.contains("not a PCI address")),
            "{err}"
        );
    }

    #[test]
    fn huge_declared_lengths_inside_the_payload_hit_the_limit() {
        // A string claiming 2^40 bytes must fail on the limit, not try to allocate.
        let mut payload = Vec::new();
        let c = config::standard();
        bincode::serde::encode_into_std_write(PROTOCOL_VERSION, &mut payload, c).unwrap();
        bincode::serde::encode_into_std_write(2u32, &mut payload, c).unwrap(); // Release
        bincode::serde::encode_into_std_write(1u64 << 40, &mut payload, c).unwrap();
        assert!(matches!(
            decode_request(&payload),
            Err(DecodeError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = read_frame(&mut &bytes[..], MAX_REQUEST_FRAME) {
                prop_assert!(!p.is_empty() && p.len() <= MAX_REQUEST_FRAME);
            }
        }
    }
}
