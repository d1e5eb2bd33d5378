//! `cdc-monitor bench`: CPU cost of decode + bulk encode, printed as numbers.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crate::canal::{decode, Decoded};
use crate::event::SourcePosition;
use crate::sink::elasticsearch::bulk;

/// `bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events for the decode + encode measurement.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
}

/// A canal-json INSERT like TiCDC writes for a small table.
pub fn sample_message(id: u64, commit_ts: u64) -> String {
    format!(
        concat!(
            r#"{{"id":0,"database":"appdb","table":"users","pkNames":["id"],"isDdl":false,"type":"INSERT","#,
            r#""es":{es},"ts":{es},"sql":"","sqlType":{{"id":-5,"username":12,"email":12,"created_at":93}},"#,
            r#""mysqlType":{{"id":"bigint","username":"varchar","email":"varchar","created_at":"timestamp"}},"#,
            r#""old":null,"data":[{{"id":"{id}","username":"user{id}","email":"user{id}@example.com","created_at":"2024-01-01 00:00:00"}}],"#,
            r#""_tidb":{{"commitTs":{ts}}}}}"#
        ),
        id = id,
        ts = commit_ts,
        es = commit_ts >> 18
    )
}

/// Runs the benchmarks and returns the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let mut out = String::new();
    let n = args.events.max(1);
    let messages: Vec<String> = (0..n as u64)
        .map(|i| sample_message(i, 445_318_436_315_725_826 + i))
        .collect();
    let topic: Arc<str> = Arc::from("tidb-cdc");
    let mut body = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    let mut events = 0usize;
    for (i, m) in messages.iter().enumerate() {
        let pos = SourcePosition::Kafka {
            topic: topic.clone(),
            partition: 0,
            offset: i as i64,
        };
        if let Decoded::Events(evs) = decode(m.as_bytes(), &pos)? {
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
    Ok(out)
}
