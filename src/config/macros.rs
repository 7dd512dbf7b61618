//! The `settings!` macro: from one row per setting (name, type, flag/file
//! type, conversion, default, unit, range, doc) it writes the clap `Flags`,
//! the TOML `FileConfig`, the `Config` struct and its `Default`, the merge
//! (flag > file > default), the range checks, the rendered `key = value` lines
//! and the rows of the README's settings table.
//!
//! Owns that expansion only. Must never hold a setting itself: the table is
//! `table.rs`; checks between settings are `validate.rs`.

/// One row:
/// ```text
/// /// doc (becomes the flag's help, the field's doc and the README's meaning)
/// name: FieldType, flag FlagType, via conversion,
///     default EXPR [=> "shown in the README"], unit "s", range Range::..[, arg(clap attrs)];
/// ```
/// `conversion` is a `fn(FlagType) -> Result<FieldType, String>`
/// (`value::{same, some, network}`); an error names the setting.
macro_rules! settings {
    ($(
        $(#[doc = $doc:tt])+
        $name:ident : $field:ty, flag $input:ty, via $conv:path,
        default $default:expr $(=> $shown:literal)?,
        unit $unit:literal, range $range:expr
        $(, arg($($arg:tt)*))?;
    )*) => {
        /// Command-line flags: `--config`, `--ready-file`, and one per setting
        /// of the table. Every flag is optional so the TOML file can set it.
        #[derive(clap::Parser, Debug, Default)]
        #[command(name = "pulsegate", version, about = "MQTT push gateway for mobile carriers")]
        pub struct Flags {
            /// TOML configuration file (flags win over it).
            #[arg(long)]
            pub config: Option<std::path::PathBuf>,
            /// Once listening, write the bound addresses here as JSON (`pid`,
            /// `backend`, `shards`, `capacity`, `mqtt`, `http`), atomically (write, rename).
            #[arg(long)]
            pub ready_file: Option<std::path::PathBuf>,
            $(
                $(#[doc = $doc])+
                #[arg(long $(, $($arg)*)?)]
                pub $name: Option<$input>,
            )*
        }

        /// The TOML file: the same names as the flags, with underscores; a key
        /// that is not a setting is refused.
        #[derive(serde::Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        pub(super) struct FileConfig {
            $( $name: Option<$input>, )*
            #[serde(default)]
            sps: Vec<super::SpConfig>,
            #[serde(default)]
            profiles: std::collections::BTreeMap<String, super::profile::Profile>,
            #[serde(default)]
            mechanisms: Vec<super::mechanism::MechanismConfig>,
            #[serde(default)]
            device_auth: Option<super::DeviceAuthSection>,
        }

        /// The effective configuration.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            $(
                $(#[doc = $doc])+
                pub $name: $field,
            )*
            /// SPs and their API keys; empty = the API is open (a warning at start-up).
            pub sps: Vec<super::SpConfig>,
            /// Delivery profiles by name (`[profiles.NAME]`).
            pub profiles: std::collections::BTreeMap<String, super::profile::Profile>,
            /// External mechanisms (webhooks); `persistent` is built in.
            pub mechanisms: Vec<super::mechanism::MechanismConfig>,
        }

        impl Default for Config {
            /// The embedded defaults.
            fn default() -> Self {
                Config {
                    $( $name: $default, )*
                    sps: Vec::new(),
                    profiles: Default::default(),
                    mechanisms: Vec::new(),
                }
            }
        }

        /// Flag over file over default, each converted to its setting's type.
        pub(super) fn merge(flags: &Flags, file: FileConfig) -> Result<Config, ConfigError> {
            let d = Config::default();
            Ok(Config {
                $(
                    $name: match flags.$name.clone().or(file.$name) {
                        None => d.$name,
                        Some(v) => $conv(v).map_err(|why| ConfigError::Invalid {
                            setting: stringify!($name).into(),
                            why,
                        })?,
                    },
                )*
                sps: file.sps,
                profiles: file.profiles,
                mechanisms: file.mechanisms,
            })
        }

        /// Every setting against its own range (checks between settings: `validate.rs`).
        pub(super) fn check_ranges(c: &Config) -> Result<(), ConfigError> {
            $(
                if let Some(value) = SettingValue::number(&c.$name) {
                    let range: Range = $range;
                    if !range.contains(value) {
                        return Err(ConfigError::OutOfRange {
                            setting: stringify!($name),
                            value,
                            range,
                        });
                    }
                }
            )*
            Ok(())
        }

        /// One `key = value` line per setting, in table order; an unset one
        /// is a comment (TOML has no null).
        pub(super) fn render_settings(c: &Config, out: &mut String) {
            $(
                match SettingValue::to_toml(&c.$name) {
                    Some(v) => out.push_str(&format!("{} = {v}\n", stringify!($name))),
                    None => out.push_str(&format!("# {} is unset\n", stringify!($name))),
                }
            )*
        }

        /// The table's rows, for the README.
        pub fn settings() -> Vec<SettingInfo> {
            let d = Config::default();
            vec![$(
                SettingInfo {
                    name: stringify!($name),
                    type_doc: <$field as SettingValue>::type_doc(),
                    default_toml: SettingValue::to_toml(&d.$name),
                    default_note: None $(.or(Some($shown)))?,
                    range: $range,
                    unit: $unit,
                    doc: concat!($($doc),+),
                },
            )*]
        }
    };
}

pub(super) use settings;
