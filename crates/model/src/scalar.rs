//! A JSON value of any type, kept borrowed, so that field checks can name the
//! field and the reason instead of surfacing serde's generic type errors.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::reject::Rejection;

/// Longest id, user, org or course, in characters (contract section 2).
pub(crate) const MAX_TEXT_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An object or an array; its content is skipped, not kept.
    Composite,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(std::marker::PhantomData))
    }
}

struct ScalarVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        // `Option<Scalar>` turns `null` into `None` before this is reached.
        Err(E::custom("unexpected null"))
    }
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "{s:?}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Composite => f.write_str("an object or array"),
        }
    }
}

impl Scalar<'_> {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Int(_) => "an integer",
            Scalar::Float(f) if f.fract() == 0.0 => "an integer out of range",
            Scalar::Float(_) => "a fractional number",
            Scalar::Bool(_) => "a boolean",
            Scalar::Composite => "an object or array",
        }
    }

    /// An integer, also when written with a fraction or exponent that makes
    /// it whole (`1.5e12`), as JSON Schema's `integer` type counts it.
    pub(crate) fn as_integer(&self) -> Option<i64> {
        match *self {
            Scalar::Int(i) => Some(i),
            Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Some(f as i64),
            _ => None,
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::Int(i) => Some(i as f64),
            Scalar::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// A required string of 1..=128 characters.
pub(crate) fn text<'a>(field: &str, v: Option<Scalar<'a>>) -> Result<Cow<'a, str>, Rejection> {
    match v {
        None => Err(Rejection::missing(field)),
        Some(Scalar::Str(s)) => check_text(field, s),
        Some(other) => Err(Rejection::invalid(field, format_args!("must be a string, not {}", other.kind()))),
    }
}

/// Checks the length rule on a string that is already known to be present.
pub(crate) fn check_text<'a>(field: &str, s: Cow<'a, str>) -> Result<Cow<'a, str>, Rejection> {
    // A string of at most 128 bytes has at most 128 characters: count only longer ones.
    if !s.is_empty() && s.len() <= MAX_TEXT_CHARS {
        return Ok(s);
    }
    let chars = s.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS {
        return Err(Rejection::invalid(
            field,
            format_args!("must have 1 to {MAX_TEXT_CHARS} characters, it has {chars}"),
        ));
    }
    Ok(s)
}

/// A required number.
pub(crate) fn number(field: &str, v: Option<Scalar<'_>>) -> Result<f64, Rejection> {
    let v = v.ok_or_else(|| Rejection::missing(field))?;
    v.as_f64().ok_or_else(|| Rejection::invalid(field, format_args!("must be a number, not {}", v.kind())))
}

/// Parses a message that must be one JSON object.
pub(crate) fn json_object<'a, T: Deserialize<'a>>(value: &'a [u8]) -> Result<T, Rejection> {
    match value.iter().find(|b| !b.is_ascii_whitespace()) {
        // Checked as UTF-8 once, so that serde need not check each string
        // (a sixth of a Sunbird envelope's parse); when that fails, serde
        // reads the bytes to say where.
        Some(b'{') => match std::str::from_utf8(value) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(value),
        }
        .map_err(Rejection::from_json),
        _ => Err(Rejection::new(crate::Reason::InvalidJson, "the message is not a JSON object")),
    }
}

/// A required version field that must be the integer 1.
pub(crate) fn version_1(field: &str, v: Option<Scalar<'_>>) -> Result<(), Rejection> {
    let v = v.ok_or_else(|| Rejection::missing(field))?;
    match v.as_integer() {
        Some(1) => Ok(()),
        Some(n) => Err(Rejection::new(
            crate::Reason::UnsupportedVersion,
            format!("`{field}` is {n}, this Pulse reads version 1"),
        )),
        None => Err(Rejection::invalid(field, format_args!("must be the integer 1, not {}", v.kind()))),
    }
}
