//! The diff area's keys: `max_diff_size` (bytes, a size with a unit, or a
//! percentage of the store's filesystem), `max_sets`, `on_full` and
//! `durability`, parsed into what umbra-fs and umbra-store take.

use std::path::Path;

use serde::{Deserialize, Deserializer};
use umbra_fs::{OnFull, StorageLimits};
use umbra_store::Durability;

/// VSS keeps at most 512 shadow copies per volume; so does umbra per store.
pub const DEFAULT_MAX_SETS: usize = 512;

/// `max_diff_size` as written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiffSize {
    Bytes(u64),
    /// Percent of the filesystem the store lives on, resolved at start.
    Percent(f64),
}

impl DiffSize {
    /// Bytes, given the store's filesystem size.
    pub fn bytes(self, filesystem: u64) -> u64 {
        match self {
            DiffSize::Bytes(b) => b,
            DiffSize::Percent(p) => (filesystem as f64 * p / 100.0) as u64,
        }
    }
}

/// Parses `1073741824`, `"10G"`, `"512MiB"`, `"1.5T"` or `"20%"`.
pub fn parse_size(text: &str) -> Result<DiffSize, String> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        return match p.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(DiffSize::Percent(p)),
            _ => Err(format!(
                "max_diff_size {text:?}: a percentage must be above 0 and at most 100"
            )),
        };
    }
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("max_diff_size {text:?}: expected a size such as 10G, 512M or 20%"))?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        other => {
            return Err(format!(
                "max_diff_size {text:?}: unknown unit {other:?} (K, M, G, T or %)"
            ));
        }
    };
    let bytes = number * (1u64 << shift) as f64;
    if bytes < 1.0 || !bytes.is_finite() {
        return Err(format!("max_diff_size {text:?}: must be at least one byte"));
    }
    Ok(DiffSize::Bytes(bytes as u64))
}

pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DiffSize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a number of bytes or a size such as \"10G\" or \"20%\""
    )]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Int(0)) => Err(serde::de::Error::custom(
            "max_diff_size must be at least one byte",
        )),
        Some(Raw::Int(b)) => Ok(Some(DiffSize::Bytes(b))),
        Some(Raw::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RawOnFull {
    #[default]
    DeleteOldest,
    Protect,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RawDurability {
    #[default]
    Power,
    Process,
}

impl From<RawDurability> for Durability {
    fn from(d: RawDurability) -> Durability {
        match d {
            RawDurability::Power => Durability::Power,
            RawDurability::Process => Durability::Process,
        }
    }
}

/// The diff area's configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StorageConfig {
    pub max_size: Option<DiffSize>,
    pub max_sets: usize,
    pub on_full: RawOnFull,
    pub durability: RawDurability,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            max_size: None,
            max_sets: DEFAULT_MAX_SETS,
            on_full: RawOnFull::DeleteOldest,
            durability: RawDurability::Power,
        }
    }
}

impl StorageConfig {
    /// The limits in bytes, for a store kept under `store_dir`.
    pub fn limits(&self, store_dir: &Path) -> std::io::Result<StorageLimits> {
        let max_bytes = match self.max_size {
            None => None,
            Some(size) => Some(size.bytes(umbra_store::filesystem_bytes(store_dir)?)),
        };
        Ok(StorageLimits {
            max_bytes,
            max_sets: Some(self.max_sets),
            on_full: match self.on_full {
                RawOnFull::DeleteOldest => OnFull::DeleteOldest,
                RawOnFull::Protect => OnFull::Protect,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_percentages() {
        assert_eq!(parse_size("10G"), Ok(DiffSize::Bytes(10 << 30)));
        assert_eq!(parse_size("512MiB"), Ok(DiffSize::Bytes(512 << 20)));
        assert_eq!(parse_size("1.5T"), Ok(DiffSize::Bytes(3 << 39)));
        assert_eq!(parse_size("4096"), Ok(DiffSize::Bytes(4096)));
        assert_eq!(parse_size("20%"), Ok(DiffSize::Percent(20.0)));
        assert!(parse_size("0%").is_err());
        assert!(parse_size("150%").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(DiffSize::Percent(25.0).bytes(400), 100);
    }
}
