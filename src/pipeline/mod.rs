//! Between source and sink: batching and sink writes (`batch`), and the
//! dead-letter queue (`dlq`).

pub mod batch;
pub mod dlq;
