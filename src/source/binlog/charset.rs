//! Character sets of MySQL and MariaDB string columns, and decoding their
//! bytes to text.
//!
//! The binlog carries a string column's bytes as stored, in the column's
//! character set; the table map (full row metadata) names it by collation
//! id, `information_schema.COLUMNS` by name. Text is decoded by that
//! character set, never by guessing: bytes that do not decode, or a
//! character set not supported here, are an error that names the column.

use std::borrow::Cow;
use std::collections::HashMap;

use encoding_rs::Encoding;

/// How the bytes of a string column become text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charset {
    /// `binary`: bytes, written as ISO-8859-1 code points (as Canal and TiCDC do).
    Binary,
    /// `utf8mb3`, `utf8mb4`.
    Utf8,
    /// `ascii`: 7-bit bytes.
    Ascii,
    /// `ucs2` and `utf16`: MySQL stores them big-endian.
    Utf16Be,
    /// `utf16le`.
    Utf16Le,
    /// `utf32`: four bytes big-endian per character.
    Utf32Be,
    /// `sjis`: JIS X 0208 as MySQL maps it, which differs from Windows-31J
    /// (`cp932`) in seven characters.
    Sjis,
    /// A character set `encoding_rs` decodes exactly as the server does.
    Encoding(&'static Encoding),
    /// A character set this program cannot decode; its name.
    Unsupported(String),
}

/// A value that is not text in its column's character set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CharsetError {
    #[error("character set {0} is not supported")]
    Unsupported(String),
    #[error("bytes 0x{hex} are not valid {charset}", hex = hex(.bytes))]
    Malformed { charset: String, bytes: Vec<u8> },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Charset {
    /// The character set of a `CHARACTER_SET_NAME` (`latin1`, `utf8mb4`, ...).
    pub fn from_name(name: &str) -> Charset {
        let e = |enc: &'static Encoding| Charset::Encoding(enc);
        match name.to_ascii_lowercase().as_str() {
            "binary" => Charset::Binary,
            "utf8" | "utf8mb3" | "utf8mb4" => Charset::Utf8,
            "ascii" => Charset::Ascii,
            "ucs2" | "utf16" => Charset::Utf16Be,
            "utf16le" => Charset::Utf16Le,
            "utf32" => Charset::Utf32Be,
            // MySQL's latin1 is Windows-1252, with 0x81, 0x8D, 0x8F, 0x90
            // and 0x9D as the C1 controls, as the WHATWG table has them.
            "latin1" => e(encoding_rs::WINDOWS_1252),
            "cp1251" => e(encoding_rs::WINDOWS_1251),
            "koi8r" => e(encoding_rs::KOI8_R),
            "gbk" => e(encoding_rs::GBK),
            "gb18030" => e(encoding_rs::GB18030),
            "big5" => e(encoding_rs::BIG5),
            "cp932" => e(encoding_rs::SHIFT_JIS),
            "sjis" => Charset::Sjis,
            "euckr" => e(encoding_rs::EUC_KR),
            other => Charset::Unsupported(other.to_owned()),
        }
    }

    /// The name used in errors.
    pub fn name(&self) -> Cow<'static, str> {
        match self {
            Charset::Binary => "binary".into(),
            Charset::Utf8 => "utf8mb4".into(),
            Charset::Ascii => "ascii".into(),
            Charset::Utf16Be => "utf16".into(),
            Charset::Utf16Le => "utf16le".into(),
            Charset::Utf32Be => "utf32".into(),
            Charset::Sjis => "sjis".into(),
            Charset::Encoding(e) => e.name().into(),
            Charset::Unsupported(n) => n.clone().into(),
        }
    }

    /// `bytes` as text.
    pub fn decode(&self, bytes: &[u8]) -> Result<String, CharsetError> {
        let malformed = || CharsetError::Malformed {
            charset: self.name().into_owned(),
            bytes: bytes.to_vec(),
        };
        match self {
            Charset::Binary => Ok(bytes.iter().map(|&b| b as char).collect()),
            Charset::Utf8 => std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| malformed()),
            Charset::Ascii if bytes.is_ascii() => Ok(bytes.iter().map(|&b| b as char).collect()),
            Charset::Ascii => Err(malformed()),
            Charset::Utf16Be | Charset::Utf16Le => {
                if bytes.len() % 2 != 0 {
                    return Err(malformed());
                }
                let units = bytes.chunks_exact(2).map(|c| match self {
                    Charset::Utf16Le => u16::from_le_bytes([c[0], c[1]]),
                    _ => u16::from_be_bytes([c[0], c[1]]),
                });
                char::decode_utf16(units)
                    .collect::<Result<String, _>>()
                    .map_err(|_| malformed())
            }
            Charset::Utf32Be => {
                if bytes.len() % 4 != 0 {
                    return Err(malformed());
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect::<Option<String>>()
                    .ok_or_else(malformed)
            }
            Charset::Sjis => {
                let text = encoding_rs::SHIFT_JIS
                    .decode_without_bom_handling_and_without_replacement(bytes)
                    .ok_or_else(malformed)?;
                Ok(text.chars().map(sjis_from_cp932).collect())
            }
            Charset::Encoding(e) => e
                .decode_without_bom_handling_and_without_replacement(bytes)
                .map(Cow::into_owned)
                .ok_or_else(malformed),
            Charset::Unsupported(name) => Err(CharsetError::Unsupported(name.clone())),
        }
    }
}

/// The seven characters where MySQL's `sjis` and Windows-31J (which the
/// WHATWG Shift_JIS decoder implements) map the same bytes differently.
fn sjis_from_cp932(c: char) -> char {
    match c {
        '\u{FF3C}' => '\u{005C}', // 0x815F
        '\u{FF5E}' => '\u{301C}', // 0x8160
        '\u{2225}' => '\u{2016}', // 0x8161
        '\u{FF0D}' => '\u{2212}', // 0x817C
        '\u{FFE0}' => '\u{00A2}', // 0x8191
        '\u{FFE1}' => '\u{00A3}', // 0x8192
        '\u{FFE2}' => '\u{00AC}', // 0x81CA
        c => c,
    }
}

/// Collation ids (what the table map carries) to character sets, as the
/// server lists them in `information_schema.COLLATIONS`.
#[derive(Debug, Clone, Default)]
pub struct Collations {
    by_id: HashMap<u16, Charset>,
}

impl Collations {
    /// From `(ID, CHARACTER_SET_NAME)` rows.
    pub fn new(rows: impl IntoIterator<Item = (u16, String)>) -> Collations {
        Collations {
            by_id: rows
                .into_iter()
                .map(|(id, name)| (id, Charset::from_name(&name)))
                .collect(),
        }
    }

    /// The character set of collation `id`.
    pub fn charset(&self, id: u16) -> Charset {
        match self.by_id.get(&id) {
            Some(c) => c.clone(),
            None if id == super::schema::BINARY_CHARSET => Charset::Binary,
            None => Charset::Unsupported(format!("of unknown collation id {id}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str, bytes: &[u8]) -> String {
        Charset::from_name(name).decode(bytes).unwrap()
    }

    #[test]
    fn latin1_is_windows_1252_and_never_guessed_as_utf8() {
        assert_eq!(
            text("latin1", &[0x80, b' ', 0x8a, b' ', 0x9c, b' ', 0x9f]),
            "€ Š œ Ÿ"
        );
        // Bytes that happen to be valid UTF-8 stay two latin1 characters.
        assert_eq!(text("latin1", "é".as_bytes()), "Ã©");
        assert_eq!(text("latin1", &[0x81, 0x8d]), "\u{81}\u{8d}");
    }

    #[test]
    fn multibyte_and_wide_charsets_decode() {
        assert_eq!(text("utf8mb4", "zoë 🚀".as_bytes()), "zoë 🚀");
        assert_eq!(text("ucs2", &[0x00, 0x41, 0x20, 0xac]), "A€");
        assert_eq!(text("utf16", &[0xd8, 0x3d, 0xde, 0x80]), "🚀");
        assert_eq!(text("utf16le", &[0x41, 0x00]), "A");
        assert_eq!(text("utf32", &[0, 1, 0xf6, 0x80]), "🚀");
        assert_eq!(text("gbk", &[0xc4, 0xe3, 0xba, 0xc3]), "你好");
        assert_eq!(text("big5", &[0xa4, 0xa4]), "中");
        assert_eq!(text("cp932", &[0x81, 0x5f]), "＼");
        assert_eq!(text("sjis", &[0x81, 0x5f, 0x82, 0xa0]), "\\あ");
        assert_eq!(text("euckr", &[0xc7, 0xd1]), "한");
        assert_eq!(text("koi8r", &[0xf0, 0xd2]), "Пр");
        assert_eq!(text("cp1251", &[0xcf, 0xf0]), "Пр");
    }

    #[test]
    fn unsupported_or_malformed_text_is_an_error_not_mojibake() {
        assert_eq!(
            Charset::from_name("armscii8").decode(b"a"),
            Err(CharsetError::Unsupported("armscii8".into()))
        );
        let e = Charset::from_name("utf8mb4").decode(&[0xff]).unwrap_err();
        assert_eq!(e.to_string(), "bytes 0xff are not valid utf8mb4");
        assert!(Charset::from_name("ascii").decode(&[0x80]).is_err());
        assert!(Charset::from_name("utf32")
            .decode(&[0, 0x11, 0, 0])
            .is_err());
    }

    #[test]
    fn collation_ids_resolve_through_the_server_list() {
        let c = Collations::new([(8, "latin1".to_owned()), (45, "utf8mb4".to_owned())]);
        assert_eq!(c.charset(8), Charset::Encoding(encoding_rs::WINDOWS_1252));
        assert_eq!(c.charset(45), Charset::Utf8);
        assert_eq!(c.charset(63), Charset::Binary);
        assert!(matches!(c.charset(999), Charset::Unsupported(_)));
    }
}
