//! The pages' words, in English and Spanish. Every text a page shows comes from
//! `messages/en.toml` or `messages/es.toml` (compiled in); a unit test keeps their keys equal.
//! The language is the reader's choice (`?lang=` link, kept in a cookie), else the browser's
//! `Accept-Language`, else English.

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::HttpRequest;
use actix_web::http::header;

pub const LANG_COOKIE: &str = "rg_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Es,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Es];

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Es => "es",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        match code.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Lang::En),
            "es" => Some(Lang::Es),
            _ => None,
        }
    }

    /// The cookie, then `Accept-Language` (with its weights), then English.
    pub fn of(req: &HttpRequest) -> Lang {
        if let Some(lang) = super::session::cookie(req, LANG_COOKIE).and_then(|c| Lang::parse(&c)) {
            return lang;
        }
        let accept = req
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // By quality, the first language we speak, whatever its region (`es-MX` is Spanish).
        accept_language::parse(accept)
            .iter()
            .find_map(|tag| Lang::parse(tag.split(['-', '_']).next().unwrap_or_default()))
            .unwrap_or(Lang::En)
    }

    /// The message `key`; a missing key shows as itself (the key test makes that a test failure).
    pub fn t(self, key: &'static str) -> &'static str {
        messages(self).get(key).map(String::as_str).unwrap_or(key)
    }

    /// The message `key` with each `{name}` replaced by its value.
    pub fn f(self, key: &'static str, values: &[(&str, &dyn std::fmt::Display)]) -> String {
        let mut text = self.t(key).to_owned();
        for (name, value) in values {
            text = text.replace(&format!("{{{name}}}"), &value.to_string());
        }
        text
    }
}

static EN: LazyLock<HashMap<String, String>> =
    LazyLock::new(|| parse(include_str!("messages/en.toml")));
static ES: LazyLock<HashMap<String, String>> =
    LazyLock::new(|| parse(include_str!("messages/es.toml")));

pub fn messages(lang: Lang) -> &'static HashMap<String, String> {
    match lang {
        Lang::En => &EN,
        Lang::Es => &ES,
    }
}

/// Flat `key = "text"` files; dotted keys are kept as written (`state.held`).
fn parse(text: &str) -> HashMap<String, String> {
    let table: toml::Table = toml::from_str(text).expect("message files are valid TOML");
    let mut out = HashMap::new();
    flatten("", &table, &mut out);
    out
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut HashMap<String, String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::String(text) => {
                out.insert(name, text.clone());
            }
            toml::Value::Table(inner) => flatten(&name, inner, out),
            other => panic!("message {name} is not text: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn english_and_spanish_have_exactly_the_same_keys() {
        let en: BTreeSet<_> = messages(Lang::En).keys().collect();
        let es: BTreeSet<_> = messages(Lang::Es).keys().collect();
        let only_en: Vec<_> = en.difference(&es).collect();
        let only_es: Vec<_> = es.difference(&en).collect();
        assert!(
            only_en.is_empty() && only_es.is_empty(),
            "only in en: {only_en:?}; only in es: {only_es:?}"
        );
        assert!(en.len() > 50, "{} keys", en.len());
    }

    #[test]
    fn placeholders_are_the_same_in_both_languages() {
        let names = |text: &str| -> BTreeSet<String> {
            text.split('{')
                .skip(1)
                .filter_map(|rest| rest.split_once('}').map(|(n, _)| n.to_owned()))
                .collect()
        };
        for (key, en) in messages(Lang::En) {
            let es = &messages(Lang::Es)[key];
            assert_eq!(names(en), names(es), "{key}");
        }
    }

    #[test]
    fn every_key_the_code_uses_exists() {
        // The code names its keys as string literals passed to `t(`/`f(`; a typo would show
        // the key on the page, so look for each one in the sources.
        let sources = [
            include_str!("mod.rs"),
            include_str!("layout.rs"),
            include_str!("session.rs"),
            include_str!("pages/months.rs"),
            include_str!("pages/reports.rs"),
            include_str!("pages/attention.rs"),
            include_str!("pages/sign_in.rs"),
            include_str!("pages/upload.rs"),
        ];
        let en = messages(Lang::En);
        for source in sources {
            for call in [".t(\"", ".f(\""] {
                for piece in source.split(call).skip(1) {
                    let key = piece.split('"').next().unwrap();
                    assert!(en.contains_key(key), "message {key:?} is missing");
                }
            }
        }
    }

    #[test]
    fn the_browser_language_decides_unless_the_reader_chose() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::ACCEPT_LANGUAGE, "es-MX,es;q=0.9,en;q=0.5"))
            .to_http_request();
        assert_eq!(Lang::of(&req), Lang::Es);
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::ACCEPT_LANGUAGE, "es-MX"))
            .insert_header((header::COOKIE, "rg_lang=en"))
            .to_http_request();
        assert_eq!(Lang::of(&req), Lang::En);
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::ACCEPT_LANGUAGE, "fr"))
            .to_http_request();
        assert_eq!(Lang::of(&req), Lang::En);
    }
}
