//! Binlog values to the text TiCDC's canal-json would carry for them: every
//! value a JSON string (or null), so that a change reads the same whether it
//! came through TiCDC and Kafka or straight from a MySQL binlog.
//!
//! Dates and times are written as MySQL prints them (`2024-05-01 12:00:00`);
//! TIMESTAMP columns in UTC. Binary strings map each byte to the code point
//! of the same value (ISO-8859-1), as Canal and TiCDC do. ENUM and SET
//! columns carry their member names, BIT columns their unsigned value.

use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::source::binlog::schema::ColumnInfo;

fn json_string(s: &str) -> Box<RawValue> {
    // A String always serialises.
    serde_json::value::to_raw_value(s).expect("string serialises")
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

/// ISO-8859-1: byte n is code point n.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn fraction(micros: u32, digits: usize) -> String {
    if digits == 0 {
        return String::new();
    }
    let s = format!("{micros:06}");
    format!(".{}", &s[..digits.min(6)])
}

/// Fractional-second digits of a DATETIME2/TIME2/TIMESTAMP2 column (its metadata byte).
pub fn fsp(t: ColumnType, meta: &[u8]) -> usize {
    match t {
        ColumnType::MYSQL_TYPE_DATETIME2
        | ColumnType::MYSQL_TYPE_TIME2
        | ColumnType::MYSQL_TYPE_TIMESTAMP2 => meta.first().copied().unwrap_or(0).min(6) as usize,
        _ => 0,
    }
}

fn unix_to_text(secs: i64, micros: u32, digits: usize) -> String {
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            fraction(micros, digits)
        ),
        Err(_) => secs.to_string(),
    }
}

/// Fixes a value parsed as signed when the column is unsigned (possible
/// without full row metadata, which is what carries signedness).
fn unsigned_fix(v: i64, t: ColumnType) -> u64 {
    let bits = match t {
        ColumnType::MYSQL_TYPE_TINY => 8,
        ColumnType::MYSQL_TYPE_SHORT => 16,
        ColumnType::MYSQL_TYPE_INT24 => 24,
        ColumnType::MYSQL_TYPE_LONG => 32,
        _ => 64,
    };
    if v >= 0 || bits == 64 {
        v as u64
    } else {
        (v as u64) & ((1u64 << bits) - 1)
    }
}

/// The canal-json value of one column.
pub fn to_json(
    value: Option<&BinlogValue<'_>>,
    t: ColumnType,
    digits: usize,
    col: &ColumnInfo,
) -> Box<RawValue> {
    let value = match value {
        None | Some(BinlogValue::Value(Value::NULL)) => return null(),
        Some(v) => v,
    };
    let text = match value {
        BinlogValue::Value(v) => match v {
            Value::NULL => return null(),
            Value::Int(i) if t == ColumnType::MYSQL_TYPE_ENUM => {
                match usize::try_from(*i).ok().and_then(|i| i.checked_sub(1)) {
                    Some(idx) => col
                        .members
                        .get(idx)
                        .cloned()
                        .unwrap_or_else(|| i.to_string()),
                    None => String::new(),
                }
            }
            Value::Int(i) if t == ColumnType::MYSQL_TYPE_TIMESTAMP => unix_to_text(*i, 0, 0),
            Value::Int(i) if col.unsigned => unsigned_fix(*i, t).to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Double(d) => d.to_string(),
            Value::Date(y, mo, d, h, mi, s, us) => {
                if matches!(
                    t,
                    ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE
                ) {
                    format!("{y:04}-{mo:02}-{d:02}")
                } else {
                    format!(
                        "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}",
                        fraction(*us, digits)
                    )
                }
            }
            Value::Time(neg, days, h, m, s, us) => {
                let hours = *days * 24 + u32::from(*h);
                format!(
                    "{}{hours:02}:{m:02}:{s:02}{}",
                    if *neg { "-" } else { "" },
                    fraction(*us, digits)
                )
            }
            Value::Bytes(b) => match t {
                ColumnType::MYSQL_TYPE_TIMESTAMP2 => {
                    // "seconds" or "seconds.micros" since the epoch.
                    let s = String::from_utf8_lossy(b);
                    let (secs, micros) = s.split_once('.').unwrap_or((&s, "0"));
                    unix_to_text(
                        secs.parse().unwrap_or(0),
                        micros.parse().unwrap_or(0),
                        digits,
                    )
                }
                ColumnType::MYSQL_TYPE_BIT => b
                    .iter()
                    .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
                    .to_string(),
                ColumnType::MYSQL_TYPE_SET => {
                    let mut mask = b
                        .iter()
                        .rev()
                        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
                    let mut names = Vec::new();
                    let mut i = 0;
                    while mask != 0 {
                        if mask & 1 == 1 {
                            names
                                .push(col.members.get(i).cloned().unwrap_or_else(|| i.to_string()));
                        }
                        mask >>= 1;
                        i += 1;
                    }
                    names.join(",")
                }
                _ if col.binary => latin1(b),
                _ => match std::str::from_utf8(b) {
                    Ok(s) => s.to_owned(),
                    // A single-byte charset such as latin1.
                    Err(_) => latin1(b),
                },
            },
        },
        BinlogValue::Jsonb(j) => match serde_json::Value::try_from(j.clone()) {
            Ok(v) => v.to_string(),
            Err(e) => format!("<invalid JSON in binlog: {e}>"),
        },
        BinlogValue::JsonDiff(d) => format!("{d:?}"),
    };
    json_string(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(mysql_type: &str) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            mysql_type: mysql_type.into(),
            unsigned: mysql_type.ends_with("unsigned"),
            binary: mysql_type.contains("binary") || mysql_type.contains("blob"),
            members: vec!["new".into(), "paid".into(), "shipped".into()],
        }
    }

    fn text(v: Value, t: ColumnType, digits: usize, c: &str) -> String {
        to_json(Some(&BinlogValue::Value(v)), t, digits, &col(c))
            .get()
            .to_owned()
    }

    #[test]
    fn values_render_as_canal_json_strings() {
        use ColumnType::*;
        assert_eq!(text(Value::NULL, MYSQL_TYPE_LONG, 0, "int"), "null");
        assert_eq!(text(Value::Int(-5), MYSQL_TYPE_LONG, 0, "int"), r#""-5""#);
        assert_eq!(
            text(Value::Int(-1), MYSQL_TYPE_TINY, 0, "tinyint unsigned"),
            r#""255""#
        );
        assert_eq!(
            text(
                Value::Bytes(b"12.50".to_vec()),
                MYSQL_TYPE_NEWDECIMAL,
                0,
                "decimal"
            ),
            r#""12.50""#
        );
        assert_eq!(
            text(
                Value::Date(2024, 2, 29, 0, 0, 0, 0),
                MYSQL_TYPE_DATE,
                0,
                "date"
            ),
            r#""2024-02-29""#
        );
        assert_eq!(
            text(
                Value::Date(2024, 2, 29, 13, 4, 5, 120000),
                MYSQL_TYPE_DATETIME2,
                3,
                "datetime"
            ),
            r#""2024-02-29 13:04:05.120""#
        );
        assert_eq!(
            text(
                Value::Bytes(b"0".to_vec()),
                MYSQL_TYPE_TIMESTAMP2,
                0,
                "timestamp"
            ),
            r#""1970-01-01 00:00:00""#
        );
        assert_eq!(
            text(
                Value::Time(true, 1, 2, 3, 4, 0),
                MYSQL_TYPE_TIME2,
                0,
                "time"
            ),
            r#""-26:03:04""#
        );
        assert_eq!(text(Value::Int(2), MYSQL_TYPE_ENUM, 0, "enum"), r#""paid""#);
        assert_eq!(text(Value::Int(0), MYSQL_TYPE_ENUM, 0, "enum"), r#""""#);
        assert_eq!(
            text(Value::Bytes(vec![0b101]), MYSQL_TYPE_SET, 0, "set"),
            r#""new,shipped""#
        );
        assert_eq!(
            text(Value::Bytes(vec![1, 0]), MYSQL_TYPE_BIT, 0, "bit"),
            r#""256""#
        );
        assert_eq!(
            text(
                Value::Bytes(vec![0, 0xff, b'a']),
                MYSQL_TYPE_BLOB,
                0,
                "blob"
            ),
            r#""\u0000ÿa""#
        );
        assert_eq!(
            text(
                Value::Bytes("zoë 🚀".as_bytes().to_vec()),
                MYSQL_TYPE_VARCHAR,
                0,
                "varchar"
            ),
            r#""zoë 🚀""#
        );
        assert_eq!(
            text(Value::Double(1.5), MYSQL_TYPE_DOUBLE, 0, "double"),
            r#""1.5""#
        );
    }
}
