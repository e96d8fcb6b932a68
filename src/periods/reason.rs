//! Why a month is not ready to finalize, as data: the API says it in English (`Display`), the
//! web pages in the reader's language.

/// Why a month is not ready to finalize. `Display` is the API's English sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoReport,
    NotDelivered {
        batches: usize,
        repayments: usize,
    },
    NeedsOperator {
        batches: usize,
    },
    /// Loans Kiva refused for a reason the MIS can fix (a wrong id, a wrong client): fixed,
    /// they go again in a correction, the only report that may repeat a loan of the period.
    RefusedByKiva {
        loans: usize,
    },
    /// Loans Kiva refused because it takes no more repayments for them (a status other than
    /// `payingBack` or `defaulted`, such as `ended`): nothing sent again would be counted.
    RefusedNotPayingBack {
        loans: usize,
    },
    NoSnapshot,
    StaleSnapshot {
        hours: u64,
    },
    NotReported {
        loans: usize,
    },
    /// Loans in more than one report of the period (a correction, or one sent twice): Kiva
    /// got each of them more than once. Blocks readiness until an admin acknowledges them (a
    /// later issue adds the acknowledgement; until then it blocks).
    Repeated {
        loans: usize,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoReport => write!(f, "no report was received for this period"),
            Reason::NotDelivered {
                batches,
                repayments,
            } => write!(
                f,
                "{batches} batch(es) not yet delivered to Kiva ({repayments} repayment(s) queued or being sent)"
            ),
            Reason::NeedsOperator { batches } => write!(
                f,
                "{batches} batch(es) held, failed or rejected: an operator must resend or mark them delivered"
            ),
            Reason::RefusedByKiva { loans } => write!(
                f,
                "{loans} loan(s) refused by Kiva (see `rejected_by_kiva` for what Kiva said): fix \
                 them in the MIS, then send them again in a report with \"correction\": true"
            ),
            Reason::RefusedNotPayingBack { loans } => write!(
                f,
                "{loans} loan(s) refused by Kiva because it takes no more repayments for them \
                 (their status is not payingBack or defaulted, e.g. ended): PA2 will not count \
                 them, and sending them again would be refused too; check in the MIS why they \
                 are reported and leave them out of later reports"
            ),
            Reason::NoSnapshot => write!(
                f,
                "Kiva's list of expected loans has not been read yet: refresh it"
            ),
            Reason::StaleSnapshot { hours } => write!(
                f,
                "Kiva's list of expected loans is {hours} h old: refresh it before finalizing"
            ),
            Reason::NotReported { loans } => {
                write!(f, "{loans} expected loan(s) not reported this period")
            }
            Reason::Repeated { loans } => write!(
                f,
                "{loans} loan(s) reported more than once this period (see `repeated`): check in PA2 that each was counted once"
            ),
        }
    }
}
