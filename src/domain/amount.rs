use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Most integer digits an amount may have: far beyond any loan, well inside `Decimal`'s range.
const MAX_INTEGER_DIGITS: usize = 15;
const MAX_DECIMAL_PLACES: usize = 3;

/// A repayment amount in the loan's local currency: non-negative, at most three decimal
/// places, kept with exactly the digits the MIS sent (`25.00` stays `25.00`), never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(Decimal);

impl Amount {
    /// Parses the literal text of a JSON number or the content of a JSON string, with one
    /// rule for both: `^[0-9]{1,15}(\.[0-9]{1,3})?$`. The text is checked before `Decimal`
    /// sees it, so nothing is ever rounded (`Decimal` rounds past 28 decimal places), and
    /// `1.5000` is refused as a number exactly as `"1.5000"` is as a string: trailing zeros
    /// would be forwarded to Kiva as digits the rule does not allow. Exponent forms (`2.5e1`)
    /// are refused with the plain digits to write instead. Leading zeros of a string
    /// (`"007.50"`) are the one thing not forwarded: a JSON number cannot carry them.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Only refusals show the text: a valid amount (nearly all) formats nothing.
        let shown = || quoted(text);
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if digits(int) && ((frac.is_empty() && !text.contains('.')) || digits(frac)) {
            if int.len() > MAX_INTEGER_DIGITS {
                return Err(format!(
                    "{} is too large: at most {MAX_INTEGER_DIGITS} digits before the decimal point",
                    shown()
                ));
            }
            if frac.len() > MAX_DECIMAL_PLACES {
                let trimmed = frac.trim_end_matches('0');
                let hint = if trimmed.len() <= MAX_DECIMAL_PLACES {
                    format!(": write {int}.{}", &frac[..MAX_DECIMAL_PLACES])
                } else {
                    String::new()
                };
                return Err(format!(
                    "{} has {} decimal places; at most {MAX_DECIMAL_PLACES} are allowed{hint}",
                    shown(),
                    frac.len()
                ));
            }
            // At most 18 digits: always exact in a `Decimal`.
            return Decimal::from_str(text)
                .map(Self)
                .map_err(|_| invalid(&shown()));
        }
        if let Some(rest) = text.strip_prefix('-')
            && rest.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!(
                "{} is negative: amounts must be zero or more",
                shown()
            ));
        }
        if text.contains(['e', 'E']) && text.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "{} is written with an exponent: write the amount as plain digits{}",
                shown(),
                plain_form(text)
                    .map(|plain| format!(", e.g. {plain}"))
                    .unwrap_or_default()
            ));
        }
        Err(invalid(&shown()))
    }

    pub fn zero() -> Self {
        Self(Decimal::ZERO)
    }

    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    /// Sum of amounts; scale is that of the most precise term, so `25.00 + 1.5 = 26.50`.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// The amount as a JSON number carrying exactly these digits (needs serde_json's
    /// `arbitrary_precision`, which this crate enables), for Kiva's wire format.
    pub fn to_json_number(&self) -> serde_json::Number {
        serde_json::Number::from_str(&self.0.to_string())
            .expect("a Decimal always prints as a valid JSON number")
    }
}

fn invalid(shown: &str) -> String {
    format!(
        "{shown} is not a valid amount: use a non-negative decimal with at most \
         {MAX_DECIMAL_PLACES} decimal places, e.g. \"25.00\""
    )
}

/// The text as echoed in a message: quoted, and cut short, as an MIS may send megabytes.
fn quoted(text: &str) -> String {
    const MAX_SHOWN_CHARS: usize = 40;
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// `2.5e1` as `25`, when that plain form itself follows the rule.
fn plain_form(text: &str) -> Option<String> {
    if text.len() > 40 {
        return None;
    }
    let decimal = Decimal::from_scientific(text).ok()?.normalize();
    let plain = decimal.to_string();
    Amount::parse(&plain).is_ok().then_some(plain)
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // rust_decimal's own string form (its `serde-str` feature): the digits `Display`
        // gives, written at once instead of through `collect_str`'s escaping adapter.
        serde::Serialize::serialize(&self.0, s)
    }
}

/// Reads an amount the gateway stored itself. Not `Amount::parse`: that checks what an MIS
/// may send, and a report's total may rightly have more integer digits than any one amount.
impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let decimal = Decimal::from_str(&text).map_err(serde::de::Error::custom)?;
        if decimal.is_sign_negative() && !decimal.is_zero() {
            return Err(serde::de::Error::custom(format!("negative amount {text}")));
        }
        Ok(Self(decimal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_exact_digits_given() {
        for text in [
            "25.00",
            "1234567.891",
            "0",
            "0.5",
            "100",
            "999999999999999.999",
        ] {
            assert_eq!(Amount::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn exponent_forms_are_refused_with_the_plain_digits_to_write() {
        let message = Amount::parse("2.5e1").unwrap_err();
        assert!(
            message.contains("exponent") && message.ends_with("e.g. 25"),
            "{message}"
        );
        assert!(Amount::parse("1E3").unwrap_err().ends_with("e.g. 1000"));
        let tiny = Amount::parse("1e-5").unwrap_err();
        assert!(
            tiny.contains("exponent") && !tiny.contains("e.g."),
            "{tiny}"
        );
        assert!(Amount::parse("1e999999999").is_err());
    }

    #[test]
    fn nothing_is_rounded_past_28_decimal_places() {
        let text = format!("0.{}", "1".repeat(30));
        let message = Amount::parse(&text).unwrap_err();
        assert!(message.contains("30 decimal places"), "{message}");
        let zeros = format!("1.{}", "0".repeat(30));
        assert!(Amount::parse(&zeros).is_err());
    }

    #[test]
    fn rejects_negative_too_precise_and_non_numeric_amounts() {
        for text in [
            "-1",
            "1.2345",
            "abc",
            "NaN",
            "nan",
            "Infinity",
            "",
            ".5",
            "5.",
            "1,5",
            " 5",
            "+5",
            "0x10",
            "1e-5",
            "1234567890123456",
            "1.5000",
            "-0",
            "0.",
            "1..2",
            "1.2.3",
        ] {
            assert!(Amount::parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn negative_amounts_even_zero_are_refused_as_negative() {
        for text in ["-0.00", "-0.01", "-5"] {
            let message = Amount::parse(text).unwrap_err();
            assert!(message.contains("negative"), "{text}: {message}");
        }
    }

    #[test]
    fn trailing_zeros_beyond_three_places_are_refused_with_what_to_write() {
        assert_eq!(
            Amount::parse("1.5000").unwrap_err(),
            "\"1.5000\" has 4 decimal places; at most 3 are allowed: write 1.500"
        );
        assert!(!Amount::parse("1.2345").unwrap_err().contains("write"));
    }

    #[test]
    fn long_text_is_cut_short_in_messages() {
        let message = Amount::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn json_number_form_keeps_digits() {
        let n = Amount::parse("1234567.891").unwrap().to_json_number();
        assert_eq!(serde_json::to_string(&n).unwrap(), "1234567.891");
    }

    #[test]
    fn a_stored_total_beyond_the_per_amount_limit_reads_back() {
        let big = Amount::parse("999999999999999.999").unwrap();
        let total = big.checked_add(big).unwrap();
        let json = serde_json::to_string(&total).unwrap();
        assert_eq!(json, "\"1999999999999999.998\"");
        assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), total);
    }

    #[test]
    fn an_amount_is_stored_as_the_text_it_shows() {
        for text in ["0", "0.00", "0.10", "25.00", "1234567.891", "100", "0.001"] {
            let amount = Amount::parse(text).unwrap();
            assert_eq!(
                serde_json::to_string(&amount).unwrap(),
                format!("\"{amount}\""),
                "{text}"
            );
        }
    }

    #[test]
    fn sums_are_exact() {
        let a = Amount::parse("0.1").unwrap();
        let b = Amount::parse("0.2").unwrap();
        assert_eq!(a.checked_add(b).unwrap().to_string(), "0.3");
    }
}
