use std::fmt;

/// Longest identifier accepted from an MIS; PA2 shows them in a table column, not a document.
pub const MAX_ID_LEN: usize = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("must not be empty or only white space")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("a numeric identifier must be a whole number written with digits only, got {0}")]
    NotWholeNumber(String),
}

fn check_text(text: &str) -> Result<(), IdError> {
    // One pass (every identifier of every report comes here), the verdicts in this order.
    let (mut chars, mut blank, mut control) = (0, true, false);
    for c in text.chars() {
        chars += 1;
        blank &= c.is_whitespace();
        control |= c.is_control();
    }
    if blank {
        Err(IdError::Empty)
    } else if chars > MAX_ID_LEN {
        Err(IdError::TooLong)
    } else if control {
        Err(IdError::ControlCharacter)
    } else {
        Ok(())
    }
}

/// The MIS sends identifiers as strings or, from some systems, as JSON integers; both are
/// kept as text because Kiva takes them as strings. An integer is kept as its decimal digits;
/// an integral number written with a fraction or exponent (`16693.0`, `1.6693e4`, what some
/// PHP and Excel exports produce) is a whole number for JSON Schema too, and is kept as the
/// digits of that whole number.
fn text_of_json(value: &serde_json::Value) -> Option<Result<String, IdError>> {
    match value {
        serde_json::Value::String(s) => Some(check_text(s).map(|()| s.clone())),
        serde_json::Value::Number(n) => {
            let text = n.to_string();
            if text.bytes().all(|b| b.is_ascii_digit()) {
                return Some(check_text(&text).map(|()| text));
            }
            let whole = rust_decimal::Decimal::from_scientific(&text)
                .or_else(|_| text.parse::<rust_decimal::Decimal>())
                .ok()
                .filter(|d| d.fract().is_zero() && !d.is_sign_negative());
            Some(match whole {
                Some(d) => {
                    let digits = d.trunc().normalize().to_string();
                    check_text(&digits).map(|()| digits)
                }
                None => Err(IdError::NotWholeNumber(text)),
            })
        }
        _ => None,
    }
}

macro_rules! mis_identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        /// As its text, borrowed: serde's `into = "String"` cloned it for every write.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                check_text(text).map(|()| Self(text.to_owned()))
            }

            /// `None` when the value is neither a string nor a number.
            pub fn from_json(value: &serde_json::Value) -> Option<Result<Self, IdError>> {
                text_of_json(value).map(|r| r.map(Self))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                check_text(&text).map(|()| Self(text))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

mis_identifier!(
    /// The loan's identifier in the MIS (PA2's `internal_loan_id`).
    LoanId
);
mis_identifier!(
    /// The borrower's identifier in the MIS (PA2's `internal_client_id`).
    ClientId
);

/// Kiva's id of a field partner, as the token endpoint returns it (a string). It becomes part
/// of URL paths and of store key names, so it is restricted to a safe alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PartnerId(String);

impl serde::Serialize for PartnerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl PartnerId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "{text:?} is not a partner id: use 1 to 64 letters, digits, '-' or '_'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PartnerId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<PartnerId> for String {
    fn from(id: PartnerId) -> String {
        id.0
    }
}

impl fmt::Display for PartnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_are_kept_as_their_digits() {
        let id = LoanId::from_json(&json!(1042970)).unwrap().unwrap();
        assert_eq!(id.as_str(), "1042970");
    }

    #[test]
    fn integral_numbers_written_with_a_fraction_are_whole_numbers() {
        for (json, digits) in [
            ("16693.0", "16693"),
            ("1.6693e4", "16693"),
            ("1E3", "1000"),
            ("0.0", "0"),
        ] {
            let id = LoanId::from_json(&serde_json::from_str(json).unwrap())
                .unwrap()
                .unwrap();
            assert_eq!(id.as_str(), digits, "{json}");
        }
    }

    #[test]
    fn strings_are_kept_verbatim() {
        let id = ClientId::from_json(&json!("C-00184729")).unwrap().unwrap();
        assert_eq!(id.as_str(), "C-00184729");
    }

    #[test]
    fn empty_blank_and_fractional_ids_are_rejected() {
        assert_eq!(LoanId::parse(""), Err(IdError::Empty));
        assert_eq!(LoanId::parse("   "), Err(IdError::Empty));
        assert_eq!(LoanId::parse("a\nb"), Err(IdError::ControlCharacter));
        // White space that is also a control character is blank; length comes first.
        assert_eq!(LoanId::parse(" \n\t"), Err(IdError::Empty));
        assert_eq!(
            LoanId::parse(&format!("\u{1}{}", "é".repeat(MAX_ID_LEN))),
            Err(IdError::TooLong)
        );
        assert_eq!(LoanId::parse(&"é".repeat(MAX_ID_LEN)).map(|_| ()), Ok(()));
        assert_eq!(
            LoanId::parse(&"x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong)
        );
        assert!(matches!(
            LoanId::from_json(&serde_json::from_str("12.5").unwrap()),
            Some(Err(IdError::NotWholeNumber(_)))
        ));
        assert!(matches!(
            LoanId::from_json(&serde_json::from_str("-3").unwrap()),
            Some(Err(IdError::NotWholeNumber(_)))
        ));
        assert!(LoanId::from_json(&json!(true)).is_none());
    }

    #[test]
    fn partner_ids_are_restricted_to_a_key_safe_alphabet() {
        assert!(PartnerId::parse("123").is_ok());
        assert!(PartnerId::parse("mfi_ke-1").is_ok());
        for bad in ["", "a}b", "a b", "a:b", &"1".repeat(65)] {
            assert!(PartnerId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
