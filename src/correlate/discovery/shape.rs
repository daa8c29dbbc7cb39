//! What an attribute value looks like: an object identity (uuid, address, handle, token) or a
//! label (enum word, small number, route, timestamp). Pure, allocation-free, one pass per value.
//!
//! The split matters more than the exact class: a label every user shares is normal, an identity
//! every user shares is a leak. When in doubt a value is a label, so doubt never raises a suspect.

use serde::Serialize;

/// The shape of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// 8-4-4-4-12 hex digits.
    Uuid,
    /// An address or handle in hex (`0x7f3a…`, ≥ 8 hex digits with a digit and a letter).
    Hex,
    /// An integer of 8+ digits that is not a plausible timestamp (object ids, `id()` results).
    LargeInt,
    /// A long high-entropy string: base64, base32, random ids.
    Token,
    /// A word prefix and an identity suffix: `sess_4f9a8b7c1d2e`, `emitter-0x7f3a2b10`.
    PrefixedId,
    /// An integer of up to 7 digits: thread ids, line numbers, counts, status codes.
    ShortInt,
    /// A Unix time in seconds, ms, µs or ns (2001–2066).
    Timestamp,
    /// Any other number, or a boolean.
    Number,
    /// A route, URL or path.
    Route,
    /// A short word or dotted/dashed name: enum values, model names, regions.
    Word,
    /// Anything else (free text).
    Text,
}

impl Shape {
    /// Every shape, in the order of [`Shape::index`].
    pub const ALL: [Shape; 11] = [
        Shape::Uuid,
        Shape::Hex,
        Shape::LargeInt,
        Shape::Token,
        Shape::PrefixedId,
        Shape::ShortInt,
        Shape::Timestamp,
        Shape::Number,
        Shape::Route,
        Shape::Word,
        Shape::Text,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether values of this shape name one object (and so must not be shared between users).
    pub fn is_identity(self) -> bool {
        matches!(
            self,
            Shape::Uuid | Shape::Hex | Shape::LargeInt | Shape::Token | Shape::PrefixedId
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Uuid => "uuid",
            Shape::Hex => "hex",
            Shape::LargeInt => "large_int",
            Shape::Token => "token",
            Shape::PrefixedId => "prefixed_id",
            Shape::ShortInt => "short_int",
            Shape::Timestamp => "timestamp",
            Shape::Number => "number",
            Shape::Route => "route",
            Shape::Word => "word",
            Shape::Text => "text",
        }
    }
}

/// Classify one value.
pub fn classify(value: &str) -> Shape {
    let v = value.trim();
    if v.is_empty() {
        return Shape::Text;
    }
    if is_uuid(v) {
        return Shape::Uuid;
    }
    if let Some(shape) = numeric(v) {
        return shape;
    }
    if is_hex_id(v) {
        return Shape::Hex;
    }
    if v.starts_with('/') || v.contains("://") || v.contains("/{") || v.contains("/:") {
        return Shape::Route;
    }
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        return Shape::Number;
    }
    if let Some(suffix) = id_suffix(v) {
        let inner = classify(suffix);
        if inner.is_identity() || (inner == Shape::Word && is_token_like(suffix, 8)) {
            return Shape::PrefixedId;
        }
    }
    if is_token(v) {
        return Shape::Token;
    }
    if v.len() <= 64 && !v.contains(char::is_whitespace) {
        return Shape::Word;
    }
    Shape::Text
}

fn is_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn numeric(v: &str) -> Option<Shape> {
    let digits = v.strip_prefix('-').unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        if digits.len() <= 7 {
            return Some(Shape::ShortInt);
        }
        return Some(if is_timestamp(digits) {
            Shape::Timestamp
        } else {
            Shape::LargeInt
        });
    }
    v.parse::<f64>().ok().map(|_| Shape::Number)
}

/// Seconds, ms, µs or ns since the epoch between 2001 and 2066: a time, not an object.
fn is_timestamp(digits: &str) -> bool {
    let scale: u64 = match digits.len() {
        10 => 1,
        13 => 1_000,
        16 => 1_000_000,
        19 => 1_000_000_000,
        _ => return false,
    };
    digits
        .parse::<u64>()
        .is_ok_and(|n| (1_000_000_000..3_000_000_000).contains(&(n / scale)))
}

fn is_hex_id(v: &str) -> bool {
    let (body, prefixed) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(rest) => (rest, true),
        None => (v, false),
    };
    if body.is_empty() || !body.bytes().all(|c| c.is_ascii_hexdigit()) {
        return false;
    }
    if prefixed {
        return body.len() >= 4;
    }
    body.len() >= 8
        && body.bytes().any(|c| c.is_ascii_digit())
        && body.bytes().any(|c| c.is_ascii_alphabetic())
}

/// A long base64/base32/random-id string: mixes letters and digits (or both cases) and is long.
fn is_token(v: &str) -> bool {
    v.len() >= 16
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
        && is_token_like(v, 16)
}

/// Letters and digits mixed, with few repeats: what random ids look like and words do not.
/// Both cases and 2+ digits (base64), or one case with digits making an eighth of it (base32).
fn is_token_like(v: &str, min_len: usize) -> bool {
    let b = v.as_bytes();
    if b.len() < min_len {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
    let mixed = (upper > 0 && lower > 0 && digits >= 2)
        || ((upper > 0) != (lower > 0) && digits * 8 >= b.len());
    let mut seen = [false; 128];
    let mut distinct = 0;
    for &c in b {
        if c < 128 && !seen[c as usize] {
            seen[c as usize] = true;
            distinct += 1;
        }
    }
    mixed && distinct * 3 >= b.len().min(48)
}

/// The part after the last `_`, `-`, `:`, `@` or `#` when what precedes it is a word.
fn id_suffix(v: &str) -> Option<&str> {
    let at = v.rfind(['_', '-', ':', '@', '#'])?;
    let (head, tail) = (&v[..at], &v[at + 1..]);
    let head_is_word = !head.is_empty() && head.bytes().any(|c| c.is_ascii_alphabetic());
    (head_is_word && !tail.is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b", Shape::Uuid),
            ("0x7f3a2b10c4d0", Shape::Hex),
            ("7f3a2b10c4d0e5f6", Shape::Hex),
            ("deadbeefcafe", Shape::Word),
            ("140234567890123", Shape::LargeInt),
            ("1732540000", Shape::Timestamp),
            ("1732540000123", Shape::Timestamp),
            ("1732540000123456789", Shape::Timestamp),
            ("12345", Shape::ShortInt),
            ("-3", Shape::ShortInt),
            ("140", Shape::ShortInt),
            ("0.25", Shape::Number),
            ("true", Shape::Number),
            ("/api/v1/users/{id}", Shape::Route),
            ("https://example.com/x", Shape::Route),
            ("gpt-4o-mini", Shape::Word),
            ("us-east-1", Shape::Word),
            ("POST", Shape::Word),
            ("worker-3", Shape::Word),
            ("app.handlers.chat", Shape::Word),
            ("aGVsbG8gd29ybGQgdGhpcyBpcw==", Shape::Token),
            ("Kx9fQ2mZ7pL3vN8r", Shape::Token),
            ("MyServiceV2Endpoint", Shape::Word),
            ("sess_4f9a8b7c1d2e", Shape::PrefixedId),
            ("emitter-0x7f3a2b10", Shape::PrefixedId),
            (
                "conn:3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b",
                Shape::PrefixedId,
            ),
            ("req-8261734500012", Shape::PrefixedId),
            ("the user asked a question", Shape::Text),
            ("", Shape::Text),
        ];
        for (value, want) in cases {
            assert_eq!(classify(value), want, "{value}");
        }
    }

    #[test]
    fn identity_split() {
        assert!(Shape::Hex.is_identity() && Shape::PrefixedId.is_identity());
        assert!(!Shape::ShortInt.is_identity() && !Shape::Timestamp.is_identity());
        for (i, s) in Shape::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }
}
