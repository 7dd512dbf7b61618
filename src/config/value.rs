//! What the settings table needs of each setting's type: its TOML literal, the
//! number a range is checked against, and how the README names it; and the
//! ranges themselves.
//!
//! Owns `SettingValue` and `Range`. Must never know a setting by name: the
//! table (`table.rs`) pairs names with types and ranges.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{BackendChoice, DeviceAuthKind, JwtAlgorithm, ReliefRule};

/// A setting's value as a range sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Int(n) => write!(f, "{n}"),
            Number::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// The values a setting accepts (beyond what its type already forces).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Range {
    /// Whatever parses.
    Any,
    /// `min ..= max` (`max == u64::MAX`: no upper bound).
    Int { min: u64, max: u64 },
    /// A power of two in `min ..= max`.
    PowerOfTwo { min: u64, max: u64 },
    /// A finite number above `min` (or equal to it when `inclusive`), at most `max`.
    Float { min: f64, inclusive: bool, max: f64 },
}

impl Range {
    /// Whether `n` lies in the range.
    pub fn contains(&self, n: Number) -> bool {
        match (*self, n) {
            (Range::Any, _) => true,
            (Range::Int { min, max }, Number::Int(v)) => v >= min && v <= max,
            (Range::PowerOfTwo { min, max }, Number::Int(v)) => v >= min && v <= max && v.is_power_of_two(),
            (Range::Float { min, inclusive, max }, Number::Float(v)) => {
                v.is_finite() && (v > min || (inclusive && v == min)) && v <= max
            }
            // A table row pairing an integer type with a float range (or the
            // reverse) refuses every value: `defaults_are_valid` and the
            // round-trip tests (every option set) catch it.
            _ => false,
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Range::Any => write!(f, "any"),
            Range::Int { min, max: u64::MAX } => write!(f, "≥ {min}"),
            Range::Int { min, max } => write!(f, "{min} ..= {max}"),
            Range::PowerOfTwo { min, max } => write!(f, "power of two, {min} ..= {max}"),
            Range::Float { min, inclusive, max } => {
                let op = if inclusive { "≥" } else { ">" };
                if max.is_infinite() {
                    write!(f, "{op} {min:?}, finite")
                } else {
                    write!(f, "{op} {min:?}, ≤ {max:?}")
                }
            }
        }
    }
}

/// What the table needs of a setting's type.
pub trait SettingValue {
    /// How the README's table names the type.
    fn type_doc() -> String;
    /// The TOML literal; `None` when the setting is unset.
    fn to_toml(&self) -> Option<String>;
    /// The number a `Range` checks, if the type is numeric.
    fn number(&self) -> Option<Number> {
        None
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

macro_rules! integer_setting {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn type_doc() -> String {
                "integer".into()
            }
            fn to_toml(&self) -> Option<String> {
                Some(self.to_string())
            }
            fn number(&self) -> Option<Number> {
                Some(Number::Int(*self as u64))
            }
        }
    )*};
}
integer_setting!(u16, u32, u64, usize);

impl SettingValue for f64 {
    fn type_doc() -> String {
        "number".into()
    }
    fn to_toml(&self) -> Option<String> {
        // `{:?}` always writes a fraction or an exponent (`1.0`, `1e-7`): a TOML float.
        Some(format!("{self:?}"))
    }
    fn number(&self) -> Option<Number> {
        Some(Number::Float(*self))
    }
}

impl SettingValue for bool {
    fn type_doc() -> String {
        "bool".into()
    }
    fn to_toml(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl SettingValue for String {
    fn type_doc() -> String {
        "string".into()
    }
    fn to_toml(&self) -> Option<String> {
        Some(toml_string(self))
    }
}

impl SettingValue for PathBuf {
    fn type_doc() -> String {
        "path".into()
    }
    fn to_toml(&self) -> Option<String> {
        Some(toml_string(&self.to_string_lossy()))
    }
}

impl SettingValue for SocketAddr {
    fn type_doc() -> String {
        "address".into()
    }
    fn to_toml(&self) -> Option<String> {
        Some(toml_string(&self.to_string()))
    }
}

impl SettingValue for Vec<u32> {
    fn type_doc() -> String {
        "integers (flag: comma-separated)".into()
    }
    fn to_toml(&self) -> Option<String> {
        let items: Vec<String> = self.iter().map(|n| n.to_string()).collect();
        Some(format!("[{}]", items.join(", ")))
    }
}

impl SettingValue for Vec<crate::outbound::url_policy::AllowRule> {
    fn type_doc() -> String {
        "CIDRs or address[:port]s (flag: comma-separated)".into()
    }
    fn to_toml(&self) -> Option<String> {
        let items: Vec<String> = self.iter().map(|r| toml_string(&r.to_string())).collect();
        Some(format!("[{}]", items.join(", ")))
    }
}

/// A home network, (MCC, MNC): written `"MCC-MNC"` (`"460-01"`).
impl SettingValue for (u16, u16) {
    fn type_doc() -> String {
        "\"MCC-MNC\"".into()
    }
    fn to_toml(&self) -> Option<String> {
        Some(toml_string(&format!("{:03}-{:02}", self.0, self.1)))
    }
}

impl<T: SettingValue> SettingValue for Option<T> {
    fn type_doc() -> String {
        T::type_doc()
    }
    fn to_toml(&self) -> Option<String> {
        self.as_ref().and_then(T::to_toml)
    }
    fn number(&self) -> Option<Number> {
        self.as_ref().and_then(T::number)
    }
}

/// Choices, named as both clap and serde spell them.
fn choice_names<T: clap::ValueEnum>() -> Vec<String> {
    T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .collect()
}

fn choice_name<T: clap::ValueEnum>(v: &T) -> Option<String> {
    v.to_possible_value().map(|p| toml_string(p.get_name()))
}

macro_rules! choice_setting {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn type_doc() -> String {
                choice_names::<$t>().join(" | ")
            }
            fn to_toml(&self) -> Option<String> {
                choice_name(self)
            }
        }
    )*};
}
choice_setting!(BackendChoice, ReliefRule, DeviceAuthKind, JwtAlgorithm);

/// `via` conversions of the table: the flag/file value as the setting's own.
pub(super) fn same<T>(v: T) -> Result<T, String> {
    Ok(v)
}

/// An optional setting given a value.
pub(super) fn some<T>(v: T) -> Result<Option<T>, String> {
    Ok(Some(v))
}

/// `"MCC-MNC"` -> (MCC, MNC).
pub(super) fn network(s: String) -> Result<Option<(u16, u16)>, String> {
    crate::protocol::mqtt::NetworkReport::parse_network(&s)
        .map(Some)
        .ok_or_else(|| format!("{s:?} is not MCC-MNC (e.g. 460-01)"))
}

/// `outbound_allow` entries, each parsed (at most `ALLOW_RULES_MAX`).
pub(super) fn allow_rules(list: Vec<String>) -> Result<Vec<crate::outbound::url_policy::AllowRule>, String> {
    use crate::outbound::url_policy::ALLOW_RULES_MAX;
    if list.len() > ALLOW_RULES_MAX {
        return Err(format!("{} rules, at most {ALLOW_RULES_MAX}", list.len()));
    }
    list.iter().map(|s| s.trim().parse()).collect()
}
