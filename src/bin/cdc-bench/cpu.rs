//! Decode + bulk encode on one core, no I/O.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use cdc_monitor::canal::{Decoded, Decoder};
use cdc_monitor::event::SourcePosition;
use cdc_monitor::sink::elasticsearch::bulk;

use crate::sample;

/// Decodes `events` canal-json messages and bulk-encodes their events.
pub fn decode_encode(events: usize, out: &mut String) -> anyhow::Result<()> {
    let n = events.max(1);
    let messages: Vec<String> = (0..n as u64)
        .map(|i| sample::message(i, sample::BASE_TS + i))
        .collect();
    let topic: Arc<str> = Arc::from("tidb-cdc");
    let mut body = Vec::with_capacity(6 << 20);
    let started = Instant::now();
    let mut events = 0usize;
    // As the Kafka source decodes: one decoder for the stream.
    let mut decoder = Decoder::default();
    for (i, m) in messages.iter().enumerate() {
        let pos = SourcePosition::Kafka {
            topic: topic.clone(),
            partition: 0,
            offset: i as i64,
        };
        if let Decoded::Events(evs) = decoder.decode(m.as_bytes(), &pos)? {
            for e in &evs {
                bulk::encode(&mut body, "cdc-events", e, "2024-01-01T00:00:00.000Z");
                events += 1;
            }
        }
        if body.len() > (5 << 20) {
            body.clear();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "decode+encode: {events} events in {secs:.3} s = {:.0} events/s on one core",
        events as f64 / secs
    )?;
    Ok(())
}
