//! Names an unknown settings key as the operator wrote it, with the closest known key.

use super::{ConfigError, ENV_PREFIX};

/// Figment names an unknown key by its profile (`default.delivery.max_atempts`), which the
/// operator never wrote: such keys are named as written, with the close match if there is one.
pub(super) fn load_error(error: figment::Error) -> ConfigError {
    if !error.clone().into_iter().any(|e| unknown_key(&e).is_some()) {
        return ConfigError::Load(Box::new(error));
    }
    ConfigError::Invalid(
        error
            .into_iter()
            .map(|e| unknown_key(&e).unwrap_or_else(|| e.to_string()))
            .collect(),
    )
}

fn unknown_key(error: &figment::Error) -> Option<String> {
    let figment::error::Kind::UnknownField(field, expected) = &error.kind else {
        return None;
    };
    let mut path = error.path.clone();
    if path.last() != Some(field) {
        path.push(field.clone());
    }
    let from_env = error
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let key = if from_env {
        format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
    } else {
        path.join(".")
    };
    // Environment variables arrive upper-cased; the comparison is on the lower-case name.
    let written = field.to_ascii_lowercase();
    let closest = expected
        .iter()
        .map(|known| (strsim::jaro_winkler(&written, known), known))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let source = error
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .map(|s| format!(" (in {s})"))
        .unwrap_or_default();
    Some(match closest {
        Some((_, known)) => format!("{key}: unknown key{source}; did you mean `{known}`?"),
        None => format!(
            "{key}: unknown key{source}; known keys here: {}",
            expected
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}
