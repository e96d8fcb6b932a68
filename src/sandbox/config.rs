use std::fmt;

/// What the sandbox knows before it starts: partners and their credentials, and their loans.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub partners: Vec<SandboxPartner>,
    /// The audience a token request must name.
    pub audience: String,
    /// `expires_in` of issued tokens (Kiva: 43199).
    pub token_ttl_secs: u64,
    pub loans: Vec<SandboxLoan>,
    /// Loan ids whose first batch, per partner, the sandbox answers 500 without processing
    /// it: Kiva's answer says nothing certain, so the gateway holds the batch for an operator
    /// (the demo's `L-HOLD`). A resend of it is then processed as usual.
    pub unknown_outcome_once: Vec<String>,
}

/// The demo's loan that makes the first batch it is in `held` (see `unknown_outcome_once`).
pub const DEMO_HOLD_LOAN: &str = "L-HOLD";

#[derive(Clone)]
pub struct SandboxPartner {
    pub partner_id: String,
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for SandboxPartner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxPartner")
            .field("partner_id", &self.partner_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// A loan as Kiva's loans list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLoan {
    pub partner_id: String,
    pub internal_loan_id: String,
    pub internal_client_id: String,
    pub kiva_id: u64,
    /// `payingBack`, `defaulted`, `ended`, `fundRaising`, ...
    pub status: String,
    /// Decimal text, e.g. `50000.00`; sent as a JSON string, as Kiva does.
    pub loan_local_price: String,
    pub loan_currency: String,
    pub delinquent: bool,
}

/// Loans each demo partner has beyond its first six, so the loans list pages for real (more
/// than Kiva's 300 per page) with every status the gateway reads.
pub const DEMO_EXTRA_LOANS: u64 = 500;

impl SandboxConfig {
    /// Partner 101 (`demo-two-column` / `demo-secret-101`, loans `L-1001`.. in KES) and
    /// partner 102 (`demo-three-column` / `demo-secret-102`, loans `L-2001`.. in UGX). Each
    /// starts with four `payingBack` loans (the fourth delinquent), one `defaulted` (`..05`)
    /// and one `ended` (`..06`), then has [`DEMO_EXTRA_LOANS`] more (`..07` on, clients to
    /// match): of each 20, 14 `payingBack` (every seventh delinquent), 2 `defaulted`, 3 `ended`
    /// and 1 `refunded`.
    /// Partner 102 also has the README's example loans (`L-1042970` of `C-184729`, `L-1043223`
    /// of `C-481395`), and each partner a `payingBack` loan `L-HOLD` (client `C-HOLD`) whose
    /// first batch is answered 500, to see a held batch.
    pub fn demo() -> Self {
        let partner = |partner_id: &str, client_id: &str, client_secret: &str| SandboxPartner {
            partner_id: partner_id.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
        };
        let loans_of = |partner_id: &str, first: u64, kiva_first: u64, currency: &str| {
            let statuses = [
                "payingBack",
                "payingBack",
                "payingBack",
                "payingBack",
                "defaulted",
                "ended",
            ];
            let extra = (0..DEMO_EXTRA_LOANS).map(|i| match i % 20 {
                0..=13 => "payingBack",
                14 | 15 => "defaulted",
                16..=18 => "ended",
                _ => "refunded",
            });
            statuses
                .into_iter()
                .chain(extra)
                .zip(0u64..)
                .map(|(status, i)| SandboxLoan {
                    partner_id: partner_id.to_owned(),
                    internal_loan_id: format!("L-{}", first + i),
                    internal_client_id: format!("C-{}", first + i),
                    kiva_id: kiva_first + i,
                    status: status.to_owned(),
                    loan_local_price: format!("{}.00", 25_000 * (i % 12 + 1)),
                    loan_currency: currency.to_owned(),
                    delinquent: i == 3 || (i >= 6 && status == "payingBack" && i % 7 == 0),
                })
                .collect::<Vec<_>>()
        };
        let mut loans = loans_of("101", 1001, 2_400_101, "KES");
        loans.extend(loans_of("102", 2001, 2_401_001, "UGX"));
        let paying_back =
            |partner_id: &str, loan: &str, client: &str, kiva_id, currency: &str| SandboxLoan {
                partner_id: partner_id.to_owned(),
                internal_loan_id: loan.to_owned(),
                internal_client_id: client.to_owned(),
                kiva_id,
                status: "payingBack".to_owned(),
                loan_local_price: "50000.00".to_owned(),
                loan_currency: currency.to_owned(),
                delinquent: false,
            };
        loans.extend([
            paying_back("102", "L-1042970", "C-184729", 2_409_001, "UGX"),
            paying_back("102", "L-1043223", "C-481395", 2_409_002, "UGX"),
            paying_back("101", DEMO_HOLD_LOAN, "C-HOLD", 2_409_003, "KES"),
            paying_back("102", DEMO_HOLD_LOAN, "C-HOLD", 2_409_004, "UGX"),
        ]);
        SandboxConfig {
            partners: vec![
                partner("101", "demo-two-column", "demo-secret-101"),
                partner("102", "demo-three-column", "demo-secret-102"),
            ],
            audience: "https://partner-api.sandbox.local".to_owned(),
            token_ttl_secs: 43199,
            loans,
            unknown_outcome_once: vec![DEMO_HOLD_LOAN.to_owned()],
        }
    }
}
