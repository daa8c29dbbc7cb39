//! OTLP/protobuf traces → [`Observation`]s without building the message: a zero-copy reader
//! over the request bytes that walks `ExportTraceServiceRequest` → `ResourceSpans` → `Resource`
//! → `ScopeSpans` → `Span` and reads only what [`otlp::observe_traces`] reads.
//!
//! Invariant: for every input, the result equals `ExportTraceServiceRequest::decode` (prost)
//! followed by [`otlp::observe_traces`]: the same observations and tally when prost accepts the
//! bytes, an error when it rejects them. Prost rejects more than malformed framing, so every
//! field of the schema is checked as prost checks it, read or not: the wire type of each known
//! field, UTF-8 of each string, the framing of unknown fields (groups included), and prost's
//! nesting limit of 100. Repeated occurrences of a singular field follow prost's merge rules
//! (scalars: last one wins; messages: merged, so a second `resource` appends attributes).
//! The differential tests at the bottom and the `otlp_protobuf_differential` fuzz target guard
//! this invariant.
//!
//! The speed comes from what is not done: no `String`/`Vec` per attribute, key or id; an
//! attribute's value is formatted only when its key is one normalization looks at.

use std::fmt::Write as _;
use std::sync::Arc;

use super::otlp::{self, ResourceBuilder, SpanFacts};
use super::{AttributeScan, Extractor, Observation, Resource, Tally};

/// Why the bytes are not a valid `ExportTraceServiceRequest` (prost would refuse them too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FastDecodeError {
    #[error("invalid varint")]
    InvalidVarint,
    #[error("invalid field key")]
    InvalidKey,
    #[error("buffer underflow: a field runs past the end of its message")]
    Truncated,
    #[error("invalid wire type {actual} for field {tag} (expected {expected})")]
    WrongWireType { tag: u32, actual: u8, expected: u8 },
    #[error("invalid string value: data is not UTF-8 encoded")]
    InvalidUtf8,
    #[error("unexpected end group tag")]
    UnexpectedEndGroup,
    #[error("recursion limit reached")]
    RecursionLimit,
}

type Result<T> = std::result::Result<T, FastDecodeError>;

/// Prost's `RECURSION_LIMIT`: the nesting depth counter the top-level fields are read with.
const RECURSION_LIMIT: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Observations of every usable span in a protobuf `ExportTraceServiceRequest`; see the module
/// doc for how it relates to [`otlp::observe_traces`]. On error `tally` is left untouched.
pub fn observe_traces_protobuf(
    bytes: &[u8],
    ex: &Extractor,
    received_ns: u64,
    tally: &mut Tally,
) -> Result<Vec<Observation>> {
    let mut walk = Walk {
        ex,
        received_ns,
        tally: Tally::default(),
        out: Vec::new(),
        scratch: String::new(),
    };
    let mut r = Reader::new(bytes);
    let ctx = RECURSION_LIMIT;
    while let Some((tag, wt)) = r.key()? {
        if tag == 1 {
            walk.resource_spans(r.message(tag, wt, ctx)?, ctx - 1)?;
        } else {
            r.skip(tag, wt, ctx)?;
        }
    }
    tally.absorb(walk.tally);
    Ok(walk.out)
}

fn utf8(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| FastDecodeError::InvalidUtf8)
}

/// A cursor over one message's bytes. Nested messages get their own reader over exactly their
/// bytes, so a field that runs past its message's end is an error, as it is for prost.
#[derive(Clone, Copy)]
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    /// Prost's varint rules: at most 10 bytes, the 10th at most 1; overlong encodings pass.
    /// Keys and most lengths are one byte, hence the split.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64> {
        match self.rest {
            [b, rest @ ..] if *b < 0x80 => {
                self.rest = rest;
                Ok(u64::from(*b))
            }
            _ => self.varint_long(),
        }
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for (i, &b) in self.rest.iter().take(10).enumerate() {
            if i == 9 && b >= 0x02 {
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(FastDecodeError::InvalidVarint)
    }

    /// The next field's tag and wire type, or None at the end of the message.
    #[inline(always)]
    fn key(&mut self) -> Result<Option<(u32, u8)>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire_type = (key & 7) as u8;
        if key > u64::from(u32::MAX) || wire_type > FIXED32 || key >> 3 == 0 {
            return Err(FastDecodeError::InvalidKey);
        }
        Ok(Some(((key >> 3) as u32, wire_type)))
    }

    #[inline(always)]
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.rest.len() as u64 {
            return Err(FastDecodeError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(n as usize);
        self.rest = rest;
        Ok(taken)
    }

    #[inline]
    fn expect(tag: u32, actual: u8, expected: u8) -> Result<()> {
        if actual == expected {
            Ok(())
        } else {
            Err(FastDecodeError::WrongWireType {
                tag,
                actual,
                expected,
            })
        }
    }

    #[inline]
    fn bytes(&mut self, tag: u32, wt: u8) -> Result<&'a [u8]> {
        Self::expect(tag, wt, LEN)?;
        let n = self.varint()?;
        self.take(n)
    }

    /// A string field's bytes, checked to be UTF-8 but not converted: most are never looked at
    /// as text, and the ASCII check is cheaper than `from_utf8` on short strings.
    #[inline]
    fn text(&mut self, tag: u32, wt: u8) -> Result<&'a [u8]> {
        let b = self.bytes(tag, wt)?;
        if b.is_ascii() || std::str::from_utf8(b).is_ok() {
            Ok(b)
        } else {
            Err(FastDecodeError::InvalidUtf8)
        }
    }

    /// A nested message's bytes; `ctx` is the depth counter of the fields around it.
    #[inline]
    fn message(&mut self, tag: u32, wt: u8, ctx: u32) -> Result<Reader<'a>> {
        Self::expect(tag, wt, LEN)?;
        if ctx == 0 {
            return Err(FastDecodeError::RecursionLimit);
        }
        let n = self.varint()?;
        Ok(Reader::new(self.take(n)?))
    }

    #[inline]
    fn fixed64(&mut self, tag: u32, wt: u8) -> Result<u64> {
        Self::expect(tag, wt, FIXED64)?;
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    #[inline]
    fn int(&mut self, tag: u32, wt: u8) -> Result<u64> {
        Self::expect(tag, wt, VARINT)?;
        self.varint()
    }

    /// Skip a field the schema does not know, as prost's `skip_field` does.
    fn skip(&mut self, tag: u32, wt: u8, ctx: u32) -> Result<()> {
        if ctx == 0 {
            return Err(FastDecodeError::RecursionLimit);
        }
        match wt {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.take(8)?;
            }
            FIXED32 => {
                self.take(4)?;
            }
            LEN => {
                let n = self.varint()?;
                self.take(n)?;
            }
            START_GROUP => loop {
                let Some((inner, inner_wt)) = self.key()? else {
                    return Err(FastDecodeError::InvalidVarint);
                };
                if inner_wt == END_GROUP {
                    if inner != tag {
                        return Err(FastDecodeError::UnexpectedEndGroup);
                    }
                    break;
                }
                self.skip(inner, inner_wt, ctx - 1)?;
            },
            _ => return Err(FastDecodeError::UnexpectedEndGroup),
        }
        Ok(())
    }

    /// Check, without reading it, a field of `msg`: known fields by their kind, others skipped.
    fn check(&mut self, msg: Msg, tag: u32, wt: u8, ctx: u32) -> Result<()> {
        match msg.field(tag) {
            None => self.skip(tag, wt, ctx),
            Some(Kind::Varint) => self.int(tag, wt).map(drop),
            Some(Kind::Fixed64) => self.fixed64(tag, wt).map(drop),
            Some(Kind::Fixed32) => {
                Self::expect(tag, wt, FIXED32)?;
                self.take(4).map(drop)
            }
            Some(Kind::Bytes) => self.bytes(tag, wt).map(drop),
            Some(Kind::Str) => self.text(tag, wt).map(drop),
            Some(Kind::Message(inner)) => self.message(tag, wt, ctx)?.validate(inner, ctx - 1),
        }
    }

    /// Check a whole message whose fields are read with depth counter `ctx`.
    fn validate(mut self, msg: Msg, ctx: u32) -> Result<()> {
        while let Some((tag, wt)) = self.key()? {
            self.check(msg, tag, wt, ctx)?;
        }
        Ok(())
    }
}

/// The messages of the trace schema, for checking the fields that are not read.
#[derive(Debug, Clone, Copy)]
enum Msg {
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Varint,
    Fixed32,
    Fixed64,
    Bytes,
    Str,
    Message(Msg),
}

impl Msg {
    /// The schema, as `opentelemetry-proto` generates it (enums and bools are varints; the
    /// repeated strings of `EntityRef` are one string per occurrence).
    fn field(self, tag: u32) -> Option<Kind> {
        use Kind::*;
        Some(match (self, tag) {
            (Msg::ResourceSpans, 1) => Message(Msg::Resource),
            (Msg::ResourceSpans, 2) => Message(Msg::ScopeSpans),
            (Msg::ResourceSpans, 3) => Str,
            (Msg::Resource, 1) => Message(Msg::KeyValue),
            (Msg::Resource, 2) => Varint,
            (Msg::Resource, 3) => Message(Msg::EntityRef),
            (Msg::EntityRef, 1..=4) => Str,
            (Msg::ScopeSpans, 1) => Message(Msg::Scope),
            (Msg::ScopeSpans, 2) => Message(Msg::Span),
            (Msg::ScopeSpans, 3) => Str,
            (Msg::Scope, 1 | 2) => Str,
            (Msg::Scope, 3) => Message(Msg::KeyValue),
            (Msg::Scope, 4) => Varint,
            (Msg::Span, 1 | 2 | 4) => Bytes,
            (Msg::Span, 3 | 5) => Str,
            (Msg::Span, 6 | 10 | 12 | 14) => Varint,
            (Msg::Span, 7 | 8) => Fixed64,
            (Msg::Span, 9) => Message(Msg::KeyValue),
            (Msg::Span, 11) => Message(Msg::Event),
            (Msg::Span, 13) => Message(Msg::Link),
            (Msg::Span, 15) => Message(Msg::Status),
            (Msg::Span, 16) => Fixed32,
            (Msg::Event, 1) => Fixed64,
            (Msg::Event, 2) => Str,
            (Msg::Event, 3) => Message(Msg::KeyValue),
            (Msg::Event, 4) => Varint,
            (Msg::Link, 1 | 2) => Bytes,
            (Msg::Link, 3) => Str,
            (Msg::Link, 4) => Message(Msg::KeyValue),
            (Msg::Link, 5) => Varint,
            (Msg::Link, 6) => Fixed32,
            (Msg::Status, 2) => Str,
            (Msg::Status, 3) => Varint,
            (Msg::KeyValue, 1) => Str,
            (Msg::KeyValue, 2) => Message(Msg::AnyValue),
            (Msg::KeyValue, 3) => Varint,
            (Msg::AnyValue, 1) => Str,
            (Msg::AnyValue, 2 | 3 | 8) => Varint,
            (Msg::AnyValue, 4) => Fixed64,
            (Msg::AnyValue, 5) => Message(Msg::ArrayValue),
            (Msg::AnyValue, 6) => Message(Msg::KeyValueList),
            (Msg::AnyValue, 7) => Bytes,
            (Msg::ArrayValue, 1) => Message(Msg::AnyValue),
            (Msg::KeyValueList, 1) => Message(Msg::KeyValue),
            _ => return None,
        })
    }
}

/// An attribute value as far as [`otlp::value_as_id`] cares. Like prost's oneof merge, the last
/// variant seen wins, across repeated `value` fields of one `KeyValue` too.
#[derive(Clone, Copy)]
enum IdValue<'a> {
    None,
    /// Checked UTF-8, converted only when used.
    Str(&'a [u8]),
    Int(i64),
    Bytes(&'a [u8]),
}

impl IdValue<'_> {
    /// The id string, formatted into `scratch` when it is not already one.
    fn as_id<'s>(&'s self, scratch: &'s mut String) -> Option<&'s str> {
        match *self {
            IdValue::None => None,
            IdValue::Str(s) => utf8(s).ok(),
            IdValue::Int(i) => {
                scratch.clear();
                let _ = write!(scratch, "{i}");
                Some(scratch)
            }
            IdValue::Bytes(b) => {
                scratch.clear();
                scratch.reserve(b.len() * 2);
                for byte in b {
                    let _ = write!(scratch, "{byte:02x}");
                }
                Some(scratch)
            }
        }
    }
}

/// Read a `KeyValue`: its key (last one wins; checked UTF-8) and its value as an id.
fn key_value<'a>(mut r: Reader<'a>, ctx: u32) -> Result<(&'a [u8], IdValue<'a>)> {
    let mut key: &[u8] = b"";
    let mut value = IdValue::None;
    while let Some((tag, wt)) = r.key()? {
        match tag {
            1 => key = r.text(tag, wt)?,
            2 => any_value(r.message(tag, wt, ctx)?, ctx - 1, &mut value)?,
            _ => r.check(Msg::KeyValue, tag, wt, ctx)?,
        }
    }
    Ok((key, value))
}

/// Merge an `AnyValue` into `value`.
fn any_value<'a>(mut r: Reader<'a>, ctx: u32, value: &mut IdValue<'a>) -> Result<()> {
    while let Some((tag, wt)) = r.key()? {
        *value = match tag {
            1 => IdValue::Str(r.text(tag, wt)?),
            3 => IdValue::Int(r.int(tag, wt)? as i64),
            7 => IdValue::Bytes(r.bytes(tag, wt)?),
            2 | 4 | 5 | 6 | 8 => {
                r.check(Msg::AnyValue, tag, wt, ctx)?;
                IdValue::None
            }
            _ => {
                r.skip(tag, wt, ctx)?;
                continue;
            }
        };
    }
    Ok(())
}

/// State of one walk over a request.
struct Walk<'e> {
    ex: &'e Extractor,
    received_ns: u64,
    tally: Tally,
    out: Vec<Observation>,
    /// Reused for integer and bytes values, so formatting one allocates nothing.
    scratch: String,
}

impl Walk<'_> {
    /// A `ResourceSpans`, in two passes: the resource may come after the spans on the wire,
    /// and every span's observation needs it.
    fn resource_spans(&mut self, r: Reader<'_>, ctx: u32) -> Result<()> {
        let mut builder = ResourceBuilder::default();
        let mut offered = 0;
        let mut first = r;
        while let Some((tag, wt)) = first.key()? {
            match tag {
                1 => self.resource(
                    first.message(tag, wt, ctx)?,
                    ctx - 1,
                    &mut builder,
                    &mut offered,
                )?,
                // Only framed here; read in the second pass.
                2 => {
                    first.message(tag, wt, ctx)?;
                }
                _ => first.check(Msg::ResourceSpans, tag, wt, ctx)?,
            }
        }
        let resource = builder.finish(&mut self.tally);
        let mut second = r;
        while let Some((tag, wt)) = second.key()? {
            if tag == 2 {
                self.scope_spans(second.message(tag, wt, ctx)?, ctx - 1, &resource)?;
            } else {
                // Checked in the first pass; only stepped over here.
                second.skip(tag, wt, ctx)?;
            }
        }
        Ok(())
    }

    fn resource(
        &mut self,
        mut r: Reader<'_>,
        ctx: u32,
        builder: &mut ResourceBuilder,
        offered: &mut usize,
    ) -> Result<()> {
        while let Some((tag, wt)) = r.key()? {
            if tag == 1 {
                let (key, value) = key_value(r.message(tag, wt, ctx)?, ctx - 1)?;
                if *offered < self.ex.max_attributes {
                    *offered += 1;
                    builder.offer(self.ex, utf8(key)?, value.as_id(&mut self.scratch));
                }
            } else {
                r.check(Msg::Resource, tag, wt, ctx)?;
            }
        }
        Ok(())
    }

    fn scope_spans(&mut self, mut r: Reader<'_>, ctx: u32, resource: &Arc<Resource>) -> Result<()> {
        while let Some((tag, wt)) = r.key()? {
            if tag == 2 {
                self.span(r.message(tag, wt, ctx)?, ctx - 1, resource)?;
            } else {
                r.check(Msg::ScopeSpans, tag, wt, ctx)?;
            }
        }
        Ok(())
    }

    fn span(&mut self, mut r: Reader<'_>, ctx: u32, resource: &Arc<Resource>) -> Result<()> {
        let ex = self.ex;
        let mut facts = SpanFacts {
            trace_id: &[],
            span_id: &[],
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
        };
        let mut scan = AttributeScan::default();
        let mut attributes = 0;
        while let Some((tag, wt)) = r.key()? {
            match tag {
                1 => facts.trace_id = r.bytes(tag, wt)?,
                2 => facts.span_id = r.bytes(tag, wt)?,
                7 => facts.start_time_unix_nano = r.fixed64(tag, wt)?,
                8 => facts.end_time_unix_nano = r.fixed64(tag, wt)?,
                9 => {
                    let (key, value) = key_value(r.message(tag, wt, ctx)?, ctx - 1)?;
                    if attributes < ex.max_attributes {
                        attributes += 1;
                        if ex.reads(key) {
                            scan.offer(ex, utf8(key)?, value.as_id(&mut self.scratch));
                        }
                    }
                }
                _ => r.check(Msg::Span, tag, wt, ctx)?,
            }
        }
        let obs = otlp::span_observation(
            scan,
            &facts,
            resource,
            ex,
            self.received_ns,
            &mut self.tally,
        );
        self.out.extend(obs);
        Ok(())
    }
}

#[cfg(test)]
#[path = "otlp_fast_tests.rs"]
mod tests;
