//! The `version` field: part of each event type, so a payload of another version can never
//! deserialize into it.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// Serializes as the integer `N`; refuses any other number when deserializing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Version<const N: u8>;

impl<const N: u8> Version<N> {
    /// The version number.
    pub const VALUE: u8 = N;
}

impl<const N: u8> Serialize for Version<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(N)
    }
}

impl<'de, const N: u8> Deserialize<'de> for Version<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == u64::from(N) {
            Ok(Version)
        } else {
            Err(de::Error::custom(format!("version must be {N}, got {v}")))
        }
    }
}
