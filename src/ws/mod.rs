//! Sans-I/O WebSocket codec (RFC 6455, server side): the upgrade handshake,
//! the frame decoder and the frame encoder.
//!
//! Nothing here touches a socket. The connection task reads into a
//! `BytesMut` and hands it to [`Decoder::decode`], writes the `Bytes` that
//! [`encode`] returns, and answers the upgrade request with what
//! [`check_upgrade`] and [`response_101`] produce. Keeping I/O out makes the
//! protocol rules testable byte by byte and lets one encoded broadcast frame
//! be shared by every recipient.
//!
//! No extension is implemented, so permessage-deflate is never offered and
//! the RSV bits must always be zero.

mod decoder;
mod frame;
mod handshake;
mod header;
mod utf8;

pub use decoder::Decoder;
pub use frame::{
    apply_mask, encode, encode_close, is_valid_close_code, CloseFrame, Message, OpCode, WsError,
    MAX_CLOSE_REASON, MAX_CONTROL_PAYLOAD,
};
pub use handshake::{accept_key, check_upgrade, response_101, Upgrade, UpgradeError};
