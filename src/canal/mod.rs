//! TiCDC canal-json: the wire format (`message`) and its decoding into
//! normalised events (`decode`). No I/O here.

pub mod decode;
pub mod encode;
pub mod message;

pub use decode::{decode, DecodeError, Decoded, Decoder};
