//! A byte count written as a number or with a unit (`80GiB`, `512MiB`, `16GB`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl ByteSize {
    /// Parse `123`, `80GiB`, `1.5 GiB`, `16GB` (binary and decimal units).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, mult) = UNITS
            .iter()
            .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim(), *m)))
            .unwrap_or((t, 1));
        let v: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a size (expected e.g. 80GiB, 512MiB or a number of bytes)")
        })?;
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("`{s}` is not a size >= 0"));
        }
        Ok(ByteSize((v * mult as f64).round() as u64))
    }

    pub fn gib(self) -> f64 {
        self.0 as f64 / (1u64 << 30) as f64
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        if b >= 1 << 30 {
            write!(f, "{:.2}GiB", b as f64 / (1u64 << 30) as f64)
        } else if b >= 1 << 20 {
            write!(f, "{:.1}MiB", b as f64 / (1u64 << 20) as f64)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(feature = "k8s")]
impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A byte count: a number, or a number with a unit (`80GiB`, `512MiB`, `16GB`).",
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("80GiB").unwrap().0, 80 << 30);
        assert_eq!(ByteSize::parse("1.5 MiB").unwrap().0, 3 << 19);
        assert_eq!(ByteSize::parse("16GB").unwrap().0, 16_000_000_000);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("-1GiB").is_err());
    }
}
