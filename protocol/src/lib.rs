//! What crosses the vfio-gate socket, and nothing else.
//!
//! The unprivileged frontend (`vfio-gate`) and the privileged helper (`vfio-gated`) talk over a
//! Unix stream socket. Every message is one *frame*: a `u32` little-endian payload length, then a
//! bincode 2 payload made of the protocol version (`u16`) followed by one [`Request`] or
//! [`Response`].
//!
//! The helper treats every byte it receives as hostile, so this crate is built to make bad input
//! cheap to reject:
//! - a frame longer than [`MAX_REQUEST_FRAME`] is refused from its length prefix alone, before any
//!   allocation of that size;
//! - payloads decode with a bincode byte limit, and bytes left over after the message are an error;
//! - the version is decoded first, so a client from another release gets
//!   [`WireError::VersionMismatch`] rather than a confusing decode error;
//! - the only client-supplied values that name kernel objects are [`PciAddress`], which parses
//!   nothing but `DDDD:BB:DD.F` (or the short `BB:DD.F`), and [`Driver`], which has exactly the two
//!   drivers vfio-gate hands devices to. No other client text is ever used to build a path.

#![forbid(unsafe_code)]

mod address;
mod codec;
mod driver;
mod message;

pub use address::{AddressError, PciAddress};
pub use codec::{
    DecodeError, EncodeError, FrameError, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
    decode_request, decode_response, encode_request, encode_response, read_frame, write_frame,
};
pub use driver::{Driver, UnknownDriver};
pub use message::{
    BindReport, BusyReason, DenyReason, DeviceInfo, DriverVerdict, ExplainReport, Guard,
    GuardFinding, Holder, MAX_BIND_DEVICES, MemberKind, Plan, PlanStep, ReleaseReport,
    ReleaseTarget, ReleasedGroup, Request, Reservation, Response, RestoredDevice, RuleRef,
    StepAction, WireError,
};
