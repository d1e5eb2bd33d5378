//! Binlog values to the text TiCDC's canal-json would carry for them: every
//! value a JSON string (or null), so that a change reads the same whether it
//! came through TiCDC and Kafka or straight from a MySQL binlog.
//!
//! Dates and times are written as MySQL prints them (`2024-05-01 12:00:00`,
//! zero dates as `0000-00-00`); TIMESTAMP columns in UTC. Text is decoded
//! by the column's character set. Binary strings map each byte to the code
//! point of the same value (ISO-8859-1), as Canal and TiCDC do, BINARY(n)
//! padded to n bytes. ENUM and SET columns carry their member names, BIT
//! columns their unsigned value, FLOAT and DOUBLE in full as TiCDC writes
//! them (the shortest decimal that reads back as the same value, never an
//! exponent; the server prints fewer digits).

use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::source::binlog::charset::{Charset, CharsetError};
use crate::source::binlog::schema::ColumnInfo;

fn json_string(s: &str) -> Box<RawValue> {
    // A String always serialises.
    serde_json::value::to_raw_value(s).expect("string serialises")
}

/// JSON `null`.
pub fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
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

/// A TIMESTAMP as UTC text. Second 0 is the zero date: a real TIMESTAMP
/// starts at 1970-01-01 00:00:01 UTC, and the server stores
/// `0000-00-00 00:00:00` as 0.
fn unix_to_text(secs: i64, micros: u32, digits: usize) -> String {
    if secs == 0 && micros == 0 {
        return format!("0000-00-00 00:00:00{}", fraction(0, digits));
    }
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

/// A signed MEDIUMINT. mysql_common reads the 3 bytes into an i32 without
/// extending the sign (`eat_i24_le`), so -1 arrives as 16777215.
// Upstream bug (mysql_common 0.37.3, not yet reported in blackbeam/rust_mysql_common):
// `ParseBuf::eat_i24_le` zero-fills the top byte. Drop this once it sign-extends.
fn sign_extend_24(v: i64) -> i64 {
    let v = v & 0xff_ffff;
    if v >= 0x80_0000 {
        v - 0x100_0000
    } else {
        v
    }
}

/// A TIME(1) or TIME(2) from its 4 bytes as stored (3 bytes of integer
/// part, 1 of hundredths). mysql_common decodes negative values with a
/// fraction through an unsigned underflow (a panic in debug builds), so
/// the source hands these columns over raw (see `events::decoding_table_map`).
// Upstream bug (mysql_common 0.37.3, not yet reported in blackbeam/rust_mysql_common;
// related: #169): `my_time_packed_from_binary` keeps `frac` in a u32.
fn time2_hundredths(raw: [u8; 4], digits: usize) -> String {
    let mut int_part = i64::from(u32::from_be_bytes([0, raw[0], raw[1], raw[2]])) - 0x80_0000;
    let mut frac = i64::from(raw[3]);
    // Negative values keep the fraction in reverse order so that the bytes sort.
    if int_part < 0 && frac > 0 {
        int_part += 1;
        frac -= 0x100;
    }
    let packed = (int_part << 24) + frac * 10_000;
    let neg = packed < 0;
    let packed = packed.abs();
    let hms = packed >> 24;
    let micros = (packed % (1 << 24)) as u32;
    format!(
        "{}{:02}:{:02}:{:02}{}",
        if neg { "-" } else { "" },
        (hms >> 12) % (1 << 10),
        (hms >> 6) % (1 << 6),
        hms % (1 << 6),
        fraction(micros, digits)
    )
}

/// The raw 4 bytes of a TIME(1)/TIME(2) read as a TIMESTAMP(0): mysql_common
/// renders those as the big-endian u32 cast to i32, in decimal.
fn time2_raw(b: &[u8]) -> Option<[u8; 4]> {
    let v: i32 = std::str::from_utf8(b).ok()?.parse().ok()?;
    Some((v as u32).to_be_bytes())
}

/// An INET6 as MariaDB prints it: the first longest run of zero groups
/// becomes `::` even when it is a single group (RFC 5952 and Rust's
/// `Ipv6Addr` keep a lone `0`), and IPv4-compatible and IPv4-mapped
/// addresses end in dotted quads.
fn inet6_text(b: [u8; 16]) -> String {
    let w: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    // (position, length) of the first longest run of zero groups.
    let (mut gap, mut run) = ((0, 0), (0, 0));
    for (i, &x) in w.iter().enumerate() {
        if x == 0 {
            if run.1 == 0 {
                run.0 = i;
            }
            run.1 += 1;
            if run.1 > gap.1 {
                gap = run;
            }
        } else {
            run.1 = 0;
        }
    }
    let v4 = format!("{}.{}.{}.{}", b[12], b[13], b[14], b[15]);
    match gap {
        (0, 6) => return format!("::{v4}"),
        (0, 5) if w[5] == 0xffff => return format!("::ffff:{v4}"),
        _ => {}
    }
    let mut out = String::new();
    let mut i = 0;
    while i < 8 {
        if gap.1 > 0 && i == gap.0 {
            out.push_str(if i == 0 { "::" } else { ":" });
            i += gap.1;
            continue;
        }
        out.push_str(&format!("{:x}", w[i]));
        if i < 7 {
            out.push(':');
        }
        i += 1;
    }
    out
}

/// MariaDB's INET4, INET6 and UUID as the server prints them (the binlog
/// drops their trailing zero bytes like a BINARY's).
fn fixed_binary_text(b: &[u8], col: &ColumnInfo) -> Option<String> {
    let mut bytes = b.to_vec();
    bytes.resize(col.pad_to.max(b.len()), 0);
    match (col.mysql_type.as_str(), bytes.as_slice()) {
        ("inet4", &[a, b, c, d]) => Some(std::net::Ipv4Addr::new(a, b, c, d).to_string()),
        ("inet6", b) => Some(inet6_text(<[u8; 16]>::try_from(b).ok()?)),
        ("uuid", b) => Some(crate::source::binlog::events::uuid_text(
            &<[u8; 16]>::try_from(b).ok()?,
        )),
        _ => None,
    }
}

fn string_value(b: &[u8], col: &ColumnInfo) -> Result<String, CharsetError> {
    if crate::source::binlog::schema::is_fixed_binary_type(&col.mysql_type) {
        if let Some(text) = fixed_binary_text(b, col) {
            return Ok(text);
        }
    }
    match &col.charset {
        Some(Charset::Binary) if b.len() < col.pad_to => {
            let mut padded = b.to_vec();
            padded.resize(col.pad_to, 0);
            Charset::Binary.decode(&padded)
        }
        Some(cs) => cs.decode(b),
        None => Err(CharsetError::Unsupported(
            "unknown (the column is not in the table's schema)".to_owned(),
        )),
    }
}

/// The canal-json value of one column; an error when its bytes are not
/// text of the column's character set.
pub fn to_json(
    value: Option<&BinlogValue<'_>>,
    t: ColumnType,
    digits: usize,
    col: &ColumnInfo,
) -> Result<Box<RawValue>, CharsetError> {
    use ColumnType::*;
    let value = match value {
        None | Some(BinlogValue::Value(Value::NULL)) => return Ok(null()),
        Some(v) => v,
    };
    let text = match value {
        BinlogValue::Value(v) => match v {
            Value::NULL => return Ok(null()),
            Value::Int(i) if t == MYSQL_TYPE_ENUM => {
                match usize::try_from(*i).ok().and_then(|i| i.checked_sub(1)) {
                    Some(idx) => col
                        .members
                        .get(idx)
                        .cloned()
                        .unwrap_or_else(|| i.to_string()),
                    None => String::new(),
                }
            }
            Value::Int(i) if t == MYSQL_TYPE_TIMESTAMP => unix_to_text(*i, 0, 0),
            Value::Int(i) if col.unsigned => unsigned_fix(*i, t).to_string(),
            Value::Int(i) if t == MYSQL_TYPE_INT24 => sign_extend_24(*i).to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            // Written in full, as TiCDC's canal-json writes them (README).
            Value::Float(f) => f.to_string(),
            Value::Double(d) => d.to_string(),
            Value::Date(y, mo, d, h, mi, s, us) => {
                if matches!(t, MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE) {
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
                MYSQL_TYPE_TIMESTAMP2 => {
                    // "seconds" or "seconds.micros" since the epoch.
                    let s = String::from_utf8_lossy(b);
                    let (secs, micros) = s.split_once('.').unwrap_or((&s, "0"));
                    unix_to_text(
                        secs.parse().unwrap_or(0),
                        micros.parse().unwrap_or(0),
                        digits,
                    )
                }
                MYSQL_TYPE_TIME2 => match time2_raw(b) {
                    Some(raw) => time2_hundredths(raw, digits),
                    None => String::from_utf8_lossy(b).into_owned(),
                },
                // mysql_common adds 1900 to the stored byte, also to 0, the zero
                // year (upstream: not yet reported); 1900 is not a valid YEAR.
                MYSQL_TYPE_YEAR if b.as_slice() == b"1900" => "0000".to_owned(),
                MYSQL_TYPE_YEAR | MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => {
                    String::from_utf8_lossy(b).into_owned()
                }
                MYSQL_TYPE_BIT => b
                    .iter()
                    .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
                    .to_string(),
                MYSQL_TYPE_SET => {
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
                MYSQL_TYPE_GEOMETRY => Charset::Binary.decode(b)?,
                _ => string_value(b, col)?,
            },
        },
        BinlogValue::Jsonb(j) => match serde_json::Value::try_from(j.clone()) {
            Ok(v) => v.to_string(),
            Err(e) => format!("<invalid JSON in binlog: {e}>"),
        },
        BinlogValue::JsonDiff(d) => format!("{d:?}"),
    };
    Ok(json_string(&text))
}

/// Spatial types: their values are WKB with the SRID in front, as in the binlog.
fn is_spatial(mysql_type: &str) -> bool {
    matches!(
        mysql_type,
        "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
    )
}

/// The canal-json value of one column as a snapshot's SELECT returns it
/// (binary protocol, `character_set_results = binary`, `time_zone = '+00:00'`),
/// written by the same rules as the same value read from the binlog: most
/// values arrive as the binlog's do and go through [`to_json`]; the rest
/// arrive as the text the binlog's form is turned into.
pub fn snapshot_to_json(
    value: &Value,
    t: ColumnType,
    digits: usize,
    col: &ColumnInfo,
) -> Result<Box<RawValue>, CharsetError> {
    use ColumnType::*;
    let text = match value {
        Value::NULL => return Ok(null()),
        // MariaDB's INET4, INET6 and UUID arrive as the text the server prints.
        Value::Bytes(b) if crate::source::binlog::schema::is_fixed_binary_type(&col.mysql_type) => {
            String::from_utf8_lossy(b).into_owned()
        }
        // ENUM and SET arrive as member names (the binlog has numbers).
        Value::Bytes(b) if col.mysql_type == "enum" || col.mysql_type == "set" => {
            string_value(b, col)?
        }
        // MySQL's JSON arrives as text; the binlog's JSONB is written through serde_json.
        Value::Bytes(b) if t == MYSQL_TYPE_JSON => {
            match serde_json::from_slice::<serde_json::Value>(b) {
                Ok(v) => v.to_string(),
                Err(_) => String::from_utf8_lossy(b).into_owned(),
            }
        }
        Value::Bytes(b) if is_spatial(&col.mysql_type) => Charset::Binary.decode(b)?,
        // YEAR arrives as a number; the server prints four digits (0000).
        Value::Int(y) if t == MYSQL_TYPE_YEAR => format!("{y:04}"),
        Value::UInt(y) if t == MYSQL_TYPE_YEAR => format!("{y:04}"),
        // A TIMESTAMP arrives as a date in the session's time zone (UTC).
        Value::Date(..) if t == MYSQL_TYPE_TIMESTAMP => {
            return to_json(
                Some(&BinlogValue::Value(value.clone())),
                MYSQL_TYPE_DATETIME,
                digits,
                col,
            )
        }
        _ => return to_json(Some(&BinlogValue::Value(value.clone())), t, digits, col),
    };
    Ok(json_string(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(mysql_type: &str) -> ColumnInfo {
        let binary = mysql_type.contains("binary") || mysql_type.contains("blob");
        let charset = if binary {
            "binary"
        } else if mysql_type.starts_with("latin1 ") {
            "latin1"
        } else {
            "utf8mb4"
        };
        ColumnInfo {
            name: "c".into(),
            mysql_type: mysql_type.into(),
            unsigned: mysql_type.ends_with("unsigned"),
            charset: Some(Charset::from_name(charset)),
            pad_to: mysql_type
                .strip_prefix("binary(")
                .and_then(|n| n.trim_end_matches(')').parse().ok())
                .unwrap_or(0),
            members: vec!["new".into(), "paid".into(), "shipped".into()],
        }
    }

    fn text(v: Value, t: ColumnType, digits: usize, c: &str) -> String {
        to_json(Some(&BinlogValue::Value(v)), t, digits, &col(c))
            .unwrap()
            .get()
            .to_owned()
    }

    fn snap(v: Value, t: ColumnType, digits: usize, c: &str) -> String {
        snapshot_to_json(&v, t, digits, &col(c))
            .unwrap()
            .get()
            .to_owned()
    }

    /// Each case: a value as the reader gets it, the column's binlog type,
    /// fractional digits, column type, and the JSON text expected.
    type Case = (Value, ColumnType, usize, &'static str, &'static str);

    fn check(render: fn(Value, ColumnType, usize, &str) -> String, cases: Vec<Case>) {
        for (value, t, digits, c, want) in cases {
            let shown = format!("{value:?} as {c}");
            assert_eq!(render(value, t, digits, c), want, "{shown}");
        }
    }

    #[test]
    fn snapshot_values_read_as_their_binlog_values() {
        use ColumnType::*;
        #[rustfmt::skip]
        let cases = vec![
            (Value::Int(0), MYSQL_TYPE_YEAR, 0, "year", r#""0000""#),
            (Value::Int(2024), MYSQL_TYPE_YEAR, 0, "year", r#""2024""#),
            (Value::Date(2024, 5, 1, 12, 0, 0, 250_000), MYSQL_TYPE_TIMESTAMP, 3, "timestamp", r#""2024-05-01 12:00:00.250""#),
            (Value::Date(0, 0, 0, 0, 0, 0, 0), MYSQL_TYPE_TIMESTAMP, 0, "timestamp", r#""0000-00-00 00:00:00""#),
            (Value::Bytes(b"new,paid".to_vec()), MYSQL_TYPE_STRING, 0, "set", r#""new,paid""#),
            (Value::Bytes(vec![1, 2]), MYSQL_TYPE_BIT, 0, "bit", r#""258""#),
            (Value::NULL, MYSQL_TYPE_LONG, 0, "int", "null"),
        ];
        check(snap, cases);
        // Where the binlog and a query carry the same value differently.
        assert_eq!(
            snap(Value::Int(-1), MYSQL_TYPE_INT24, 0, "mediumint"),
            text(Value::Int(0xff_ffff), MYSQL_TYPE_INT24, 0, "mediumint")
        );
        assert_eq!(
            snap(Value::Float(0.1), MYSQL_TYPE_FLOAT, 0, "float"),
            text(Value::Float(0.1), MYSQL_TYPE_FLOAT, 0, "float")
        );
    }

    #[test]
    fn negative_signed_mediumint_keeps_its_sign() {
        use ColumnType::MYSQL_TYPE_INT24;
        assert_eq!(
            text(Value::Int(0xff_ffff), MYSQL_TYPE_INT24, 0, "mediumint"),
            r#""-1""#
        );
        assert_eq!(
            text(Value::Int(0x80_0000), MYSQL_TYPE_INT24, 0, "mediumint"),
            r#""-8388608""#
        );
        assert_eq!(
            text(Value::Int(0x7f_ffff), MYSQL_TYPE_INT24, 0, "mediumint"),
            r#""8388607""#
        );
        assert_eq!(
            text(
                Value::Int(0xff_ffff),
                MYSQL_TYPE_INT24,
                0,
                "mediumint unsigned"
            ),
            r#""16777215""#
        );
    }

    #[test]
    fn binary_keeps_its_trailing_zero_padding() {
        use ColumnType::MYSQL_TYPE_STRING;
        assert_eq!(
            text(
                Value::Bytes(b"abc".to_vec()),
                MYSQL_TYPE_STRING,
                0,
                "binary(16)"
            ),
            format!("\"abc{}\"", "\\u0000".repeat(13))
        );
        assert_eq!(
            text(Value::Bytes(Vec::new()), MYSQL_TYPE_STRING, 0, "binary(1)"),
            r#""\u0000""#
        );
        // CHAR drops trailing spaces and the server shows none: no padding.
        assert_eq!(
            text(Value::Bytes(b"ab".to_vec()), MYSQL_TYPE_STRING, 0, "char"),
            r#""ab""#
        );
    }

    #[test]
    fn negative_time_with_hundredths_decodes_from_the_raw_bytes() {
        use ColumnType::MYSQL_TYPE_TIME2;
        // The stored form of -00:00:00.5 in a TIME(1): 0x7fffff, 256 - 50.
        let raw =
            |b: [u8; 4]| Value::Bytes((u32::from_be_bytes(b) as i32).to_string().into_bytes());
        assert_eq!(
            text(raw([0x7f, 0xff, 0xff, 206]), MYSQL_TYPE_TIME2, 1, "time"),
            r#""-00:00:00.5""#
        );
        assert_eq!(
            text(raw([0x7f, 0xff, 0xff, 0xff]), MYSQL_TYPE_TIME2, 2, "time"),
            r#""-00:00:00.01""#
        );
        assert_eq!(
            text(raw([0x7f, 0xff, 0xff, 0]), MYSQL_TYPE_TIME2, 2, "time"),
            r#""-00:00:01.00""#
        );
        // -838:59:59.9 and 838:59:59.9
        let h = (838u32 << 12) | (59 << 6) | 59;
        let neg = (0x80_0000 - h - 1).to_be_bytes();
        assert_eq!(
            text(
                raw([neg[1], neg[2], neg[3], 166]),
                MYSQL_TYPE_TIME2,
                1,
                "time"
            ),
            r#""-838:59:59.9""#
        );
        let pos = (0x80_0000 + h).to_be_bytes();
        assert_eq!(
            text(
                raw([pos[1], pos[2], pos[3], 90]),
                MYSQL_TYPE_TIME2,
                1,
                "time"
            ),
            r#""838:59:59.9""#
        );
    }

    #[test]
    fn zero_timestamp_and_zero_year_stay_zero() {
        use ColumnType::*;
        for (raw, t, digits, want) in [
            ("0", MYSQL_TYPE_TIMESTAMP2, 0, "0000-00-00 00:00:00"),
            ("0", MYSQL_TYPE_TIMESTAMP2, 6, "0000-00-00 00:00:00.000000"),
            ("1", MYSQL_TYPE_TIMESTAMP2, 0, "1970-01-01 00:00:01"),
            ("1900", MYSQL_TYPE_YEAR, 0, "0000"),
            ("1901", MYSQL_TYPE_YEAR, 0, "1901"),
        ] {
            let v = Value::Bytes(raw.as_bytes().to_vec());
            assert_eq!(text(v, t, digits, "timestamp"), format!("\"{want}\""));
        }
    }

    #[test]
    fn text_is_decoded_by_the_column_charset() {
        use ColumnType::MYSQL_TYPE_VARCHAR;
        assert_eq!(
            text(
                Value::Bytes(vec![0x80, 0x8a, 0x9c, 0x9f]),
                MYSQL_TYPE_VARCHAR,
                0,
                "latin1 varchar"
            ),
            r#""€ŠœŸ""#
        );
        assert_eq!(
            text(
                Value::Bytes("é".as_bytes().to_vec()),
                MYSQL_TYPE_VARCHAR,
                0,
                "latin1 varchar"
            ),
            r#""Ã©""#
        );
        let mut c = col("varchar");
        c.charset = Some(Charset::from_name("armscii8"));
        let e = to_json(
            Some(&BinlogValue::Value(Value::Bytes(b"a".to_vec()))),
            MYSQL_TYPE_VARCHAR,
            0,
            &c,
        );
        assert_eq!(e.unwrap_err(), CharsetError::Unsupported("armscii8".into()));
    }

    #[test]
    fn inet6_compresses_zero_groups_as_mariadb_does() {
        let ip = |s: &str| inet6_text(s.parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(ip("1:0:1:0:1:0:1:0"), "1::1:0:1:0:1:0");
        assert_eq!(
            ip("56ac:e6cc:fad:1de4:b23:444e:c33c:0"),
            "56ac:e6cc:fad:1de4:b23:444e:c33c::"
        );
        assert_eq!(
            ip("0:a173:7e87:1e11:0:3419:4430:0"),
            "::a173:7e87:1e11:0:3419:4430:0"
        );
        assert_eq!(ip("::"), "::");
        assert_eq!(ip("::1"), "::1");
        assert_eq!(ip("::ffff:1.2.3.4"), "::ffff:1.2.3.4");
        assert_eq!(ip("::102:304"), "::1.2.3.4");
        assert_eq!(ip("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn float_and_double_are_written_in_full() {
        use ColumnType::*;
        assert_eq!(
            text(Value::Float(1.234_567_8), MYSQL_TYPE_FLOAT, 0, "float"),
            r#""1.2345678""#
        );
        let big = text(Value::Double(1e308), MYSQL_TYPE_DOUBLE, 0, "double");
        assert_eq!(big.len(), 309 + 2);
        assert!(big.starts_with("\"1000"));
    }

    #[test]
    fn values_render_as_canal_json_strings() {
        use ColumnType::*;
        #[rustfmt::skip]
        let cases = vec![
            (Value::NULL, MYSQL_TYPE_LONG, 0, "int", "null"),
            (Value::Int(-5), MYSQL_TYPE_LONG, 0, "int", r#""-5""#),
            (Value::Int(-1), MYSQL_TYPE_TINY, 0, "tinyint unsigned", r#""255""#),
            (Value::Bytes(b"12.50".to_vec()), MYSQL_TYPE_NEWDECIMAL, 0, "decimal", r#""12.50""#),
            (Value::Date(2024, 2, 29, 0, 0, 0, 0), MYSQL_TYPE_DATE, 0, "date", r#""2024-02-29""#),
            (Value::Date(2024, 2, 29, 13, 4, 5, 120000), MYSQL_TYPE_DATETIME2, 3, "datetime", r#""2024-02-29 13:04:05.120""#),
            (Value::Bytes(b"86400".to_vec()), MYSQL_TYPE_TIMESTAMP2, 0, "timestamp", r#""1970-01-02 00:00:00""#),
            (Value::Time(true, 1, 2, 3, 4, 0), MYSQL_TYPE_TIME2, 0, "time", r#""-26:03:04""#),
            (Value::Int(2), MYSQL_TYPE_ENUM, 0, "enum", r#""paid""#),
            (Value::Int(0), MYSQL_TYPE_ENUM, 0, "enum", r#""""#),
            (Value::Bytes(vec![0b101]), MYSQL_TYPE_SET, 0, "set", r#""new,shipped""#),
            (Value::Bytes(vec![1, 0]), MYSQL_TYPE_BIT, 0, "bit", r#""256""#),
            (Value::Bytes(vec![0, 0xff, b'a']), MYSQL_TYPE_BLOB, 0, "blob", r#""\u0000ÿa""#),
            (Value::Bytes("zoë 🚀".as_bytes().to_vec()), MYSQL_TYPE_VARCHAR, 0, "varchar", r#""zoë 🚀""#),
            (Value::Double(1.5), MYSQL_TYPE_DOUBLE, 0, "double", r#""1.5""#),
        ];
        check(text, cases);
    }
}
