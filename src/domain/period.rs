use std::fmt;

/// A reporting month, `YYYY-MM`. Kiva's API has no period field; the gateway keeps it so the
/// MIS and the coordinator can find a month's reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: u16,
    month: u8,
}

impl Period {
    pub fn parse(text: &str) -> Result<Self, String> {
        let err = || format!("{text:?} is not a period: use YYYY-MM, e.g. \"2026-10\"");
        let (y, m) = text.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let year: u16 = y.parse().map_err(|_| err())?;
        let month: u8 = m.parse().map_err(|_| err())?;
        if !(1..=12).contains(&month) || !(2000..=2099).contains(&year) {
            return Err(err());
        }
        Ok(Self { year, month })
    }

    /// The month of a calendar date; `None` outside the years a period may have.
    pub fn of(year: i32, month: u32) -> Option<Self> {
        Self::parse(&format!("{year:04}-{month:02}")).ok()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl serde::Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Period::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_month() {
        assert_eq!(Period::parse("2026-10").unwrap().to_string(), "2026-10");
    }

    #[test]
    fn rejects_anything_but_a_real_month() {
        for bad in [
            "2026-13", "2026-00", "2026-1", "26-10", "2026/10", "abcd-ef", "1999-12",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }
}
