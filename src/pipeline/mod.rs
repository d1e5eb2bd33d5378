//! Between source and sink: offset tracking (`ack`), batching and sink
//! writes (`batch`), and the dead-letter producer (`dlq`).

pub mod ack;
pub mod batch;
pub mod dlq;
