use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Most integer digits an amount may have: far beyond any loan, well inside `Decimal`'s range.
const MAX_INTEGER_DIGITS: usize = 15;
const MAX_DECIMAL_PLACES: u32 = 3;

/// A repayment amount in the loan's local currency: non-negative, at most three decimal
/// places, kept with exactly the digits the MIS sent (`25.00` stays `25.00`), never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(Decimal);

impl Amount {
    /// Parses the textual form of a JSON number or string. Accepts plain decimals
    /// (`25`, `25.5`, `25.000`) and, for JSON numbers, exponent forms (`2.5e1`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "{text:?} is not a valid amount: use a non-negative decimal with at most \
                 {MAX_DECIMAL_PLACES} decimal places, e.g. \"25.00\""
            )
        };
        // "-0" and "-0.00" are zero, and JSON Schema's `minimum: 0` lets them through.
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let plain = unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let decimal = if plain {
            let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
            if int.is_empty() || (unsigned.contains('.') && frac.is_empty()) {
                return Err(invalid());
            }
            if int.len() > MAX_INTEGER_DIGITS {
                return Err(format!(
                    "{text:?} is too large: at most {MAX_INTEGER_DIGITS} digits before the decimal point"
                ));
            }
            Decimal::from_str(text).map_err(|_| invalid())?
        } else if text.contains(['e', 'E']) {
            Decimal::from_scientific(text).map_err(|_| invalid())?
        } else {
            return Err(invalid());
        };
        if decimal.is_sign_negative() && !decimal.is_zero() {
            return Err(format!(
                "{text:?} is negative: amounts must be zero or more"
            ));
        }
        if decimal.scale() > MAX_DECIMAL_PLACES {
            // Trailing zeros beyond the third place carry no value; anything else would be lost.
            let trimmed = decimal.normalize();
            if trimmed.scale() > MAX_DECIMAL_PLACES {
                return Err(format!(
                    "{text:?} has more than {MAX_DECIMAL_PLACES} decimal places"
                ));
            }
        }
        if decimal.trunc().abs().to_string().len() > MAX_INTEGER_DIGITS {
            return Err(format!(
                "{text:?} is too large: at most {MAX_INTEGER_DIGITS} digits before the decimal point"
            ));
        }
        Ok(Self(decimal.abs()))
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

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
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
    fn exponent_forms_of_json_numbers_are_read_exactly() {
        assert_eq!(Amount::parse("2.5e1").unwrap().to_string(), "25");
        assert_eq!(Amount::parse("1E3").unwrap().to_string(), "1000");
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
        ] {
            assert!(Amount::parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn negative_zero_is_zero() {
        assert_eq!(Amount::parse("-0.00").unwrap().to_string(), "0.00");
        assert!(Amount::parse("-0.01").is_err());
    }

    #[test]
    fn trailing_zeros_beyond_three_places_are_harmless() {
        assert_eq!(
            Amount::parse("1.5000").unwrap().as_decimal(),
            Decimal::new(15, 1)
        );
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
    fn sums_are_exact() {
        let a = Amount::parse("0.1").unwrap();
        let b = Amount::parse("0.2").unwrap();
        assert_eq!(a.checked_add(b).unwrap().to_string(), "0.3");
    }
}
