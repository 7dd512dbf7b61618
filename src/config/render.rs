//! The effective configuration as TOML (printed at start-up, loadable again
//! with `--config`), and the README's settings table.
//!
//! Owns both texts. Must never print an SP's API key unless asked to
//! (`Secrets::Shown`), and never drop a setting: both come from the table.

use super::value::Range;
use super::{Config, settings, table};

/// Whether the rendered configuration carries the SPs' API keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Each `[[sps]]` says `# api_key is not shown` instead (the start-up print).
    Hidden,
    /// Everything: the text loads back into the same `Config`.
    Shown,
}

impl Config {
    /// The effective configuration as TOML, API keys hidden: what start-up prints.
    pub fn render(&self) -> String {
        self.render_toml(Secrets::Hidden)
    }

    /// The effective configuration as TOML: every setting of the table (an
    /// unset one as a comment), then `[[sps]]`, `[profiles.NAME]` and
    /// `[[mechanisms]]`. With `Secrets::Shown`, loading it with `--config`
    /// gives this same `Config`.
    pub fn render_toml(&self, secrets: Secrets) -> String {
        let mut c = self.clone();
        // `all` is written as the count it means, so the text stays valid TOML.
        c.listen_shards = c.listen_shards.min(c.shards);
        let mut out = String::new();
        table::render_settings(&c, &mut out);
        match self.file_sections(secrets) {
            Ok(text) if text.is_empty() => {}
            Ok(text) => {
                out.push('\n');
                out.push_str(&text);
            }
            // Plain structs of strings and numbers always serialize; should one
            // not, the operator reads why instead of a silently shorter file.
            Err(e) => out.push_str(&format!("# [[sps]], [profiles], [[mechanisms]] not rendered: {e}\n")),
        }
        out
    }

    /// `[[sps]]`, `[profiles.NAME]` and `[[mechanisms]]` as TOML ("" if none).
    fn file_sections(&self, secrets: Secrets) -> Result<String, toml::ser::Error> {
        let mut sections = toml::Table::new();
        if !self.sps.is_empty() {
            let mut sps = Vec::new();
            for sp in &self.sps {
                let mut v = toml::Table::try_from(sp)?;
                if secrets == Secrets::Hidden {
                    v.remove("api_key");
                }
                sps.push(toml::Value::Table(v));
            }
            sections.insert("sps".into(), toml::Value::Array(sps));
        }
        if !self.profiles.is_empty() {
            sections.insert("profiles".into(), toml::Value::try_from(&self.profiles)?);
        }
        if !self.mechanisms.is_empty() {
            sections.insert("mechanisms".into(), toml::Value::try_from(&self.mechanisms)?);
        }
        if sections.is_empty() {
            return Ok(String::new());
        }
        let text = toml::to_string(&sections)?;
        Ok(match secrets {
            Secrets::Hidden => text.replace("[[sps]]\n", "[[sps]]\n# api_key is not shown\n"),
            Secrets::Shown => text,
        })
    }
}

/// The README's settings table (Markdown), one row per setting of the table.
pub fn settings_markdown() -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "—".to_string()
        } else {
            s.replace('|', "\\|")
        }
    };
    let mut out = String::from("| setting | type | default | range | unit | meaning |\n|---|---|---|---|---|---|\n");
    for s in settings() {
        let range = match s.range {
            Range::Any => String::new(),
            r => r.to_string(),
        };
        let default = match (s.default_note, &s.default_toml) {
            (Some(note), _) => cell(note),
            (None, Some(toml)) => format!("`{}`", toml.replace('|', "\\|")),
            (None, None) => "unset".into(),
        };
        out.push_str(&format!(
            "| `{}` (`--{}`) | {} | {} | {} | {} | {} |\n",
            s.name,
            s.name.replace('_', "-"),
            cell(&s.type_doc),
            default,
            cell(&range),
            cell(s.unit),
            cell(s.doc.trim()),
        ));
    }
    out
}
