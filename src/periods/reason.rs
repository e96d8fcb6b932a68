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
    RefusedByKiva {
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
                "{loans} loan(s) refused by Kiva: fix them in the MIS and report them again"
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
