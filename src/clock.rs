//! Wall-clock time in the forms events and documents carry.

/// Formats Unix milliseconds as `2024-01-02T03:04:05.678Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339_millis(&mut out, ms);
    // Only ASCII digits and punctuation are pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends Unix milliseconds as `2024-01-02T03:04:05.678Z`, no allocation
/// for years 0 to 9999.
pub fn push_rfc3339_millis(out: &mut Vec<u8>, ms: i64) {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000) as u32;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) if (0..=9999).contains(&t.year()) => {
            let mut text = *b"0000-00-00T00:00:00.000Z";
            for (at, width, n) in [
                (0, 4, t.year() as u32),
                (5, 2, t.month() as u32),
                (8, 2, t.day() as u32),
                (11, 2, t.hour() as u32),
                (14, 2, t.minute() as u32),
                (17, 2, t.second() as u32),
                (20, 3, millis),
            ] {
                let mut n = n;
                for slot in text[at..at + width].iter_mut().rev() {
                    *slot = b'0' + (n % 10) as u8;
                    n /= 10;
                }
            }
            out.extend_from_slice(&text);
        }
        // A negative year, as `{:04}` writes it.
        Ok(t) => out.extend_from_slice(
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                millis
            )
            .as_bytes(),
        ),
        // Out of the representable range: clamp rather than fail the event.
        Err(_) => out.extend_from_slice(b"1970-01-01T00:00:00.000Z"),
    }
}

/// The current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_millis(now_millis())
}

/// The current Unix time in milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_millis() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_698_825_600_123),
            "2023-11-01T08:00:00.123Z"
        );
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_millis(-62_198_755_200_000),
            "-001-01-01T00:00:00.000Z"
        );
        assert_eq!(rfc3339_millis(i64::MAX), "1970-01-01T00:00:00.000Z");
    }
}
