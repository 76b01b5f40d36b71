//! Identifiers, parsed once at the edge of the system.
//!
//! Parse, don't validate: an `PlacementId` or `CampaignId` that exists is valid, so
//! nothing downstream re-checks it. The charset is deliberately narrow (`[A-Za-z0-9_-]`):
//! ids appear in Redis keys, hash fields (where `.` and `,` are separators), URLs and
//! Parquet columns, and none of them needs escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub reason: String,
}

fn check(kind: &'static str, s: &str, max_len: usize, extra: &[u8]) -> Result<(), IdError> {
    let fail = |reason: String| Err(IdError { kind, reason });
    if s.is_empty() {
        return fail("must not be empty".into());
    }
    if s.len() > max_len {
        return fail(format!("must be at most {max_len} characters"));
    }
    if let Some(c) = s.bytes().find(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-' || extra.contains(b))) {
        return fail(format!("may only contain letters, digits, '_' and '-' (found {:?})", c as char));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $max, $extra)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// In the API's schema as what [`check`] accepts, so a client (or a property
        /// tester) learns the rule from the document.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema($max, $extra)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

#[cfg(feature = "openapi")]
fn id_schema(max_len: usize, extra: &[u8]) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::{ObjectBuilder, Type};
    let pattern = format!("^[A-Za-z0-9_{}-]{{1,{max_len}}}$", String::from_utf8_lossy(extra));
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max_len))
        .into()
}

id_type!(
    /// An ad placement, e.g. `home_feed`.
    PlacementId, "placement id", 64, b""
);
id_type!(
    /// A campaign within a placement.
    CampaignId, "campaign id", 64, b""
);
id_type!(
    /// A request's identity. Sampling hashes it, so every event of one request is
    /// sampled or none is. Apps may supply their own (e.g. a UUID); otherwise the edge
    /// makes a random 128-bit one.
    RequestId, "request id", 128, b".:"
);

impl RequestId {
    /// A request id from 128 random bits supplied by the caller (the core owns no RNG).
    /// Written digit by digit: every `/v1/ad` without an id makes one, and `format!`'s
    /// machinery costs more than the 32 digits.
    pub fn from_random(bits: u128) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(32);
        for i in (0..32).rev() {
            s.push(HEX[((bits >> (4 * i)) & 15) as usize] as char);
        }
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        for ok in ["home_feed", "A", "camp-2024_x", &"a".repeat(64)] {
            assert_eq!(PlacementId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_ids_with_a_reason() {
        let cases = [
            ("", "must not be empty"),
            ("has space", "found ' '"),
            ("a.b", "found '.'"),
            ("a,b", "found ','"),
            ("ünï", "may only contain"),
        ];
        for (input, reason) in cases {
            let err = CampaignId::parse(input).unwrap_err();
            assert!(err.to_string().contains(reason), "{input:?}: {err}");
            assert!(err.to_string().starts_with("campaign id"), "{err}");
        }
        assert!(PlacementId::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn request_ids_allow_uuid_like_forms() {
        assert!(RequestId::parse("3f2a-11ee:abc.1").is_ok());
        assert!(RequestId::parse("a/b").is_err());
        assert_eq!(RequestId::from_random(255).as_str(), "000000000000000000000000000000ff");
        let bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(RequestId::from_random(bits).as_str(), format!("{bits:032x}"));
    }

    #[test]
    fn serde_goes_through_parse() {
        let id: Result<CampaignId, _> = serde_json::from_str("\"bad id\"");
        assert!(id.is_err());
        let id: CampaignId = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"good\"");
    }
}
