//! Binlog values against the server as oracle: rows of every column type
//! (seeded random values plus hand-picked edges) are written, captured, and
//! compared value for value with what the server itself prints for the same
//! rows over the text protocol, for inserts, both images of updates, and
//! deletes. The README's value rules are the only translation applied:
//! TIMESTAMP in UTC (the oracle's session runs in +00:00), binary strings
//! as ISO-8859-1 code points, BIT as its number (`col+0`), FLOAT and DOUBLE
//! compared as numbers within the digits the server prints (6 and 15
//! significant digits; the capture writes them in full, see the README).
//!
//! `CDC_FIDELITY_SEED` picks the base seed (each test adds its own offset).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::binlog::{capture_env, docs, kafka_capture_env, wait_docs, wait_pipeline};
use crate::harness::app::InProcessApp;
use crate::harness::consumer::{Consumer, Pipeline};
use crate::harness::es::EsTarget;
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::mariadb::MariaDb;

/// What a column holds, for generating values and reading the oracle.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int {
        bits: u32,
        unsigned: bool,
    },
    Decimal {
        m: usize,
        d: usize,
    },
    Float,
    Double,
    Bit(u32),
    Date,
    DateTime(usize),
    Timestamp(usize),
    Time(usize),
    Year,
    /// Text of a character set, up to `max` characters.
    Text {
        cs: &'static str,
        max: usize,
    },
    /// latin1 text written as raw bytes: every byte value.
    Latin1Bytes,
    Binary(usize),
    VarBinary(usize),
    /// A BLOB type holding up to this many bytes.
    Blob(usize),
    /// Its members (the first three are ASCII).
    Enum(&'static [&'static str]),
    Set,
    Json,
    Geometry,
    /// MariaDB's INET4, INET6 and UUID.
    Inet4,
    Inet6,
    Uuid,
}

impl Kind {
    /// Bytes the server prints become text this way (the README's rule).
    fn binary(self) -> bool {
        matches!(
            self,
            Kind::Binary(_)
                | Kind::VarBinary(_)
                | Kind::Blob(_)
                | Kind::Geometry
                | Kind::Text { cs: "binary", .. }
        )
    }
}

struct Col {
    name: String,
    ddl: String,
    kind: Kind,
}

/// Every column type, and a VARCHAR in every supported character set.
fn columns() -> Vec<Col> {
    let mut cols = Vec::new();
    let mut add = |name: &str, ddl: &str, kind: Kind| {
        cols.push(Col {
            name: name.to_owned(),
            ddl: ddl.to_owned(),
            kind,
        })
    };
    for (name, ty, bits) in [
        ("ti", "TINYINT", 8),
        ("si", "SMALLINT", 16),
        ("mi", "MEDIUMINT", 24),
        ("i", "INT", 32),
        ("bi", "BIGINT", 64),
    ] {
        add(
            name,
            ty,
            Kind::Int {
                bits,
                unsigned: false,
            },
        );
        add(
            &format!("{name}u"),
            &format!("{ty} UNSIGNED"),
            Kind::Int {
                bits,
                unsigned: true,
            },
        );
    }
    for (name, m, d) in [
        ("dec65", 65, 30),
        ("dec10", 10, 0),
        ("dec5", 5, 2),
        ("dec18", 18, 9),
    ] {
        add(name, &format!("DECIMAL({m},{d})"), Kind::Decimal { m, d });
    }
    add("f", "FLOAT", Kind::Float);
    add("d", "DOUBLE", Kind::Double);
    for n in [1, 10, 64] {
        add(&format!("bit{n}"), &format!("BIT({n})"), Kind::Bit(n));
    }
    add("dt", "DATE", Kind::Date);
    for p in [0, 3, 6] {
        add(
            &format!("dtm{p}"),
            &format!("DATETIME({p})"),
            Kind::DateTime(p),
        );
    }
    for p in [0, 1, 6] {
        add(
            &format!("ts{p}"),
            &format!("TIMESTAMP({p}) NULL DEFAULT NULL"),
            Kind::Timestamp(p),
        );
    }
    for p in [0, 1, 2, 3, 4, 6] {
        add(&format!("tm{p}"), &format!("TIME({p})"), Kind::Time(p));
    }
    add("yr", "YEAR", Kind::Year);
    let utf8 = |max| Kind::Text { cs: "utf8mb4", max };
    add("ch", "CHAR(10)", utf8(10));
    add("vc", "VARCHAR(100)", utf8(100));
    add("ttx", "TINYTEXT", utf8(30));
    add("tx", "TEXT", utf8(200));
    add("mtx", "MEDIUMTEXT", utf8(200));
    add("ltx", "LONGTEXT", utf8(200));
    add("bn16", "BINARY(16)", Kind::Binary(16));
    add("bn1", "BINARY(1)", Kind::Binary(1));
    add("vb", "VARBINARY(40)", Kind::VarBinary(40));
    for (b, max) in [
        ("TINYBLOB", 255),
        ("BLOB", 400),
        ("MEDIUMBLOB", 400),
        ("LONGBLOB", 400),
    ] {
        add(&b.to_ascii_lowercase(), b, Kind::Blob(max));
    }
    add(
        "en",
        "ENUM('a','b','c d','é')",
        Kind::Enum(&["a", "b", "c d", "é"]),
    );
    // Member names come in the column's character set in the table map.
    add(
        "en_latin1",
        "ENUM('a','b','c','é','€') CHARACTER SET latin1",
        Kind::Enum(&["a", "b", "c", "é", "€"]),
    );
    add("st", "SET('x','y','z','é')", Kind::Set);
    add("js", "JSON", Kind::Json);
    add("geo", "GEOMETRY", Kind::Geometry);
    add("ip4", "INET4", Kind::Inet4);
    add("ip6", "INET6", Kind::Inet6);
    add("uu", "UUID", Kind::Uuid);
    add(
        "lat_bytes",
        "VARCHAR(300) CHARACTER SET latin1",
        Kind::Latin1Bytes,
    );
    for cs in CHARSETS {
        let max = 20;
        add(
            &format!("v_{cs}"),
            &format!("VARCHAR({max}) CHARACTER SET {cs}"),
            Kind::Text { cs, max },
        );
    }
    for cs in ["latin1", "ucs2", "sjis", "utf32"] {
        add(
            &format!("c_{cs}"),
            &format!("CHAR(6) CHARACTER SET {cs}"),
            Kind::Text { cs, max: 6 },
        );
    }
    cols
}

/// The character sets the capture decodes that MariaDB has (gb18030 is MySQL only).
const CHARSETS: [&str; 16] = [
    "latin1", "ascii", "utf8mb3", "utf8mb4", "ucs2", "utf16", "utf16le", "utf32", "gbk", "big5",
    "sjis", "cp932", "euckr", "koi8r", "cp1251", "binary",
];

const ASCII: &str = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\t\n";
const BMP: &str = "éñøßΩλ中€…日本ДЖ한ā";
const ASTRAL: &str = "🚀😀𝄞𠜎";

/// Characters each character set can store (the oracle converts from utf8mb4).
fn pool(cs: &str) -> Vec<char> {
    let extra = match cs {
        "latin1" => "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ ¡¢£¤¥¦§¨©ª«¬\u{ad}®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖ×ØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõö÷øùúûüýþÿ\u{81}\u{8d}\u{8f}\u{90}\u{9d}",
        "ascii" => "",
        "utf8mb3" | "ucs2" => BMP,
        "utf8mb4" | "utf16" | "utf16le" | "utf32" => {
            return ASCII.chars().chain(BMP.chars()).chain(ASTRAL.chars()).collect()
        }
        "gbk" => "你好世界中文字符测试数据库编码汉字简体繁體·—…‘’“”、。《》【】￥",
        "big5" => "中文測試資料庫繁體字編碼台灣香港，。、「」『』…",
        "sjis" => "あいうえおかきくけこアイウエオカキクケコ漢字日本語テスト「」。、ー〜‖−¢£¬",
        "cp932" => "あいうえおアイウエオ漢字日本語テスト「」。、ー～∥－￠￡￢＼①②Ⅰ纊褜",
        "euckr" => "한국어테스트데이터베이스인코딩가나다라마바사",
        "koi8r" => "АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюяЁё─│┌┐└┘",
        "cp1251" => "АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюяЁёЂђЃѓ€‚„…†‡‰Љ‹ЊЌЋЏ‘’“”•–—™љ›њќћџЎўЈ¤Ґ¦§©Є«¬®Ї°±Ііґµ¶·№є»јЅѕї",
        _ => "",
    };
    ASCII.chars().chain(extra.chars()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02X}");
        s
    })
}

/// A utf8mb4 string literal the server converts to the column's character set.
fn text_literal(s: &str) -> String {
    format!("_utf8mb4 X'{}'", hex(s.as_bytes()))
}

fn quoted(s: &str) -> String {
    format!("'{s}'")
}

fn frac(rng: &mut StdRng, p: usize) -> String {
    if p == 0 {
        return String::new();
    }
    let digits: String = (0..p)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect();
    format!(".{digits}")
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
    // Trailing zero bytes are an edge of their own (BINARY padding).
    if rng.random_bool(0.3) {
        b.extend(std::iter::repeat_n(0, rng.random_range(0..3)));
        b.truncate(max);
    }
    b
}

fn decimal_digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A random SQL literal for `kind` (never NULL; the caller decides that).
fn random_literal(rng: &mut StdRng, kind: Kind) -> String {
    match kind {
        Kind::Int { bits, unsigned } => {
            if unsigned {
                let v: u64 = rng.random();
                (if bits == 64 { v } else { v % (1u64 << bits) }).to_string()
            } else {
                let v: i64 = rng.random();
                (if bits == 64 { v } else { v >> (64 - bits) }).to_string()
            }
        }
        Kind::Decimal { m, d } => {
            let int_digits = rng.random_range(0..=m - d);
            let sign = if rng.random_bool(0.5) { "-" } else { "" };
            let int = decimal_digits(rng, int_digits.max(1));
            if d == 0 {
                format!("{sign}{int}")
            } else {
                let n = rng.random_range(1..=d);
                format!("{sign}{int}.{}", decimal_digits(rng, n))
            }
        }
        Kind::Float | Kind::Double => {
            let range = if matches!(kind, Kind::Float) { 30 } else { 300 };
            let m: f64 = rng.random_range(1.0..10.0);
            let e = rng.random_range(-range..range);
            let sign = if rng.random_bool(0.5) { "-" } else { "" };
            format!("{sign}{m}e{e}")
        }
        Kind::Bit(n) => {
            let v: u64 = rng.random();
            (if n == 64 { v } else { v % (1u64 << n) }).to_string()
        }
        Kind::Date => quoted(&format!(
            "{:04}-{:02}-{:02}",
            rng.random_range(1000..=9999),
            rng.random_range(1..=12),
            rng.random_range(1..=28)
        )),
        Kind::DateTime(p) => {
            let f = frac(rng, p);
            quoted(&format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{f}",
                rng.random_range(1000..=9999),
                rng.random_range(1..=12),
                rng.random_range(1..=28),
                rng.random_range(0..24),
                rng.random_range(0..60),
                rng.random_range(0..60),
            ))
        }
        Kind::Timestamp(p) => {
            let secs = rng.random_range(1..i64::from(i32::MAX));
            let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let f = frac(rng, p);
            quoted(&format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{f}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ))
        }
        Kind::Time(p) => {
            let sign = if rng.random_bool(0.5) { "-" } else { "" };
            let f = frac(rng, p);
            quoted(&format!(
                "{sign}{:02}:{:02}:{:02}{f}",
                rng.random_range(0..838),
                rng.random_range(0..60),
                rng.random_range(0..60),
            ))
        }
        Kind::Year => rng.random_range(1901..=2155).to_string(),
        Kind::Text { cs, max } => {
            let pool = pool(cs);
            let n = rng.random_range(0..=max);
            let s: String = (0..n)
                .map(|_| pool[rng.random_range(0..pool.len())])
                .collect();
            if cs == "binary" {
                format!("X'{}'", hex(&random_bytes(rng, max)))
            } else {
                text_literal(&s)
            }
        }
        Kind::Latin1Bytes => format!("_latin1 X'{}'", hex(&random_bytes(rng, 300))),
        Kind::Binary(n) | Kind::VarBinary(n) => format!("X'{}'", hex(&random_bytes(rng, n))),
        Kind::Blob(max) => format!("X'{}'", hex(&random_bytes(rng, max.min(200)))),
        Kind::Enum(members) => text_literal(members[rng.random_range(0..members.len())]),
        Kind::Set => {
            let picked: Vec<&str> = ["x", "y", "z"]
                .into_iter()
                .filter(|_| rng.random_bool(0.5))
                .collect();
            quoted(&picked.join(","))
        }
        Kind::Json => text_literal(&format!(
            "{{\"k\": {}, \"s\": \"w{}\", \"a\": [1, 2.5, null, true]}}",
            rng.random_range(-1000..1000),
            rng.random_range(0..1000)
        )),
        Kind::Inet4 => quoted(&std::net::Ipv4Addr::from(rng.random::<[u8; 4]>()).to_string()),
        Kind::Inet6 => {
            // Runs of zero groups, where the text form compresses.
            let mut groups: [u16; 8] = rng.random();
            for g in groups.iter_mut() {
                if rng.random_bool(0.4) {
                    *g = 0;
                }
            }
            quoted(&std::net::Ipv6Addr::from(groups).to_string())
        }
        Kind::Uuid => {
            // The server takes RFC 4122 UUIDs: version 1 to 5, variant 10xx.
            let mut b: [u8; 16] = rng.random();
            b[6] = (b[6] & 0x0f) | (rng.random_range(1..=5u8) << 4);
            b[8] = (b[8] & 0x3f) | 0x80;
            quoted(&cdc_monitor::source::binlog::events::uuid_text(&b))
        }
        Kind::Geometry => format!(
            "ST_GeomFromText('POINT({} {})')",
            rng.random_range(-180.0..180.0f64),
            rng.random_range(-90.0..90.0f64)
        ),
    }
}

/// Hand-picked edge literals: row `k` of the edge rows takes the `k`-th.
fn edges(kind: Kind) -> Vec<String> {
    let q = |s: &str| quoted(s);
    match kind {
        Kind::Int {
            bits,
            unsigned: false,
        } => {
            let max = if bits == 64 {
                i64::MAX
            } else {
                (1i64 << (bits - 1)) - 1
            };
            vec![
                (-max - 1).to_string(),
                max.to_string(),
                "-1".into(),
                "0".into(),
            ]
        }
        Kind::Int {
            bits,
            unsigned: true,
        } => {
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            vec![max.to_string(), "0".into(), "1".into()]
        }
        Kind::Decimal { m, d } => {
            let nines = |n| "9".repeat(n);
            let max = if d == 0 {
                nines(m)
            } else {
                format!("{}.{}", nines(m - d), nines(d))
            };
            let tiny = if d == 0 {
                "-1".to_owned()
            } else {
                format!("-0.{}1", "0".repeat(d - 1))
            };
            vec![max.clone(), format!("-{max}"), "0".into(), tiny]
        }
        Kind::Float => vec![
            "1.2345678".into(),
            "3.4e38".into(),
            "-3.4e38".into(),
            "1.1754944e-38".into(),
            "0".into(),
            "-0.5".into(),
        ],
        Kind::Double => vec![
            "1e308".into(),
            "-1.7976931348623157e308".into(),
            "2.2250738585072014e-308".into(),
            "0.1".into(),
            "1.2345678901234567".into(),
            "0".into(),
        ],
        Kind::Bit(n) => {
            let max = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            vec![max.to_string(), "0".into(), "1".into()]
        }
        Kind::Date => vec![
            q("0000-00-00"),
            q("1000-01-01"),
            q("9999-12-31"),
            q("2024-00-00"),
        ],
        Kind::DateTime(p) | Kind::Timestamp(p) => {
            // The first `p` fraction digits of `s`.
            let f = |s: &str| {
                if p > 0 {
                    format!(".{}", &s[..p])
                } else {
                    String::new()
                }
            };
            let (low, high) = match kind {
                Kind::Timestamp(_) => ("1970-01-01 00:00:01", "2038-01-19 03:14:07"),
                _ => ("1000-01-01 00:00:00", "9999-12-31 23:59:59"),
            };
            vec![
                q(&format!("0000-00-00 00:00:00{}", f("000000"))),
                q(&format!("{low}{}", f("000001"))),
                q(&format!("{high}{}", f("999999"))),
                q(&format!("2000-02-29 12:00:00{}", f("500000"))),
            ]
        }
        Kind::Time(p) => {
            let mut v = vec![
                q("-838:59:59"),
                q("838:59:59"),
                q("00:00:00"),
                q("-00:00:01"),
            ];
            if p >= 1 {
                v.extend([
                    q("-00:00:00.5"),
                    q("-700:00:00.5"),
                    q("-837:59:59.9"),
                    q("-00:00:01.1"),
                ]);
            }
            if p >= 2 {
                v.extend([q("-00:00:00.01"), q("-12:34:56.99")]);
            }
            if p >= 3 {
                v.push(q("-00:00:00.001"));
            }
            if p == 6 {
                v.push(q("-00:00:00.000001"));
            }
            v
        }
        Kind::Year => vec!["0".into(), "1901".into(), "2155".into()],
        Kind::Text { cs: "binary", .. } => vec!["X'00'".into(), "X''".into(), "X'FF00'".into()],
        Kind::Text { cs, max } => {
            let pool = pool(cs);
            let all: String = pool.iter().filter(|c| !c.is_ascii()).take(max).collect();
            vec![
                text_literal(&all),
                text_literal(""),
                text_literal(" x "),
                text_literal("'\\\0\""),
            ]
        }
        Kind::Latin1Bytes => {
            let every: Vec<u8> = (0..=255).collect();
            vec![
                format!("_latin1 X'{}'", hex(&every)),
                format!(
                    "_latin1 X'{}'",
                    hex(&[0x80, b' ', 0x8a, b' ', 0x9c, b' ', 0x9f])
                ),
                format!("_latin1 X'{}'", hex("é".as_bytes())),
            ]
        }
        Kind::Binary(n) => {
            let abc = format!("X'{}'", hex(&b"abc"[..n.min(3)]));
            let mut v = vec![abc, "X''".into(), "X'00'".into()];
            v.push(format!("X'{}'", "FF".repeat(n)));
            v
        }
        Kind::VarBinary(_) => vec!["X'6162630000'".into(), "X''".into(), "X'00'".into()],
        Kind::Blob(max) => {
            let every: Vec<u8> = (0..=255).take(max).collect();
            vec![format!("X'{}'", hex(&every)), "X''".into()]
        }
        Kind::Enum(members) => members.iter().rev().map(|m| text_literal(m)).collect(),
        Kind::Set => vec![q(""), q("x,y,z,é"), q("é")],
        Kind::Json => vec![
            text_literal("[]"),
            text_literal("{}"),
            text_literal("null"),
            text_literal("\"é🚀\""),
        ],
        Kind::Geometry => vec!["ST_GeomFromText('LINESTRING(0 0,1 1,2 5)')".into()],
        Kind::Inet4 => vec![q("0.0.0.0"), q("255.255.255.255"), q("10.0.0.0")],
        Kind::Inet6 => vec![
            q("::"),
            q("::1"),
            q("::ffff:1.2.3.4"),
            q("::102:304"),
            q("2001:db8::1"),
            q("1:0:0:1:0:0:0:1"),
            q("1:0:1:0:1:0:1:0"),
            q("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ],
        Kind::Uuid => vec![
            q("00000000-0000-0000-0000-000000000000"),
            q("123e4567-e89b-12d3-a456-426655440000"),
            q("ffffffff-ffff-4fff-bfff-ffffffffffff"),
            q("12345678-1234-4234-9234-123400000000"),
        ],
    }
}

/// One row's column assignments.
fn row_values(rng: &mut StdRng, cols: &[Col], edge_row: Option<usize>) -> Vec<String> {
    cols.iter()
        .map(|c| {
            if let Some(k) = edge_row {
                if let Some(e) = edges(c.kind).get(k) {
                    return e.clone();
                }
            }
            if rng.random_bool(0.08) {
                "NULL".to_owned()
            } else {
                random_literal(rng, c.kind)
            }
        })
        .collect()
}

/// What the server prints for one row: column → text (None: NULL).
type ServerRow = HashMap<String, Option<String>>;

/// What the server prints for each row, by id.
type Snapshot = HashMap<String, ServerRow>;

async fn snapshot(conn: &mut mysql_async::Conn, d: &str, cols: &[Col]) -> Snapshot {
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| match c.kind {
            Kind::Bit(_) => format!("`{}`+0", c.name),
            _ => format!("`{}`", c.name),
        })
        .collect();
    let sql = format!("SELECT id, {} FROM {d}.t", exprs.join(", "));
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.unwrap();
    rows.into_iter()
        .map(|row| {
            let values = row.unwrap();
            let id = match &values[0] {
                mysql_async::Value::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
                v => panic!("id {v:?}"),
            };
            let cols = cols
                .iter()
                .zip(&values[1..])
                .map(|(c, v)| {
                    let text = match v {
                        mysql_async::Value::NULL => None,
                        mysql_async::Value::Bytes(b) if c.kind.binary() => {
                            Some(b.iter().map(|&x| char::from(x)).collect())
                        }
                        mysql_async::Value::Bytes(b) => Some(
                            String::from_utf8(b.clone())
                                .unwrap_or_else(|e| panic!("{}: {e}", c.name)),
                        ),
                        v => panic!("text protocol gave {v:?}"),
                    };
                    (c.name.clone(), text)
                })
                .collect();
            (id, cols)
        })
        .collect()
}

/// Numbers the server prints with fewer digits than the capture writes.
fn same_number(kind: Kind, want: &str, got: &str) -> bool {
    let (Ok(a), Ok(b)) = (want.parse::<f64>(), got.parse::<f64>()) else {
        return false;
    };
    let tolerance = if matches!(kind, Kind::Float) {
        1e-5
    } else {
        1e-14
    };
    a == b || (a - b).abs() <= tolerance * a.abs().max(b.abs())
}

/// Which changes were written, and what the server printed around them.
struct Written {
    inserted: Snapshot,
    updated: Snapshot,
    update_ids: Vec<String>,
    delete_ids: Vec<String>,
}

impl Written {
    fn changes(&self) -> u64 {
        (self.inserted.len() + self.update_ids.len() + self.delete_ids.len()) as u64
    }
}

/// Creates `d.t`, inserts rows (edges first), updates and deletes some, and
/// reads the server's text after the inserts and after the updates.
async fn write_rows(db: &MariaDb, d: &str, cols: &[Col], seed: u64, rows: usize) -> Written {
    let ddl: Vec<String> = cols
        .iter()
        .map(|c| format!("`{}` {}", c.name, c.ddl))
        .collect();
    db.exec(&format!(
        "CREATE TABLE {d}.t (id INT PRIMARY KEY, {}) DEFAULT CHARSET = utf8mb4",
        ddl.join(", ")
    ))
    .await;
    let mut rng = StdRng::seed_from_u64(seed);
    let edge_rows = cols.iter().map(|c| edges(c.kind).len()).max().unwrap_or(0);
    let mut conn = db.server().root_conn().await.unwrap();
    conn.query_drop(
        "SET NAMES utf8mb4; SET time_zone = '+00:00'; SET sql_mode = 'STRICT_ALL_TABLES'",
    )
    .await
    .unwrap();
    let names: Vec<String> = cols.iter().map(|c| format!("`{}`", c.name)).collect();
    let mut sql = String::from("BEGIN;");
    for id in 0..rows {
        let values = row_values(&mut rng, cols, (id < edge_rows).then_some(id));
        let _ = write!(
            sql,
            "INSERT INTO {d}.t (id, {}) VALUES ({id}, {});",
            names.join(", "),
            values.join(", ")
        );
    }
    sql.push_str("COMMIT;");
    conn.query_drop(&sql)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let inserted = snapshot(&mut conn, d, cols).await;

    // Updates give every column a new value (edge rows reversed, so that
    // each edge also shows up as an old and a new image).
    let mut update_ids = Vec::new();
    let mut sql = String::from("BEGIN;");
    for id in 0..rows {
        if id < edge_rows || rng.random_bool(0.4) {
            let edge = (id < edge_rows).then(|| edge_rows - 1 - id);
            let values = row_values(&mut rng, cols, edge);
            let set: Vec<String> = names
                .iter()
                .zip(&values)
                .map(|(n, v)| format!("{n} = {v}"))
                .collect();
            let _ = write!(sql, "UPDATE {d}.t SET {} WHERE id = {id};", set.join(", "));
            update_ids.push(id.to_string());
        }
    }
    sql.push_str("COMMIT;");
    conn.query_drop(&sql)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let updated = snapshot(&mut conn, d, cols).await;

    let delete_ids: Vec<String> = (0..rows)
        .filter(|_| rng.random_bool(0.3))
        .map(|id| id.to_string())
        .collect();
    if !delete_ids.is_empty() {
        conn.query_drop(format!(
            "DELETE FROM {d}.t WHERE id IN ({})",
            delete_ids.join(",")
        ))
        .await
        .unwrap();
    }
    conn.disconnect().await.unwrap();
    Written {
        inserted,
        updated,
        update_ids,
        delete_ids,
    }
}

/// Compares one captured image with the server's; returns the values compared.
fn compare(
    image: &Value,
    want: &ServerRow,
    cols: &[Col],
    what: &str,
    mismatches: &mut Vec<String>,
) -> usize {
    for c in cols {
        let got = &image[&c.name];
        let want = &want[&c.name];
        let same = match (want, got) {
            (None, Value::Null) => true,
            (Some(w), Value::String(g)) if matches!(c.kind, Kind::Float | Kind::Double) => {
                same_number(c.kind, w, g)
            }
            (Some(w), Value::String(g)) => w == g,
            _ => false,
        };
        if !same {
            mismatches.push(format!(
                "{what} {} ({}): server {want:?}, captured {got}",
                c.name, c.ddl
            ));
        }
    }
    cols.len()
}

/// Checks every captured change against the server; returns values compared.
fn check(all: &[Value], w: &Written, cols: &[Col]) -> usize {
    let find = |op: &str, id: &str| {
        all.iter()
            .find(|x| x["op"] == op && x["pk"]["id"] == id)
            .unwrap_or_else(|| panic!("no {op} of id {id}"))
    };
    // (captured image, the server's row, what it is)
    let mut images: Vec<(&Value, &ServerRow, String)> = Vec::new();
    for (id, row) in &w.inserted {
        images.push((&find("insert", id)["data"], row, format!("insert {id}")));
    }
    for id in &w.update_ids {
        let doc = find("update", id);
        images.push((&doc["old"], &w.inserted[id], format!("update {id} old")));
        images.push((&doc["data"], &w.updated[id], format!("update {id} new")));
    }
    for id in &w.delete_ids {
        images.push((
            &find("delete", id)["data"],
            &w.updated[id],
            format!("delete {id}"),
        ));
    }
    let mut mismatches = Vec::new();
    let compared: usize = images
        .iter()
        .map(|(image, want, what)| compare(image, want, cols, what, &mut mismatches))
        .sum();
    assert!(
        mismatches.is_empty(),
        "{} of {compared} values differ from the server:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(40)].join("\n")
    );
    compared
}

/// A line on the real stderr: the test harness captures `eprintln!` of
/// passing tests, and the count of values compared should show in every run.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn base_seed() -> u64 {
    std::env::var("CDC_FIDELITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_202)
}

/// Writes rows with `seed`, captures them straight into Elasticsearch, and
/// compares; returns the values compared.
async fn differential(seed: u64, full_metadata: bool) -> usize {
    let started = Instant::now();
    let db = MariaDb::start().await;
    if !full_metadata {
        db.exec("SET GLOBAL binlog_row_metadata = 'MINIMAL'").await;
    }
    let d = db.create_database("fidelity").await;
    let cols = columns();
    let written = write_rows(&db, &d, &cols, seed, 40).await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcessApp::spawn(&capture_env(&db, &d, &es, "fidelity", dir.path())).await;
    // Plus CREATE DATABASE and CREATE TABLE.
    wait_docs(&es, "fidelity", written.changes() + 2, &p).await;
    let compared = check(&docs(&es, "fidelity"), &written, &cols);
    assert_eq!(p.metric("cdc_decode_errors_total", &[]).await, 0.0);
    report(&format!(
        "fidelity seed {seed} (full row metadata: {full_metadata}): {compared} values compared, \
         0 mismatches, {:?}",
        started.elapsed()
    ));
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_values_match_the_server_first_seed() {
    assert!(differential(base_seed(), true).await >= 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_values_match_the_server_second_seed() {
    assert!(differential(base_seed() + 1, true).await >= 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_values_match_the_server_third_seed() {
    assert!(differential(base_seed() + 2, true).await >= 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_values_match_the_server_from_information_schema() {
    assert!(differential(base_seed() + 3, false).await >= 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_values_read_the_same_after_a_kafka_round_trip() {
    let seed = base_seed() + 4;
    let db = MariaDb::start().await;
    let d = db.create_database("fidkafka").await;
    let cols = columns();
    let written = write_rows(&db, &d, &cols, seed, 40).await;
    let broker = broker();
    let es = EsTarget::stub().await;
    let pipeline = Pipeline::new("fidelity", &broker.bootstrap, &es.url, 1);
    broker.create_topic(&pipeline.topic, 1).await;
    broker.create_topic(&pipeline.dlq, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let env = kafka_capture_env(&db, &format!("{d}.*"), dir.path(), &pipeline);
    let capture = InProcessApp::spawn(&env).await;
    let consumer = InProcessApp::spawn(&pipeline.env()).await;
    wait_pipeline(&es, &pipeline, written.changes() + 2, &capture, &consumer).await;
    let compared = check(&docs(&es, &pipeline.index), &written, &cols);
    assert_eq!(consumer.metric("cdc_decode_errors_total", &[]).await, 0.0);
    assert!(compared >= 5_000, "{compared}");
    report(&format!(
        "fidelity over Kafka, seed {seed}: {compared} values compared, 0 mismatches"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_six_reported_value_classes_come_out_as_the_server_shows_them() {
    let db = MariaDb::start().await;
    let d = db.create_database("six").await;
    db.exec(&format!(
        "SET time_zone = '+00:00';
        CREATE TABLE {d}.s (id INT PRIMARY KEY, mi MEDIUMINT, bn BINARY(16), b1 BINARY(1),
            tm TIME(1), ts TIMESTAMP(6) NULL DEFAULT NULL, yr YEAR,
            l VARCHAR(20) CHARACTER SET latin1, f FLOAT, dbl DOUBLE);
        INSERT INTO {d}.s VALUES
            (1, -1, 'abc', X'00', '-00:00:00.5', '0000-00-00 00:00:00', 0,
             _latin1 X'80208A209C209F', 1.2345678, 1e308),
            (2, -8388608, NULL, NULL, NULL, NULL, NULL, _latin1 X'C3A9', NULL, NULL);"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcessApp::spawn(&capture_env(&db, &d, &es, "six", dir.path())).await;
    wait_docs(&es, "six", 4, &p).await;
    let all = docs(&es, "six");
    let row = |id: &str| {
        all.iter()
            .find(|x| x["op"] == "insert" && x["pk"]["id"] == id)
            .unwrap()["data"]
            .clone()
    };
    let one = row("1");
    assert_eq!(one["mi"], "-1");
    assert_eq!(row("2")["mi"], "-8388608");
    assert_eq!(one["bn"], format!("abc{}", "\0".repeat(13)));
    assert_eq!(one["b1"], "\0");
    assert_eq!(one["tm"], "-00:00:00.5");
    assert_eq!(one["ts"], "0000-00-00 00:00:00.000000");
    assert_eq!(one["yr"], "0000");
    assert_eq!(one["l"], "€ Š œ Ÿ");
    assert_eq!(row("2")["l"], "Ã©");
    // Every digit, as TiCDC's canal-json writes them (README).
    assert_eq!(one["f"], "1.2345678");
    assert_eq!(one["dbl"].as_str().unwrap().len(), 309);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_in_an_unsupported_charset_is_a_counted_error_naming_it() {
    let db = MariaDb::start().await;
    let d = db.create_database("armscii").await;
    db.exec(&format!(
        "CREATE TABLE {d}.a (id INT PRIMARY KEY, odd VARCHAR(10) CHARACTER SET armscii8, ok VARCHAR(10));
        INSERT INTO {d}.a VALUES (1, 'x', 'one'), (2, NULL, 'two');"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcessApp::spawn(&capture_env(&db, &d, &es, "armscii", dir.path())).await;
    // CREATE DATABASE, CREATE TABLE and row 2 (its armscii8 value is NULL).
    wait_docs(&es, "armscii", 3, &p).await;
    let letters = dir.path().join("dead-letters.jsonl");
    let ok = eventually(Duration::from_secs(20), || async { letters.exists() }).await;
    assert!(ok, "no dead letter; log:\n{}", p.log_tail());
    let text = std::fs::read_to_string(&letters).unwrap();
    assert!(
        text.contains(&format!("column {d}.a.odd")) && text.contains("armscii8"),
        "{text}"
    );
    assert_eq!(p.metric("cdc_decode_errors_total", &[]).await, 1.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = docs(&es, "armscii");
    assert!(all.iter().all(|x| x["pk"]["id"] != "1"), "{all:#?}");
    assert!(all
        .iter()
        .any(|x| x["pk"]["id"] == "2" && x["data"]["ok"] == "two"));
}
