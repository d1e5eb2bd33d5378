//! The events the store measurement writes: deterministic, spread over 3
//! databases, 12 tables and one day of commit time.

use std::sync::Arc;

use cdc_monitor::event::{ChangeEvent, Op, Row, SourcePosition};
use serde_json::json;

const DATABASES: [&str; 3] = ["shop", "crm", "billing"];
/// Tables the events are spread over; the table filter asks for them.
pub const TABLES: [&str; 12] = [
    "orders",
    "users",
    "payments",
    "invoices",
    "items",
    "carts",
    "shipments",
    "refunds",
    "accounts",
    "contacts",
    "sessions",
    "coupons",
];

/// Words the generated rows are made of; the text search looks for them.
pub const WORDS: [&str; 16] = [
    "amber", "basil", "cedar", "delta", "ember", "fjord", "gravel", "harbor", "indigo", "juniper",
    "kestrel", "lantern", "meadow", "nickel", "orchid", "pepper",
];

/// Deterministic events: 3 databases, 12 tables, mostly inserts and
/// updates, commit times spread over one day ending now.
pub struct Generator {
    state: u64,
    start_ms: i64,
    step_ms: f64,
}

impl Generator {
    /// A generator for `events` events, the last committed now.
    pub fn new(events: usize) -> Generator {
        let day = 86_400_000;
        Generator {
            state: 0x9e37_79b9_7f4a_7c15,
            start_ms: crate::now_millis() - day,
            step_ms: day as f64 / events.max(1) as f64,
        }
    }

    /// splitmix64: fast, good enough to pick words and tables.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The commit time of event `i` before its jitter, Unix milliseconds.
    pub fn commit_time(&self, i: usize) -> i64 {
        self.start_ms + (i as f64 * self.step_ms) as i64
    }

    /// Event `i`; call in order of `i`.
    pub fn event(&mut self, i: usize) -> ChangeEvent {
        let r = self.next();
        let table = TABLES[(r % TABLES.len() as u64) as usize];
        let database = DATABASES[((r >> 8) % DATABASES.len() as u64) as usize];
        let op = match (r >> 16) % 1000 {
            0 => Op::Ddl,
            1..=40 => Op::Delete,
            41..=300 => Op::Update,
            _ => Op::Insert,
        };
        let mut words = |n: usize| {
            (0..n)
                .map(|_| WORDS[(self.next() % WORDS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let note = format!("{} #{}", words(6), i % 997);
        let name = words(2);
        let id = (i as u64).to_string();
        // Commit order follows arrival order, give or take a few seconds.
        let commit_time_ms = self.commit_time(i) + (r >> 32) as i64 % 5000;
        let data = Row::from_values([
            ("id", json!(id)),
            ("name", json!(name)),
            ("email", json!(format!("user{i}@example.com"))),
            ("amount", json!(format!("{}.{:02}", r % 10_000, r % 100))),
            (
                "status",
                json!(["new", "paid", "shipped", "void"][(r % 4) as usize]),
            ),
            ("note", json!(note)),
            ("updated_at", json!("2024-05-01 12:00:00")),
        ]);
        let (old, sql) = match op {
            Op::Update => (Some(Row::from_values([("status", json!("new"))])), None),
            Op::Ddl => (
                None,
                Some(format!("ALTER TABLE `{table}` ADD COLUMN `c{i}` INT")),
            ),
            _ => (None, None),
        };
        let (pk, data) = if op == Op::Ddl {
            (Row::default(), Row::default())
        } else {
            (Row::from_values([("id", json!(id))]), data)
        };
        ChangeEvent {
            database: database.to_owned(),
            table: table.to_owned(),
            op,
            pk,
            data,
            old,
            commit_time_ms,
            commit_ts: Some(450_000_000_000_000_000 + i as u64),
            sql,
            mysql_types: None,
            large_message: None,
            reason: None,
            position: SourcePosition::Kafka {
                topic: Arc::from("tidb-cdc"),
                partition: (i % 3) as i32,
                offset: (i / 3) as i64,
            },
        }
    }
}
