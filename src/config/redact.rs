//! URLs as the gateway may print or log them: without the credentials operators put in them
//! (`redis://:PASSWORD@host`, `redis://host/?password=…`, `https://TOKEN@host`).

use url::Url;

/// Query parameters whose value is replaced: any name containing one of these.
const SECRET_PARAMETER_PARTS: [&str; 7] = [
    "pass",
    "pwd",
    "token",
    "secret",
    "key",
    "auth",
    "credential",
];
const HIDDEN: &str = "***";

/// `url` with its password, a lone user name (which may be a token) and every secret-looking
/// query value replaced by `***`. Text that is not a URL at all is not shown, as it may still
/// hold a password somewhere.
pub fn redact_url(url: &str) -> String {
    if let Some(shown) = super::cluster_url::redact_cluster_url(url) {
        return shown;
    }
    let Ok(mut parsed) = Url::parse(url) else {
        return "(not shown: not a readable URL)".to_owned();
    };
    if parsed.password().is_some() {
        // The user name beside a password is an ACL user, not a secret.
        let _ = parsed.set_password(Some(HIDDEN));
    } else if !parsed.username().is_empty() {
        let _ = parsed.set_username(HIDDEN);
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let lower = name.to_ascii_lowercase();
                let value = if SECRET_PARAMETER_PARTS.iter().any(|p| lower.contains(p)) {
                    HIDDEN.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_the_user_info_are_not_shown() {
        assert_eq!(
            redact_url("redis://:hunter2@db:6379"),
            "redis://:***@db:6379"
        );
        assert_eq!(
            redact_url("rediss://gateway:hunter2@db:6380/0"),
            "rediss://gateway:***@db:6380/0"
        );
        assert_eq!(
            redact_url("redis-sentinel://:hunter2@sentinel:26379/mymaster"),
            "redis-sentinel://:***@sentinel:26379/mymaster"
        );
        assert_eq!(
            redact_url("https://tok3n@kiva.example/x"),
            "https://***@kiva.example/x"
        );
    }

    #[test]
    fn secret_query_parameters_are_not_shown_and_others_are() {
        assert_eq!(
            redact_url("redis://host/?pass=hunter2&db=2"),
            "redis://host/?pass=***&db=2"
        );
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&password=hunter2"),
            "redis+unix:///run/redis.sock?db=1&password=***"
        );
        assert_eq!(
            redact_url("https://auth.example/oauth/token?access_token=t0k&x=1"),
            "https://auth.example/oauth/token?access_token=***&x=1"
        );
    }

    #[test]
    fn urls_without_credentials_and_non_urls() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("embedded:data"), "embedded:data");
        assert!(!redact_url("://:hunter2@x").contains("hunter2"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn an_unsupported_store_scheme_is_refused_without_showing_its_password() {
        let toml = r#"
            [store]
            url = "redis-sentinel://:PASSWORD@sentinel:26379/mymaster"
            [kiva]
            token_url = "https://auth.example/oauth/token"
            audience = "https://partner-api.example"
            api_base_url = "https://partnerapi.example"
        "#;
        let mut message = String::new();
        // In a jail: no GATEWAY_ variable of another test leaks in.
        figment::Jail::expect_with(|_| {
            message = crate::config::Settings::from_toml_str(toml)
                .unwrap_err()
                .to_string();
            Ok(())
        });
        assert!(
            message.contains("redis-sentinel://:***@sentinel"),
            "{message}"
        );
        assert!(!message.contains("PASSWORD"), "{message}");
    }
}
