//! The one encoding of persisted values, shared by the RocksDB store and
//! the changelog (a changelog record is restored straight into the store):
//! a version byte, so the format can evolve, then bincode with variable-length
//! integers (lengths and small counts take one byte, event times six).

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::StoreError;

/// First byte of every persisted value. 2: contract v2 (profiles,
/// assessments, months and days in user state and totals), and
/// variable-length integers. 3: plans in user state and totals.
const VERSION: u8 = 3;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Encodes a value (plain data: serializing into a `Vec` cannot fail).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    options().serialize_into(&mut out, v).expect("plain data serializes into a Vec");
    out
}

/// Decodes a value; `what` names it in the error.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            options().deserialize(rest).map_err(|e| StoreError::new(format!("failed to decode {what}"), e))
        }
        other => Err(StoreError::new(
            format!("failed to decode {what}"),
            format!("value format {:?} is not {VERSION}; it was written by another Pulse version", other.map(|o| o.0)),
        )),
    }
}

/// Decodes the leading fields of a value as `T` (a struct of the value's
/// first fields, in order), skipping the rest unread.
pub fn decode_prefix<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => options()
            .allow_trailing_bytes()
            .deserialize(rest)
            .map_err(|e| StoreError::new(format!("failed to decode {what}"), e)),
        _ => decode(what, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_and_another_version_is_refused() {
        let bytes = encode(&(7i64, "x".to_owned()));
        assert_eq!(decode::<(i64, String)>("a pair", &bytes).unwrap(), (7, "x".to_owned()));
        let mut other = bytes.clone();
        other[0] = 1;
        let e = decode::<(i64, String)>("a pair", &other).unwrap_err().to_string();
        assert!(e.contains("a pair") && e.contains("another Pulse version"), "{e}");
        assert!(decode::<(i64, String)>("a pair", &[]).is_err());
        assert_eq!(decode_prefix::<(i64,)>("a pair's first", &bytes).unwrap(), (7,));
        assert!(decode_prefix::<(i64,)>("a pair's first", &other).unwrap_err().to_string().contains("another Pulse"));
    }
}
