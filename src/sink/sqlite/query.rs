//! `/api/events` and `/api/stats` on the embedded store.
//!
//! Pages are newest first by `seq` and keyset-paginated: the cursor is the
//! last seq returned and the next page reads `seq < cursor`. New events get
//! higher seqs, so pages already started never see them, and an event that
//! existed when page 1 was read is neither repeated nor skipped.
//!
//! Each page is one index range read backwards, chosen by the filter:
//! - `q`: the FTS5 index, in rowid (= seq) order, outermost;
//! - a commit-time bound: the commit-time index when at most
//!   `NARROW_TIME_RANGE` events fall in the range (read them, keep the top
//!   `limit`); else the `zones` blocks whose commit-time range meets it,
//!   newest first, each read backwards until the page is full;
//! - otherwise `events_db`, `events_tbl` or `events_op` (each ends in seq),
//!   or the table itself.
//!
//! With a commit-time bound, every read is also limited to the seqs of the
//! zones that can hold a match, so `q` or a table filter combined with an
//! old time range starts there rather than at the newest event.
//!
//! The planner is given no statistics (no ANALYZE), so these choices stay
//! as tested; `single_filters_read_their_index_backwards_without_sorting`
//! checks them.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};
use serde_json::value::RawValue;

use super::schema::ZONE_BITS;
use crate::sink::query::{EventFilter, EventPage, QueryError, RateSeries, Stats, MAX_LIMIT};

/// Up to this many events in a commit-time range, reading them all through
/// the commit-time index beats walking zones.
const NARROW_TIME_RANGE: i64 = 10_000;

/// Most buckets one rate series has (the API asks for at most 360).
const MAX_BUCKETS: u64 = 10_000;

/// A validated `EventFilter`, ready to run on a connection.
#[derive(Debug, Clone)]
pub struct Plan {
    db: Option<String>,
    tbl: Option<String>,
    op: Option<&'static str>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    /// The FTS5 query for `q`.
    fts: Option<String>,
    /// Answer with an empty page without asking SQLite.
    matches_nothing: bool,
    /// Only events with a lower seq.
    before: i64,
    limit: usize,
    /// `NARROW_TIME_RANGE`; lowered by tests to reach the zone walk.
    narrow_time_range: i64,
}

/// One stored event as read: seq, doc_id, document.
type Found = (i64, Vec<u8>, String);

impl Plan {
    /// Checks `filter`; a bad limit or cursor is `QueryError::Invalid`.
    pub fn new(filter: &EventFilter) -> Result<Plan, QueryError> {
        if filter.limit == 0 || filter.limit > MAX_LIMIT {
            return Err(QueryError::Invalid {
                param: "limit",
                reason: format!("must be 1 to {MAX_LIMIT}, got {}", filter.limit),
            });
        }
        let before = match &filter.cursor {
            None => i64::MAX,
            Some(c) => decode_cursor(c).ok_or_else(|| QueryError::Invalid {
                param: "cursor",
                reason: format!("{c:?} is not the next_cursor of a page"),
            })?,
        };
        let (fts, no_terms) = match filter.q.as_deref().map(str::trim) {
            None | Some("") => (None, false),
            Some(q) => match fts_query(q) {
                Some(f) => (Some(f), false),
                // Only punctuation: no stored word can match it.
                None => (None, true),
            },
        };
        let empty_range = matches!((filter.since_ms, filter.until_ms), (Some(s), Some(u)) if s > u);
        Ok(Plan {
            db: filter.database.clone(),
            tbl: filter.table.clone(),
            op: filter.op.map(|o| o.as_str()),
            since_ms: filter.since_ms,
            until_ms: filter.until_ms,
            fts,
            matches_nothing: no_terms || empty_range,
            before,
            limit: filter.limit,
            narrow_time_range: NARROW_TIME_RANGE,
        })
    }

    /// Reads one page.
    pub fn run(&self, conn: &Connection) -> rusqlite::Result<EventPage> {
        let seqs = if self.matches_nothing {
            None
        } else {
            self.seqs(conn)?
        };
        let mut found = match seqs {
            None => Vec::new(),
            Some(seqs) if self.fts.is_some() => {
                let (sql, args) = self.text_sql(seqs);
                self.fetch(conn, &sql, &args)?
            }
            Some(seqs) if self.since_ms.is_some() || self.until_ms.is_some() => {
                self.by_time(conn, seqs)?
            }
            Some(seqs) => {
                let (sql, args) = self.index_sql(seqs);
                self.fetch(conn, &sql, &args)?
            }
        };
        let more = found.len() > self.limit;
        found.truncate(self.limit);
        let next_cursor = if more {
            found.last().map(|(seq, _, _)| encode_cursor(*seq))
        } else {
            None
        };
        let events = found
            .into_iter()
            .map(|(_, id, doc)| with_id(&id, &doc))
            .collect::<rusqlite::Result<_>>()?;
        Ok(EventPage {
            events,
            next_cursor,
        })
    }

    /// The seqs this page may come from: below the cursor and, with a time
    /// filter, within the zones whose commit times meet it (so that text and
    /// index reads combined with a time range start near it); `None` when
    /// no zone does.
    fn seqs(&self, conn: &Connection) -> rusqlite::Result<Option<Seqs>> {
        if self.since_ms.is_none() && self.until_ms.is_none() {
            return Ok(Some(Seqs {
                from: 0,
                before: self.before,
            }));
        }
        let (first, last): (Option<i64>, Option<i64>) = conn
            .prepare_cached(
                "SELECT min(zone), max(zone) FROM zones
                 WHERE zone <= ?1 AND max_commit_ms >= ?2 AND min_commit_ms <= ?3",
            )?
            .query_row(
                params![
                    (self.before - 1) >> ZONE_BITS,
                    self.since_ms.unwrap_or(i64::MIN),
                    self.until_ms.unwrap_or(i64::MAX)
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
        Ok(first.zip(last).map(|(first, last)| Seqs {
            from: first << ZONE_BITS,
            before: self.before.min((last + 1) << ZONE_BITS),
        }))
    }

    /// `AND …` for every filter but `q`; time columns wrapped in `+` when
    /// the commit-time index must not be chosen for them.
    fn conditions(&self, sql: &mut String, args: &mut Vec<Value>, time_index: bool) {
        let t = if time_index { "" } else { "+" };
        if let Some(db) = &self.db {
            sql.push_str(" AND e.db = ?");
            args.push(Value::Text(db.clone()));
        }
        if let Some(tbl) = &self.tbl {
            sql.push_str(" AND e.tbl = ?");
            args.push(Value::Text(tbl.clone()));
        }
        if let Some(op) = self.op {
            sql.push_str(" AND e.op = ?");
            args.push(Value::Text(op.to_owned()));
        }
        if let Some(since) = self.since_ms {
            sql.push_str(&format!(" AND {t}e.commit_time_ms >= ?"));
            args.push(Value::Integer(since));
        }
        if let Some(until) = self.until_ms {
            sql.push_str(&format!(" AND {t}e.commit_time_ms <= ?"));
            args.push(Value::Integer(until));
        }
    }

    fn fetch(&self, conn: &Connection, sql: &str, args: &[Value]) -> rusqlite::Result<Vec<Found>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect()
    }

    /// Newest first through whichever of the table and its indexes fits.
    fn index_sql(&self, seqs: Seqs) -> (String, Vec<Value>) {
        let mut sql = String::from(
            "SELECT e.seq, e.doc_id, e.doc FROM events e WHERE e.seq >= ? AND e.seq < ?",
        );
        let mut args = vec![Value::Integer(seqs.from), Value::Integer(seqs.before)];
        self.conditions(&mut sql, &mut args, false);
        sql.push_str(" ORDER BY e.seq DESC LIMIT ?");
        args.push(Value::Integer(self.limit as i64 + 1));
        (sql, args)
    }

    /// Newest first through the text index.
    fn text_sql(&self, seqs: Seqs) -> (String, Vec<Value>) {
        // CROSS JOIN keeps the text index outermost: it yields seqs newest
        // first, and each is checked against the other filters by rowid.
        let mut sql = String::from(
            "SELECT e.seq, e.doc_id, e.doc FROM events_fts CROSS JOIN events e ON e.seq = events_fts.rowid
             WHERE events_fts MATCH ? AND events_fts.rowid >= ? AND events_fts.rowid < ?",
        );
        let mut args = vec![
            Value::Text(self.fts.clone().unwrap_or_default()),
            Value::Integer(seqs.from),
            Value::Integer(seqs.before),
        ];
        self.conditions(&mut sql, &mut args, false);
        sql.push_str(" ORDER BY events_fts.rowid DESC LIMIT ?");
        args.push(Value::Integer(self.limit as i64 + 1));
        (sql, args)
    }

    fn by_time(&self, conn: &Connection, seqs: Seqs) -> rusqlite::Result<Vec<Found>> {
        let since = self.since_ms.unwrap_or(i64::MIN);
        let until = self.until_ms.unwrap_or(i64::MAX);
        let in_range: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY events_commit_time
                 WHERE commit_time_ms >= ?1 AND commit_time_ms <= ?2 AND seq >= ?3 AND seq < ?4
                 LIMIT ?5)",
            )?
            .query_row(
                params![since, until, seqs.from, seqs.before, self.narrow_time_range],
                |r| r.get(0),
            )?;
        if in_range < self.narrow_time_range {
            // Sort seqs only (the index covers them when time is the only
            // filter), then read the page's documents: sorting whole rows
            // would copy every document in the range.
            let mut sql = String::from(
                "SELECT e.seq FROM events e INDEXED BY events_commit_time WHERE e.seq >= ? AND e.seq < ?",
            );
            let mut args = vec![Value::Integer(seqs.from), Value::Integer(seqs.before)];
            self.conditions(&mut sql, &mut args, true);
            sql.push_str(" ORDER BY e.seq DESC LIMIT ?");
            args.push(Value::Integer(self.limit as i64 + 1));
            let found: Vec<i64> = conn
                .prepare_cached(&sql)?
                .query_map(params_from_iter(&args), |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut load =
                conn.prepare_cached("SELECT seq, doc_id, doc FROM events WHERE seq = ?1")?;
            return found
                .into_iter()
                .map(|seq| load.query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
                .collect();
        }
        let zones: Vec<i64> = conn
            .prepare_cached(
                "SELECT zone FROM zones WHERE zone >= ?1 AND zone <= ?2
                 AND max_commit_ms >= ?3 AND min_commit_ms <= ?4 ORDER BY zone DESC",
            )?
            .query_map(
                params![
                    seqs.from >> ZONE_BITS,
                    (seqs.before - 1) >> ZONE_BITS,
                    since,
                    until
                ],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<_>>()?;
        let mut found = Vec::with_capacity(self.limit + 1);
        for zone in zones {
            let zone_seqs = Seqs {
                from: zone << ZONE_BITS,
                before: ((zone + 1) << ZONE_BITS).min(seqs.before),
            };
            let (sql, mut args) = self.index_sql(zone_seqs);
            if let Some(last) = args.last_mut() {
                *last = Value::Integer((self.limit + 1 - found.len()) as i64);
            }
            found.extend(self.fetch(conn, &sql, &args)?);
            if found.len() > self.limit {
                break;
            }
        }
        Ok(found)
    }
}

/// A half-open range of seqs.
#[derive(Debug, Clone, Copy)]
struct Seqs {
    from: i64,
    before: i64,
}

/// The FTS5 query for user input: each whitespace-separated word becomes a
/// quoted phrase (inner `"` doubled), so no character is FTS5 syntax, and
/// all must match. Words without a letter or digit are left out (the
/// tokenizer drops punctuation anyway); `None` when nothing is left.
pub fn fts_query(q: &str) -> Option<String> {
    let phrases: Vec<String> = q
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!phrases.is_empty()).then(|| phrases.join(" "))
}

fn encode_cursor(seq: i64) -> String {
    seq.to_string()
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    cursor.parse::<i64>().ok().filter(|seq| *seq > 0)
}

/// The stored document with `"id"` added first.
pub(super) fn with_id(id: &[u8], doc: &str) -> rusqlite::Result<Box<RawValue>> {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let rest = doc.strip_prefix('{').unwrap_or(doc).trim_start();
    let sep = if rest.starts_with('}') { "" } else { "," };
    RawValue::from_string(format!("{{\"id\":\"{hex}\"{sep}{rest}")).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A validated stats request.
#[derive(Debug, Clone)]
pub struct StatsRequest {
    now_ms: i64,
    bucket_s: i64,
    buckets: i64,
}

impl StatsRequest {
    /// Checks the window and bucket: whole seconds, the bucket at most the
    /// window, at most `MAX_BUCKETS` buckets.
    pub fn new(
        window: Duration,
        bucket: Duration,
        now_ms: i64,
    ) -> Result<StatsRequest, QueryError> {
        let invalid = |param, reason: String| QueryError::Invalid { param, reason };
        if bucket < Duration::from_secs(1) || bucket.subsec_nanos() != 0 {
            return Err(invalid(
                "bucket",
                format!("must be whole seconds, at least 1, got {bucket:?}"),
            ));
        }
        if window < bucket {
            return Err(invalid(
                "window",
                format!("must be at least the bucket {bucket:?}, got {window:?}"),
            ));
        }
        let buckets = window.as_secs().div_ceil(bucket.as_secs());
        if buckets > MAX_BUCKETS {
            return Err(invalid(
                "bucket",
                format!("{buckets} buckets, at most {MAX_BUCKETS}"),
            ));
        }
        Ok(StatsRequest {
            now_ms,
            bucket_s: bucket.as_secs() as i64,
            buckets: buckets as i64,
        })
    }

    /// Reads the counts and the rate series.
    ///
    /// Buckets are aligned to multiples of the bucket width, so a chart
    /// refreshed later keeps its bucket edges; the newest bucket is the one
    /// in progress, and its rate is over the time elapsed in it (at least
    /// 1 s), as the Elasticsearch sink answers.
    pub fn run(&self, conn: &Connection) -> rusqlite::Result<Stats> {
        let mut stats = Stats {
            bucket_seconds: self.bucket_s as u64,
            ..Stats::default()
        };
        let mut stmt =
            conn.prepare_cached("SELECT db, tbl, op, events FROM counts WHERE events > 0")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (db, tbl, op, n): (String, String, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let n = n.max(0) as u64;
            stats.total += n;
            *stats.by_op.entry(op).or_default() += n;
            *stats.by_table.entry(format!("{db}.{tbl}")).or_default() += n;
        }
        let now_s = self.now_ms.div_euclid(1000);
        let b = self.bucket_s;
        let last_start = now_s - now_s.rem_euclid(b);
        let first_start = last_start - (self.buckets - 1) * b;
        let mut series: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut stmt = conn.prepare_cached(
            "SELECT (second - ?1) / ?2, db, tbl, sum(events) FROM rate
             WHERE second >= ?1 AND second <= ?3 GROUP BY 1, 2, 3",
        )?;
        let mut rows = stmt.query(params![first_start, b, now_s])?;
        while let Some(r) = rows.next()? {
            let (k, db, tbl, n): (i64, String, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let counts = series
                .entry(format!("{db}.{tbl}"))
                .or_insert_with(|| vec![0; self.buckets as usize]);
            if let Some(c) = usize::try_from(k).ok().and_then(|k| counts.get_mut(k)) {
                *c += n;
            }
        }
        stats.rate = series
            .into_iter()
            .map(|(table, counts)| RateSeries {
                table,
                points: counts
                    .into_iter()
                    .enumerate()
                    .map(|(k, n)| {
                        let start = first_start + k as i64 * b;
                        let elapsed_ms = (self.now_ms - start * 1000).clamp(1000, b * 1000);
                        (start * 1000, n as f64 * 1000.0 / elapsed_ms as f64)
                    })
                    .collect(),
            })
            .collect();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::event::{ChangeEvent, Op};
    use crate::sink::sqlite::tests::{cfg, event, open_with, write};
    use crate::sink::sqlite::{Batch, SqliteSink};
    use crate::sink::Sink;

    const BASE_MS: i64 = 1_700_000_000_000;
    const DBS: [&str; 2] = ["app", "crm"];
    const TABLES: [&str; 3] = ["users", "orders", "items"];
    const OPS: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Ddl];

    /// Notes with punctuation FTS5 would read as syntax if not quoted.
    const NOTES: [&str; 6] = [
        "alpha beta",
        "o'brien-smith pays",
        "key:value \"quoted\" text",
        "gamma NEAR(alpha) AND OR NOT",
        "price 12.50 (net) 100%",
        "c++ & c# -- minus",
    ];

    /// 60 varied events, in arrival order.
    fn varied() -> Vec<ChangeEvent> {
        (0..60u64)
            .map(|i| {
                let n = i as usize;
                event(
                    DBS[n % 2],
                    TABLES[n % 3],
                    OPS[n % 4],
                    i,
                    BASE_MS + i as i64 * 1000,
                    NOTES[n % NOTES.len()],
                )
            })
            .collect()
    }

    async fn store_with(events: &[ChangeEvent]) -> (tempfile::TempDir, SqliteSink) {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        for chunk in events.chunks(25) {
            write(&sink, chunk).await;
        }
        (dir, sink)
    }

    fn ids(page: &EventPage) -> Vec<String> {
        page.events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e.get()).unwrap();
                v["id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    fn id_of(e: &ChangeEvent) -> String {
        e.document_id().to_string()
    }

    /// What a filter without `q` must return: matching events, newest arrival first.
    fn expected(events: &[ChangeEvent], f: &EventFilter) -> Vec<String> {
        events
            .iter()
            .rev()
            .filter(|e| f.database.as_ref().is_none_or(|d| &e.database == d))
            .filter(|e| f.table.as_ref().is_none_or(|t| &e.table == t))
            .filter(|e| f.op.is_none_or(|o| e.op == o))
            .filter(|e| f.since_ms.is_none_or(|s| e.commit_time_ms >= s))
            .filter(|e| f.until_ms.is_none_or(|u| e.commit_time_ms <= u))
            .map(id_of)
            .collect()
    }

    /// Every page of `f`, following cursors, through `Plan::run` (after `tweak`).
    fn all_pages(sink: &SqliteSink, f: &EventFilter, tweak: impl Fn(&mut Plan)) -> Vec<String> {
        let mut f = f.clone();
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let mut plan = Plan::new(&f).unwrap();
            tweak(&mut plan);
            let page = sink.store.read(|c| plan.run(c)).unwrap();
            out.extend(ids(&page));
            match page.next_cursor {
                Some(c) => {
                    assert_eq!(page.events.len(), f.limit, "a short page with a cursor");
                    f.cursor = Some(c);
                }
                None => {
                    assert!(page.events.len() <= f.limit);
                    return out;
                }
            }
        }
        panic!("pagination does not end");
    }

    fn filters() -> Vec<EventFilter> {
        let f = EventFilter {
            limit: 7,
            ..EventFilter::default()
        };
        vec![
            f.clone(),
            EventFilter {
                database: Some("crm".into()),
                ..f.clone()
            },
            EventFilter {
                table: Some("orders".into()),
                ..f.clone()
            },
            EventFilter {
                op: Some(Op::Delete),
                ..f.clone()
            },
            EventFilter {
                since_ms: Some(BASE_MS + 10_000),
                ..f.clone()
            },
            EventFilter {
                until_ms: Some(BASE_MS + 33_000),
                ..f.clone()
            },
            EventFilter {
                since_ms: Some(BASE_MS + 5_000),
                until_ms: Some(BASE_MS + 44_000),
                ..f.clone()
            },
            EventFilter {
                database: Some("app".into()),
                table: Some("users".into()),
                ..f.clone()
            },
            EventFilter {
                table: Some("items".into()),
                op: Some(Op::Ddl),
                since_ms: Some(BASE_MS + 20_000),
                ..f.clone()
            },
            EventFilter {
                database: Some("nope".into()),
                ..f.clone()
            },
            EventFilter {
                since_ms: Some(BASE_MS + 50_000),
                until_ms: Some(BASE_MS + 40_000),
                ..f
            },
        ]
    }

    #[tokio::test]
    async fn each_filter_and_combination_pages_through_exactly_the_matching_events() {
        let events = varied();
        let (_dir, sink) = store_with(&events).await;
        for f in filters() {
            let want = expected(&events, &f);
            assert_eq!(all_pages(&sink, &f, |_| {}), want, "{f:?}");
            // Through the zones as well as through the commit-time index.
            let zones = all_pages(&sink, &f, |p| p.narrow_time_range = 1);
            assert_eq!(zones, want, "zones: {f:?}");
            // One big page equals the pages joined.
            let page = sink
                .events(&EventFilter {
                    limit: 1000,
                    ..f.clone()
                })
                .await
                .unwrap();
            assert_eq!(ids(&page), want, "one page: {f:?}");
            assert_eq!(page.next_cursor, None);
        }
        // The expectations themselves are not trivial.
        let sizes: Vec<usize> = filters()
            .iter()
            .map(|f| expected(&events, f).len())
            .collect();
        assert_eq!(sizes, [60, 30, 20, 15, 50, 34, 40, 10, 4, 0, 0]);
    }

    #[tokio::test]
    async fn time_filters_agree_through_index_and_zones_across_many_zones() {
        // Commit times scattered over arrival (a permutation), then in order.
        let mut all: Vec<_> = (0..9000u64)
            .map(|i| {
                let t = BASE_MS + ((i * 7919) % 9000) as i64 * 1000;
                event("app", TABLES[i as usize % 3], Op::Insert, i, t, "z")
            })
            .collect();
        all.extend((9000..10_000u64).map(|i| {
            event(
                "app",
                "users",
                Op::Update,
                i,
                BASE_MS + i as i64 * 1000,
                "z",
            )
        }));
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        for chunk in all.chunks(2000) {
            write(&sink, chunk).await;
        }
        let zones: i64 = sink
            .store
            .read(|c| c.query_row("SELECT count(*) FROM zones", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(zones, 3);
        for (since, until, table) in [
            (0, 500, None),
            (8_990, 9_500, None),
            (9_500, 20_000, Some("users")),
            (100, 8_000, Some("items")),
        ] {
            let f = EventFilter {
                since_ms: Some(BASE_MS + since * 1000),
                until_ms: Some(BASE_MS + until * 1000),
                table: table.map(str::to_owned),
                limit: 400,
                ..EventFilter::default()
            };
            let want = expected(&all, &f);
            assert!(want.len() > 400, "{f:?}");
            assert_eq!(all_pages(&sink, &f, |_| {}), want, "{f:?}");
            assert_eq!(
                all_pages(&sink, &f, |p| p.narrow_time_range = 1),
                want,
                "zones: {f:?}"
            );
            // Every event says "z": text search bounded by the zones.
            let f = EventFilter {
                q: Some("z".into()),
                ..f
            };
            assert_eq!(all_pages(&sink, &f, |_| {}), want, "text: {f:?}");
        }
    }

    #[tokio::test]
    async fn text_search_finds_words_in_row_values_and_punctuation_is_harmless() {
        let events = varied();
        let (_dir, sink) = store_with(&events).await;
        let with_notes = |notes: &[usize], table: Option<&str>| -> Vec<String> {
            events
                .iter()
                .rev()
                .filter(|e| {
                    notes
                        .iter()
                        .any(|&n| e.data.text("note").as_deref() == Some(NOTES[n]))
                })
                .filter(|e| table.is_none_or(|t| e.table == t))
                .map(id_of)
                .collect()
        };
        let search = |q: &str, table: Option<&str>| {
            let f = EventFilter {
                q: Some(q.to_owned()),
                table: table.map(str::to_owned),
                limit: 4,
                ..EventFilter::default()
            };
            all_pages(&sink, &f, |_| {})
        };
        assert_eq!(search("alpha", None), with_notes(&[0, 3], None));
        assert_eq!(search("ALPHA beta", None), with_notes(&[0], None));
        assert_eq!(search("o'brien-smith", None), with_notes(&[1], None));
        assert_eq!(search("brien", None), with_notes(&[1], None));
        assert_eq!(search("key:value", None), with_notes(&[2], None));
        assert_eq!(search("\"quoted\"", None), with_notes(&[2], None));
        assert_eq!(search("NEAR(alpha)", None), with_notes(&[3], None));
        assert_eq!(search("AND OR NOT", None), with_notes(&[3], None));
        assert_eq!(search("12.50 (net)", None), with_notes(&[4], None));
        assert_eq!(search("100%", None), with_notes(&[4], None));
        assert_eq!(search("c++ -- minus", None), with_notes(&[5], None));
        assert_eq!(search("minus c\"", None), with_notes(&[5], None));
        assert_eq!(
            search("alpha", Some("users")),
            with_notes(&[0, 3], Some("users"))
        );
        assert!(!with_notes(&[0, 3], Some("users")).is_empty());
        // Combined with a time range.
        let f = EventFilter {
            q: Some("alpha".into()),
            since_ms: Some(BASE_MS + 10_000),
            until_ms: Some(BASE_MS + 40_000),
            limit: 2,
            ..EventFilter::default()
        };
        let want: Vec<String> = with_notes(&[0, 3], None)
            .into_iter()
            .filter(|id| {
                events.iter().any(|e| {
                    &id_of(e) == id
                        && (BASE_MS + 10_000..=BASE_MS + 40_000).contains(&e.commit_time_ms)
                })
            })
            .collect();
        assert_eq!(want.len(), 10);
        assert_eq!(all_pages(&sink, &f, |_| {}), want);
        // A value that is the primary key and id.
        assert_eq!(search("17", None), vec![id_of(&events[17])]);
        // Nothing but punctuation matches nothing, and is not an error.
        assert!(search("-", None).is_empty());
        assert!(search("\" * : ^ (", None).is_empty());
        assert!(search("alpha zeta", None).is_empty());
        // Blank is no text filter at all.
        assert_eq!(search("  ", None).len(), 60);
    }

    #[tokio::test]
    async fn the_ddl_statement_is_searchable() {
        let mut ddl = event("app", "users", Op::Ddl, 1, BASE_MS, "");
        ddl.pk = Default::default();
        ddl.data = Default::default();
        ddl.sql = Some("ALTER TABLE users ADD COLUMN nickname VARCHAR(20)".into());
        let other = event("app", "users", Op::Insert, 2, BASE_MS, "x");
        let (_dir, sink) = store_with(&[ddl.clone(), other]).await;
        let page = sink
            .events(&EventFilter {
                q: Some("nickname".into()),
                limit: 10,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(&page), vec![id_of(&ddl)]);
    }

    #[tokio::test]
    async fn pages_stay_stable_while_events_arrive_between_them() {
        let events = varied();
        let (_dir, sink) = store_with(&events[..40]).await;
        let mut extra = 1000u64;
        for f in [
            EventFilter {
                limit: 6,
                ..EventFilter::default()
            },
            EventFilter {
                limit: 3,
                table: Some("users".into()),
                ..EventFilter::default()
            },
            EventFilter {
                limit: 3,
                q: Some("alpha".into()),
                ..EventFilter::default()
            },
            EventFilter {
                limit: 3,
                since_ms: Some(BASE_MS),
                ..EventFilter::default()
            },
        ] {
            let before = sink
                .events(&EventFilter {
                    limit: 1000,
                    ..f.clone()
                })
                .await
                .unwrap();
            assert!(before.events.len() > 2 * f.limit, "{f:?}");
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = sink
                    .events(&EventFilter {
                        cursor: cursor.clone(),
                        ..f.clone()
                    })
                    .await
                    .unwrap();
                seen.extend(ids(&page));
                // New matching events arrive between pages.
                let new: Vec<_> = (0..3)
                    .map(|k| {
                        extra += 1;
                        event("app", "users", OPS[k], extra, BASE_MS + 1, "alpha")
                    })
                    .collect();
                write(&sink, &new).await;
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(seen, ids(&before), "{f:?}");
            let unique: HashSet<_> = seen.iter().collect();
            assert_eq!(unique.len(), seen.len());
        }
    }

    #[test]
    fn bad_limits_and_cursors_are_invalid() {
        let f = |limit, cursor: Option<&str>| {
            Plan::new(&EventFilter {
                limit,
                cursor: cursor.map(str::to_owned),
                ..EventFilter::default()
            })
        };
        for (limit, cursor, param) in [
            (0, None, "limit"),
            (MAX_LIMIT + 1, None, "limit"),
            (10, Some("abc"), "cursor"),
            (10, Some("-4"), "cursor"),
            (10, Some(""), "cursor"),
        ] {
            match f(limit, cursor) {
                Err(QueryError::Invalid { param: p, .. }) => assert_eq!(p, param),
                other => panic!("{limit} {cursor:?}: {other:?}"),
            }
        }
        assert!(f(MAX_LIMIT, Some("12")).is_ok());
    }

    #[test]
    fn user_input_becomes_quoted_phrases() {
        assert_eq!(fts_query("a-b c").as_deref(), Some("\"a-b\" \"c\""));
        assert_eq!(
            fts_query("say \"hi\"").as_deref(),
            Some("\"say\" \"\"\"hi\"\"\"")
        );
        assert_eq!(fts_query("- * :"), None);
    }

    /// EXPLAIN QUERY PLAN of the page query `f` leads to.
    fn query_plan(sink: &SqliteSink, f: &EventFilter) -> String {
        let plan = Plan::new(f).unwrap();
        let seqs = Seqs {
            from: 0,
            before: 1000,
        };
        let (sql, args) = match &plan.fts {
            Some(_) => plan.text_sql(seqs),
            None => plan.index_sql(seqs),
        };
        sink.store
            .read(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt.query_map(params_from_iter(&args), |r| r.get::<_, String>(3))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap()
            .join("; ")
    }

    #[tokio::test]
    async fn single_filters_read_their_index_backwards_without_sorting() {
        let (_dir, sink) = store_with(&varied()).await;
        let f = EventFilter {
            limit: 50,
            ..EventFilter::default()
        };
        for (filter, index) in [
            (f.clone(), "INTEGER PRIMARY KEY"),
            (
                EventFilter {
                    database: Some("app".into()),
                    ..f.clone()
                },
                "INDEX events_db",
            ),
            (
                EventFilter {
                    table: Some("users".into()),
                    ..f.clone()
                },
                "INDEX events_tbl",
            ),
            (
                EventFilter {
                    op: Some(Op::Update),
                    ..f.clone()
                },
                "INDEX events_op",
            ),
            (
                EventFilter {
                    q: Some("alpha".into()),
                    ..f.clone()
                },
                "events_fts VIRTUAL TABLE",
            ),
        ] {
            let plan = query_plan(&sink, &filter);
            assert!(plan.contains(index), "{filter:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?}: {plan}");
        }
    }

    #[tokio::test]
    async fn stats_count_by_op_and_table_and_rate_by_ingest_second() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        let now_ms = 1_700_000_095_500;
        let mut id = 0;
        let mut batch = |db: &str, tbl: &str, op: Op, n: usize, ingested_ms: i64| {
            let events: Vec<_> = (0..n)
                .map(|_| {
                    id += 1;
                    event(db, tbl, op, id, BASE_MS, "s")
                })
                .collect();
            sink.store
                .store_batch(&Batch::new(&events, &[], ingested_ms))
                .unwrap();
        };
        batch("app", "users", Op::Insert, 20, 1_700_000_041_000); // bucket 0
        batch("app", "orders", Op::Update, 30, 1_700_000_085_999); // bucket 4
        batch("app", "users", Op::Delete, 11, 1_700_000_093_000); // bucket 5, 5.5 s so far
        batch("crm", "users", Op::Insert, 5, 1_700_000_000_000); // before the window
        let request =
            StatsRequest::new(Duration::from_secs(60), Duration::from_secs(10), now_ms).unwrap();
        let stats = sink.store.read(|c| request.run(c)).unwrap();
        assert_eq!(stats.total, 66);
        assert_eq!(stats.bucket_seconds, 10);
        let by_op: Vec<_> = stats.by_op.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(by_op, [("delete", 11), ("insert", 25), ("update", 30)]);
        let by_table: Vec<_> = stats
            .by_table
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            by_table,
            [("app.orders", 30), ("app.users", 31), ("crm.users", 5)]
        );
        let starts: Vec<i64> = (0..6).map(|k| 1_700_000_040_000 + k * 10_000).collect();
        let series = |v: [f64; 6]| starts.iter().copied().zip(v).collect::<Vec<_>>();
        let rate: Vec<(&str, Vec<(i64, f64)>)> = stats
            .rate
            .iter()
            .map(|s| (s.table.as_str(), s.points.clone()))
            .collect();
        assert_eq!(
            rate,
            [
                ("app.orders", series([0.0, 0.0, 0.0, 0.0, 3.0, 0.0])),
                ("app.users", series([2.0, 0.0, 0.0, 0.0, 0.0, 2.0])),
            ]
        );
    }

    #[test]
    fn stats_windows_and_buckets_are_checked() {
        let s = |w, b| StatsRequest::new(Duration::from_secs(w), Duration::from_secs(b), 0);
        assert!(s(300, 10).is_ok());
        assert!(s(3600, 1).is_ok());
        assert!(s(7 * 86400, 3600).is_ok());
        let param = |r: Result<StatsRequest, QueryError>| match r {
            Err(QueryError::Invalid { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(s(300, 0)), "bucket");
        assert_eq!(param(s(5, 10)), "window");
        assert_eq!(param(s(86400, 1)), "bucket");
        assert_eq!(
            param(StatsRequest::new(
                Duration::from_secs(60),
                Duration::from_millis(1500),
                0
            )),
            "bucket"
        );
    }
}
