//! The DER primitives the build record and the reference's commands and state
//! file need, written once and shared by
//! [`Exec::encode`](super::Exec::encode), [`write_record`](super::write_record),
//! the reader and [`crate::legacy`]: identifier octets, definite minimal
//! lengths, INTEGER, the two time types, and [`Node`], a tree of elements to
//! write whose lengths are computed once.

use std::convert::Infallible;
use std::ops::Deref;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc};

use super::TimeForm;

pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const UTF8_STRING: u8 = 0x0c;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;

/// The identifier octet of `[n] EXPLICIT` (context class, constructed).
pub(crate) const fn context(n: u8) -> u8 {
    0xa0 | n
}

/// The smallest INTEGER the reference reads: OCaml's `min_int`, -2^62.
pub const INT_MIN: i64 = -(1 << 62);
/// The largest INTEGER the reference reads: OCaml's `max_int`, 2^62 - 1.
pub const INT_MAX: i64 = (1 << 62) - 1;

/// A few bytes on the stack: a header, an INTEGER's content or a time.
#[derive(Clone, Copy)]
pub(crate) struct Small {
    buf: [u8; 24],
    len: usize,
}

impl Small {
    fn new() -> Small {
        Small {
            buf: [0; 24],
            len: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `value` as exactly `width` decimal digits.
    fn digits(&mut self, value: u32, width: u32) {
        for i in (0..width).rev() {
            self.push(b'0' + (value / 10u32.pow(i) % 10) as u8);
        }
    }

    pub(crate) fn len_u64(&self) -> u64 {
        self.len as u64
    }
}

impl Deref for Small {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// One DER element to write. Building the tree computes every length once;
/// string contents are borrowed, so nesting copies nothing before
/// [`Node::emit`] writes the bytes out in order.
pub(crate) enum Node<'a> {
    /// A primitive element whose content is borrowed.
    Bytes { tag: u8, content: &'a [u8] },
    /// A primitive element with a short content (INTEGER, time, NULL).
    Small { tag: u8, content: Small },
    /// A constructed element and its content's length.
    Constructed {
        tag: u8,
        children: Vec<Node<'a>>,
        len: u64,
    },
}

impl<'a> Node<'a> {
    /// A UTF8String holding any bytes.
    pub(crate) fn string(content: &'a [u8]) -> Node<'a> {
        Node::Bytes {
            tag: UTF8_STRING,
            content,
        }
    }

    /// An INTEGER (clamped into the reference's range, see [`int_content`]).
    pub(crate) fn integer(value: i64) -> Node<'a> {
        Node::Small {
            tag: INTEGER,
            content: int_content(value),
        }
    }

    /// NULL.
    pub(crate) fn null() -> Node<'a> {
        Node::Small {
            tag: NULL,
            content: Small::new(),
        }
    }

    /// A time in the given form (see [`time_content`]).
    pub(crate) fn time(time: &DateTime<Utc>, form: TimeForm) -> Node<'a> {
        let (tag, content) = time_content(time, form);
        Node::Small { tag, content }
    }

    /// A constructed element with identifier `tag`.
    pub(crate) fn constructed(tag: u8, children: Vec<Node<'a>>) -> Node<'a> {
        let len = children.iter().map(Node::encoded_len).sum();
        Node::Constructed { tag, children, len }
    }

    /// A SEQUENCE (or SEQUENCE OF).
    pub(crate) fn sequence(children: Vec<Node<'a>>) -> Node<'a> {
        Node::constructed(SEQUENCE, children)
    }

    /// `[n] EXPLICIT inner`.
    pub(crate) fn explicit(n: u8, inner: Node<'a>) -> Node<'a> {
        Node::constructed(context(n), vec![inner])
    }

    fn tag_and_len(&self) -> (u8, u64) {
        match self {
            Node::Bytes { tag, content } => (*tag, content.len() as u64),
            Node::Small { tag, content } => (*tag, content.len_u64()),
            Node::Constructed { tag, len, .. } => (*tag, *len),
        }
    }

    /// Bytes the element takes, header included.
    pub(crate) fn encoded_len(&self) -> u64 {
        tlv_len(self.tag_and_len().1)
    }

    /// Hands the encoding to `put`, in order, in pieces.
    pub(crate) fn emit<E>(&self, put: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let (tag, len) = self.tag_and_len();
        put(&header(tag, len))?;
        match self {
            Node::Bytes { content, .. } => put(content),
            Node::Small { content, .. } => put(content),
            Node::Constructed { children, .. } => {
                children.iter().try_for_each(|child| child.emit(&mut *put))
            }
        }
    }

    /// The encoding in one buffer.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.encoded_len()).unwrap_or(0));
        self.emit(&mut |bytes| {
            out.extend_from_slice(bytes);
            Ok::<(), Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        out
    }
}

/// Bytes taken by the definite, minimal encoding of the length `len`.
fn length_len(len: u64) -> u64 {
    if len < 0x80 {
        1
    } else {
        1 + u64::from(8 - len.leading_zeros() / 8)
    }
}

/// Bytes taken by an element whose content is `content` bytes long (all tags
/// of this schema fit in one identifier octet).
pub(crate) fn tlv_len(content: u64) -> u64 {
    1 + length_len(content) + content
}

/// The identifier octet and the definite, minimal length of an element.
pub(crate) fn header(tag: u8, len: u64) -> Small {
    let mut out = Small::new();
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let n = (length_len(len) - 1) as usize;
        out.push(0x80 | n as u8);
        out.extend(&len.to_be_bytes()[8 - n..]);
    }
    out
}

/// The content octets of an INTEGER: minimal two's complement. Values outside
/// the reference's range ([`INT_MIN`]..=[`INT_MAX`]) are clamped to it, so
/// every record written stays readable by the reference and by this crate.
pub(crate) fn int_content(value: i64) -> Small {
    let bytes = value.clamp(INT_MIN, INT_MAX).to_be_bytes();
    let mut start = 0;
    while start < 7 && redundant(bytes[start], bytes[start + 1]) {
        start += 1;
    }
    let mut out = Small::new();
    out.extend(&bytes[start..]);
    out
}

/// Whether a leading `first` byte followed by `next` is a redundant sign
/// extension (forbidden in DER).
fn redundant(first: u8, next: u8) -> bool {
    (first == 0x00 && next < 0x80) || (first == 0xff && next >= 0x80)
}

/// Reads the content octets of an INTEGER as the reference does: minimal two's
/// complement, at most 8 bytes, within OCaml's 63-bit `int`.
pub(crate) fn parse_int(content: &[u8]) -> Result<i64, &'static str> {
    match content {
        [] => return Err("no content octets"),
        [first, next, ..] if redundant(*first, *next) => {
            return Err("redundant leading octet (not minimal)")
        }
        _ if content.len() > 8 => return Err("more than 8 octets (out of range)"),
        _ => {}
    }
    let mut value: i64 = if content[0] & 0x80 != 0 { -1 } else { 0 };
    for &byte in content {
        value = (value << 8) | i64::from(byte);
    }
    if !(INT_MIN..=INT_MAX).contains(&value) {
        return Err("outside the 63-bit range of the reference");
    }
    Ok(value)
}

/// The first and last instants the reference (and so the record) can hold.
fn time_bounds() -> (DateTime<Utc>, DateTime<Utc>) {
    let first = NaiveDate::from_ymd_opt(0, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("0000-01-01 is a valid date");
    let last = NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_999))
        .expect("9999-12-31 is a valid date");
    (first.and_utc(), last.and_utc())
}

/// The identifier octet and content octets of a time.
///
/// GeneralizedTime `YYYYMMDDhhmmss[.fff]Z` with three digits of *truncated*
/// milliseconds, present iff the sub-second part is non-zero (or always, for
/// [`TimeForm::GeneralizedMillis`]). [`TimeForm::UtcTime`] writes
/// `YYMMDDhhmmssZ` when that represents the time exactly (years 1950..=2049,
/// no sub-second part), GeneralizedTime otherwise. Times outside years
/// 0000..=9999 are clamped into them; a leap second (which chrono can carry
/// and the reference cannot) is written as the last millisecond before it.
pub(crate) fn time_content(time: &DateTime<Utc>, form: TimeForm) -> (u8, Small) {
    let (first, last) = time_bounds();
    let time = (*time).clamp(first, last);
    let nanos = time.nanosecond().min(999_999_999);
    let mut out = Small::new();
    let year = time.year();
    if form == TimeForm::UtcTime && (1950..=2049).contains(&year) && nanos == 0 {
        out.digits(year as u32 % 100, 2);
        date_digits(&mut out, &time);
        out.push(b'Z');
        return (UTC_TIME, out);
    }
    out.digits(year as u32, 4);
    date_digits(&mut out, &time);
    if nanos != 0 || form == TimeForm::GeneralizedMillis {
        out.push(b'.');
        out.digits(nanos / 1_000_000, 3);
    }
    out.push(b'Z');
    (GENERALIZED_TIME, out)
}

fn date_digits(out: &mut Small, time: &DateTime<Utc>) {
    out.digits(time.month(), 2);
    out.digits(time.day(), 2);
    out.digits(time.hour(), 2);
    out.digits(time.minute(), 2);
    out.digits(time.second(), 2);
}

/// A cursor over the ASCII of a time.
struct Text<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Text<'_> {
    /// Exactly `n` digits, if the next `n` bytes are digits.
    fn number(&mut self, n: usize) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos + n)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(
            digits
                .iter()
                .fold(0, |acc, d| acc * 10 + u32::from(d - b'0')),
        )
    }

    /// Whether two more digits follow.
    fn two_digits_follow(&self) -> bool {
        self.bytes
            .get(self.pos..self.pos + 2)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }
}

/// Reads a UTCTime (`tag` [`UTC_TIME`]) or GeneralizedTime with the
/// reference's leniency:
///
/// - UTCTime `YYMMDDhhmm[ss]`, years 50..99 are 19xx, 00..49 are 20xx;
/// - GeneralizedTime `YYYYMMDDhh[mm[ss[.f+]]]`, the fraction read as an
///   integer of up to three digits of milliseconds (`.5` is 5 ms, `.1234` is
///   123 ms, digits past the third are ignored);
/// - then `Z`, nothing (UTC too) or a `+hhmm`/`-hhmm` offset, which applies;
/// - second 60 rolls over into the next minute.
///
/// Anything else is refused, as are impossible dates and results outside
/// years 0000..=9999. Returns the time and the form that re-encodes these
/// bytes when they are in a form this crate writes.
pub(crate) fn parse_time(tag: u8, content: &[u8]) -> Option<(DateTime<Utc>, TimeForm)> {
    let mut text = Text {
        bytes: content,
        pos: 0,
    };
    let utc = tag == UTC_TIME;
    let mut form = if utc {
        TimeForm::UtcTime
    } else {
        TimeForm::Generalized
    };
    let year = if utc {
        let yy = text.number(2)?;
        if yy < 50 {
            2000 + yy
        } else {
            1900 + yy
        }
    } else {
        text.number(4)?
    };
    let month = text.number(2)?;
    let day = text.number(2)?;
    let hour = text.number(2)?;
    let (mut minute, mut second, mut millis) = (0, 0, 0);
    // UTCTime always has minutes; GeneralizedTime may stop after the hour.
    if utc || text.two_digits_follow() {
        minute = text.number(2)?;
        if text.two_digits_follow() {
            second = text.number(2)?;
            if !utc && text.rest().first() == Some(&b'.') {
                text.pos += 1;
                let count = text
                    .rest()
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if count == 0 {
                    return None;
                }
                let fraction = &text.rest()[..count];
                millis = fraction[..count.min(3)]
                    .iter()
                    .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'));
                if fraction == b"000" {
                    form = TimeForm::GeneralizedMillis;
                }
                text.pos += count;
            }
        }
    }
    let offset_minutes: i64 = match text.rest() {
        b"" | b"Z" => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let sign = if *sign == b'+' { 1 } else { -1 };
            text.pos += 1;
            let hh = text.number(2)?;
            let mm = text.number(2)?;
            if !text.rest().is_empty() || hh > 23 || mm > 59 {
                return None;
            }
            sign * i64::from(hh * 60 + mm)
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let local = date.and_hms_milli_opt(hour, minute, second.min(59), millis)?
        + TimeDelta::seconds(i64::from(second / 60));
    let time = (local - TimeDelta::minutes(offset_minutes)).and_utc();
    let (first, last) = time_bounds();
    if time < first || time > last {
        return None;
    }
    if form == TimeForm::UtcTime && !(1950..=2049).contains(&time.year()) {
        // An offset moved it out of UTCTime's range: it would be written as
        // GeneralizedTime, so say so.
        form = TimeForm::Generalized;
    }
    Some((time, form))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int_hex(value: i64) -> String {
        int_content(value)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn integer_encoding_is_minimal_twos_complement() {
        let cases: &[(i64, &str)] = &[
            (0, "00"),
            (1, "01"),
            (127, "7f"),
            (128, "0080"),
            (255, "00ff"),
            (256, "0100"),
            (300, "012c"),
            (32767, "7fff"),
            (32768, "008000"),
            (-1, "ff"),
            (-7, "f9"),
            (-128, "80"),
            (-129, "ff7f"),
            (-256, "ff00"),
            (-32768, "8000"),
            (-32769, "ff7fff"),
            (2_147_483_648, "0080000000"),
            (INT_MAX, "3fffffffffffffff"),
            (INT_MIN, "c000000000000000"),
        ];
        for &(value, hex) in cases {
            assert_eq!(int_hex(value), hex, "encoding {value}");
            let content = int_content(value);
            assert_eq!(parse_int(&content), Ok(value), "decoding {hex}");
        }
    }

    #[test]
    fn integers_outside_the_reference_range_are_clamped_on_encode() {
        assert_eq!(int_hex(i64::MAX), "3fffffffffffffff");
        assert_eq!(int_hex(INT_MAX + 1), "3fffffffffffffff");
        assert_eq!(int_hex(i64::MIN), "c000000000000000");
        assert_eq!(int_hex(INT_MIN - 1), "c000000000000000");
    }

    #[test]
    fn integer_decoding_rejects_what_the_reference_rejects() {
        assert!(parse_int(&[]).is_err());
        assert!(parse_int(&[0x00, 0x7f]).is_err(), "redundant positive");
        assert!(parse_int(&[0xff, 0x80]).is_err(), "redundant negative");
        assert!(parse_int(&[0x00, 0x00]).is_err(), "redundant zero");
        assert!(parse_int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_int(&[0x40, 0, 0, 0, 0, 0, 0, 0]).is_err(), "2^62");
        assert!(parse_int(&[0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(
            parse_int(&[0x00, 0x80, 0, 0, 0, 0, 0, 0, 0]).is_err(),
            "9 bytes"
        );
        assert_eq!(parse_int(&[0x00, 0x80]), Ok(128));
        assert_eq!(parse_int(&[0xff, 0x7f]), Ok(-129));
        assert_eq!(parse_int(&[0x80]), Ok(-128));
    }

    #[test]
    fn header_lengths_are_definite_and_minimal() {
        let hex = |tag, len| -> String {
            header(tag, len)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(hex(SEQUENCE, 0), "3000");
        assert_eq!(hex(SEQUENCE, 127), "307f");
        assert_eq!(hex(SEQUENCE, 128), "308180");
        assert_eq!(hex(SEQUENCE, 255), "3081ff");
        assert_eq!(hex(SEQUENCE, 256), "30820100");
        assert_eq!(hex(UTF8_STRING, 200_000), "0c83030d40");
        assert_eq!(hex(UTF8_STRING, u64::MAX), "0c88ffffffffffffffff");
        for len in [0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 40, u64::MAX] {
            assert_eq!(header(SEQUENCE, len).len_u64(), 1 + length_len(len));
            if len < u64::MAX / 2 {
                assert_eq!(tlv_len(len), 1 + length_len(len) + len);
            }
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn written(time: &str, form: TimeForm) -> (u8, String) {
        let (tag, content) = time_content(&utc(time), form);
        (tag, String::from_utf8(content.to_vec()).unwrap())
    }

    #[test]
    fn times_are_written_with_truncated_milliseconds() {
        let gen = |s: &str| (GENERALIZED_TIME, s.to_string());
        let canonical = TimeForm::Generalized;
        assert_eq!(
            written("2024-01-01T00:00:00Z", canonical),
            gen("20240101000000Z")
        );
        assert_eq!(
            written("2024-06-30T23:59:59.123456789Z", canonical),
            gen("20240630235959.123Z")
        );
        assert_eq!(
            written("2024-07-01T00:00:00.5Z", canonical),
            gen("20240701000000.500Z")
        );
        assert_eq!(
            written("2024-01-01T00:00:00.0005Z", canonical),
            gen("20240101000000.000Z")
        );
        assert_eq!(
            written("2024-01-01T00:00:01.999999Z", canonical),
            gen("20240101000001.999Z")
        );
        assert_eq!(
            written("0000-01-01T00:00:00Z", canonical),
            gen("00000101000000Z")
        );
        assert_eq!(
            written("9999-12-31T23:59:59.999Z", canonical),
            gen("99991231235959.999Z")
        );
        assert_eq!(
            written("2024-01-01T00:00:00Z", TimeForm::GeneralizedMillis),
            gen("20240101000000.000Z")
        );
        assert_eq!(
            written("2049-12-31T23:59:59Z", TimeForm::UtcTime),
            (UTC_TIME, "491231235959Z".to_string())
        );
        assert_eq!(
            written("1950-01-01T00:00:00Z", TimeForm::UtcTime),
            (UTC_TIME, "500101000000Z".to_string())
        );
        // UTCTime only where it is exact.
        assert_eq!(
            written("2050-01-01T00:00:00Z", TimeForm::UtcTime),
            gen("20500101000000Z")
        );
        assert_eq!(
            written("2024-01-01T00:00:00.25Z", TimeForm::UtcTime),
            gen("20240101000000.250Z")
        );
    }

    #[test]
    fn times_outside_the_reference_range_are_clamped() {
        let far = NaiveDate::from_ymd_opt(12345, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let (_, content) = time_content(&far, TimeForm::Generalized);
        assert_eq!(&*content, b"99991231235959.999Z");
        let early = NaiveDate::from_ymd_opt(-5, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let (_, content) = time_content(&early, TimeForm::Generalized);
        assert_eq!(&*content, b"00000101000000Z");
    }

    fn read(tag: u8, text: &str) -> Option<String> {
        parse_time(tag, text.as_bytes())
            .map(|(t, _)| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    #[test]
    fn times_are_read_leniently_like_the_reference() {
        let g = |s| read(GENERALIZED_TIME, s);
        let u = |s| read(UTC_TIME, s);
        let some = |s: &str| Some(s.to_string());
        assert_eq!(g("20240101000000Z"), some("2024-01-01T00:00:00.000Z"));
        assert_eq!(g("20240101000000.5Z"), some("2024-01-01T00:00:00.005Z"));
        assert_eq!(g("20240101000000.50Z"), some("2024-01-01T00:00:00.050Z"));
        assert_eq!(g("20240101000000.050Z"), some("2024-01-01T00:00:00.050Z"));
        assert_eq!(g("20240101000000.1234Z"), some("2024-01-01T00:00:00.123Z"));
        assert_eq!(
            g("20240101000000.123456789Z"),
            some("2024-01-01T00:00:00.123Z")
        );
        assert_eq!(g("20240101000000"), some("2024-01-01T00:00:00.000Z"));
        assert_eq!(g("2024010100Z"), some("2024-01-01T00:00:00.000Z"));
        assert_eq!(g("202401010000Z"), some("2024-01-01T00:00:00.000Z"));
        assert_eq!(g("20240101000000+0100"), some("2023-12-31T23:00:00.000Z"));
        assert_eq!(
            g("20240101000000.250-0030"),
            some("2024-01-01T00:30:00.250Z")
        );
        assert_eq!(g("20161231235960Z"), some("2017-01-01T00:00:00.000Z"));
        assert_eq!(g("00000101000000Z"), some("0000-01-01T00:00:00.000Z"));
        assert_eq!(g("99991231235959.999Z"), some("9999-12-31T23:59:59.999Z"));
        assert_eq!(g("20240229120000Z"), some("2024-02-29T12:00:00.000Z"));
        assert_eq!(u("491231235959Z"), some("2049-12-31T23:59:59.000Z"));
        assert_eq!(u("500101000000Z"), some("1950-01-01T00:00:00.000Z"));
        assert_eq!(u("2401010000Z"), some("2024-01-01T00:00:00.000Z"));
        assert_eq!(u("240101000000-0130"), some("2024-01-01T01:30:00.000Z"));
        assert_eq!(u("240101000000"), some("2024-01-01T00:00:00.000Z"));
    }

    #[test]
    fn malformed_or_impossible_times_are_refused() {
        for text in [
            "",
            "2024-01-01T00:00:00Z",
            "20240101000000,5Z",
            "20240101000000.Z",
            "20240101000000ZZ",
            "20240101000000+01",
            "20240101000000+2400",
            "202401010Z",
            "20240101000Z",
            "2024010100.5Z",
            "20241301000000Z",
            "20230229000000Z",
            "20240100000000Z",
            "20240101240000Z",
            "20240101006000Z",
            "20240101000061Z",
            "00000101000000+0001",
            "99991231235959-0001",
            "2024 101000000Z",
        ] {
            assert_eq!(
                read(GENERALIZED_TIME, text),
                None,
                "GeneralizedTime {text:?}"
            );
        }
        for text in [
            "24010100Z",
            "240101000000.5Z",
            "24010100000Z",
            "241301000000Z",
        ] {
            assert_eq!(read(UTC_TIME, text), None, "UTCTime {text:?}");
        }
    }

    #[test]
    fn a_utctime_moved_out_of_its_range_by_an_offset_is_written_as_generalized_time() {
        let (time, form) = parse_time(UTC_TIME, b"491231235959-0100").unwrap();
        assert_eq!(form, TimeForm::Generalized);
        let (tag, content) = time_content(&time, form);
        assert_eq!(
            (tag, &*content),
            (GENERALIZED_TIME, &b"20500101005959Z"[..])
        );
        assert_eq!(parse_time(tag, &content), Some((time, form)));
    }

    #[test]
    fn the_form_read_is_the_form_that_writes_the_same_bytes() {
        for (tag, text) in [
            (GENERALIZED_TIME, "20240101000000Z"),
            (GENERALIZED_TIME, "20240101000000.000Z"),
            (GENERALIZED_TIME, "20240101000000.120Z"),
            (GENERALIZED_TIME, "99991231235959.999Z"),
            (UTC_TIME, "491231235959Z"),
            (UTC_TIME, "500101000000Z"),
        ] {
            let (time, form) = parse_time(tag, text.as_bytes()).unwrap();
            let (tag_out, content) = time_content(&time, form);
            assert_eq!((tag_out, &*content), (tag, text.as_bytes()), "{text}");
        }
    }
}
