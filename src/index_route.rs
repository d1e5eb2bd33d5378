//! `CDC_ES_INDEX` as a template: which index each event goes to.
//!
//! A plain name sends every event to one index. `{database}`, `{table}` and
//! a date of the event's commit time (`{yyyy.MM.dd}`, `{yyyy.MM}`, UTC) route
//! each event to an index of its own table or day. Everything an index name
//! depends on comes from the event itself, never from the clock, so a
//! replayed event lands in the same index as its first copy and meets it
//! there (same deterministic `_id`): replays stay harmless across days.
//!
//! The template must start with a literal: then one wildcard (`pattern`)
//! covers every expansion, for searches, the index template, Kibana and
//! Grafana.

use std::fmt;
use std::fmt::Write as _;

/// Longest index name Elasticsearch accepts, in bytes.
const MAX_INDEX_BYTES: usize = 255;
/// Longest database or table name (MySQL and TiDB identifiers: 64 characters,
/// one byte each once sanitised).
const MAX_NAME_BYTES: usize = 64;

/// Characters Elasticsearch refuses in an index name (besides upper case).
const FORBIDDEN: &str = " \"*\\<|,>/?#:{}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Database,
    Table,
    /// `{yyyy.MM.dd}`
    Day,
    /// `{yyyy.MM}`
    Month,
}

/// A parsed `CDC_ES_INDEX`: a fixed name or a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRoute {
    text: String,
    parts: Vec<Part>,
}

impl IndexRoute {
    /// Parses and validates `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<IndexRoute, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(0) if rest.starts_with('{') => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| "a `{` is not closed by `}`".to_owned())?;
                    parts.push(match &rest[1..end] {
                        "database" => Part::Database,
                        "table" => Part::Table,
                        "yyyy.MM.dd" => Part::Day,
                        "yyyy.MM" => Part::Month,
                        other => {
                            return Err(format!(
                            "unknown placeholder {{{other}}}: use {{database}}, {{table}}, {{yyyy.MM.dd}} or {{yyyy.MM}}"
                        ))
                        }
                    });
                    rest = &rest[end + 1..];
                }
                Some(0) => return Err("a `}` has no `{`".to_owned()),
                Some(i) => {
                    parts.push(Part::Literal(rest[..i].to_owned()));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        let Some(Part::Literal(first)) = parts.first() else {
            return Err(
                "must start with a fixed prefix before the first placeholder (e.g. cdc-{table}), so that one wildcard covers every index"
                    .to_owned(),
            );
        };
        if first.starts_with(['_', '-', '+', '.']) {
            return Err("must not start with _, -, + or .".to_owned());
        }
        for part in &parts {
            if let Part::Literal(l) = part {
                if l.chars()
                    .any(|c| c.is_ascii_uppercase() || FORBIDDEN.contains(c))
                {
                    return Err(format!(
                        "{l:?} is not valid in an Elasticsearch index name (lower case, none of {FORBIDDEN:?})"
                    ));
                }
            }
        }
        let route = IndexRoute {
            text: text.to_owned(),
            parts,
        };
        if route.longest() > MAX_INDEX_BYTES {
            return Err(format!(
                "an expansion can exceed {MAX_INDEX_BYTES} bytes (database and table names count {MAX_NAME_BYTES} each)"
            ));
        }
        Ok(route)
    }

    /// True when every event goes to one index.
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// True when the route holds a date placeholder (`{yyyy.MM.dd}`, `{yyyy.MM}`).
    pub fn has_date(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Day | Part::Month))
    }

    /// The index of an event of `database`.`table` committed at `commit_time_ms`.
    pub fn index_for(&self, database: &str, table: &str, commit_time_ms: i64) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        self.push_index(&mut out, database, table, commit_time_ms);
        out
    }

    /// `index_for` appended to `out`, so that a batch reuses one buffer.
    pub fn push_index(&self, out: &mut String, database: &str, table: &str, commit_time_ms: i64) {
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Database => push_sanitised(out, database),
                Part::Table => push_sanitised(out, table),
                Part::Day | Part::Month => {
                    let secs = commit_time_ms.div_euclid(1000);
                    // Out of range: the epoch, as `clock::rfc3339_millis` clamps.
                    let t = time::OffsetDateTime::from_unix_timestamp(secs)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                    // Writing into a String cannot fail.
                    let _ = write!(out, "{:04}.{:02}", t.year(), t.month() as u8);
                    if *part == Part::Day {
                        let _ = write!(out, ".{:02}", t.day());
                    }
                }
            }
        }
    }

    /// The wildcard covering every expansion: each placeholder becomes `*`.
    pub fn pattern(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                _ => "*",
            })
            .collect()
    }

    /// A name for the index template: the text without braces, lower case
    /// (`cdc-{table}` → `cdc-table`), distinct from a fixed index's name.
    pub fn template_name(&self) -> String {
        self.text
            .chars()
            .filter(|c| !matches!(c, '{' | '}'))
            .collect::<String>()
            .to_lowercase()
    }

    /// The longest name an expansion can have, in bytes.
    fn longest(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.len(),
                Part::Database | Part::Table => MAX_NAME_BYTES,
                Part::Day => "yyyy.mm.dd".len(),
                Part::Month => "yyyy.mm".len(),
            })
            .sum()
    }
}

impl fmt::Display for IndexRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Appends `name` lowercased, every character outside `a-z 0-9 _ - .`
/// replaced by `_` (so `Order Items` becomes `order_items`).
fn push_sanitised(out: &mut String, name: &str) {
    out.extend(name.chars().map(|c| match c.to_ascii_lowercase() {
        c @ ('a'..='z' | '0'..='9' | '_' | '-' | '.') => c,
        _ => '_',
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-31T23:59:59.999Z and one millisecond later.
    const LAST_MS_OF_JANUARY: i64 = 1_706_745_599_999;

    #[test]
    fn a_plain_name_is_one_fixed_index() {
        let r = IndexRoute::parse("cdc-events").unwrap();
        assert!(r.is_fixed());
        assert_eq!(r.index_for("shop", "users", 0), "cdc-events");
        assert_eq!(r.pattern(), "cdc-events");
    }

    #[test]
    fn table_templates_lowercase_and_sanitise_names() {
        let r = IndexRoute::parse("cdc-{database}-{table}").unwrap();
        assert!(!r.is_fixed());
        assert_eq!(
            r.index_for("Shop", "Order Items/Ü", 0),
            "cdc-shop-order_items__"
        );
        assert_eq!(r.pattern(), "cdc-*-*");
        assert_eq!(r.template_name(), "cdc-database-table");
    }

    #[test]
    fn the_date_is_the_commit_day_in_utc() {
        let r = IndexRoute::parse("cdc-events-{yyyy.MM.dd}").unwrap();
        assert_eq!(
            r.index_for("d", "t", LAST_MS_OF_JANUARY),
            "cdc-events-2024.01.31"
        );
        assert_eq!(
            r.index_for("d", "t", LAST_MS_OF_JANUARY + 1),
            "cdc-events-2024.02.01"
        );
        let m = IndexRoute::parse("cdc-{yyyy.MM}").unwrap();
        assert_eq!(m.index_for("d", "t", LAST_MS_OF_JANUARY), "cdc-2024.01");
        assert_eq!(r.pattern(), "cdc-events-*");
    }

    #[test]
    fn every_expansion_is_a_valid_index_name() {
        let r = IndexRoute::parse("cdc-{database}.{table}-{yyyy.MM.dd}").unwrap();
        for (db, table) in [("A B", "C*D"), ("ü", "#?,"), ("_x", "-y")] {
            let name = r.index_for(db, table, -1);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c)),
                "{name}"
            );
            assert!(name.starts_with("cdc-"), "{name}");
        }
    }

    #[test]
    fn templates_without_a_prefix_or_with_bad_parts_are_refused() {
        for bad in [
            "{table}",
            "{database}-cdc",
            "cdc-{Table}",
            "cdc-{table",
            "cdc-}",
            "CDC-{table}",
            "cdc {table}",
            "_cdc-{table}",
            "cdc-{yyyy-MM-dd}",
            "",
        ] {
            assert!(IndexRoute::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}-{{database}}-{{table}}", "x".repeat(130));
        assert!(IndexRoute::parse(&long).is_err());
    }
}
