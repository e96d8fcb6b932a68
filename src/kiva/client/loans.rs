//! The loans list: `GET /v3/partner/{id}/loans`, one bounded page at a time.

use reqwest::Method;
use serde_json::{Map, Value};

use super::transport::{as_u64, excerpt, text_of};
use super::{KivaClient, MAX_LOANS_PAGE, MAX_LOANS_PAGE_BYTES, REASON_EXCERPT, is_token_refusal};
use crate::domain::PartnerId;
use crate::metrics::KivaEndpoint;

/// One page of `GET /v3/partner/{id}/loans`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoansPage {
    pub total_records: u64,
    pub loans: Vec<KivaLoan>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KivaLoan {
    pub internal_loan_id: String,
    pub internal_client_id: Option<String>,
    pub kiva_id: Option<u64>,
    pub status: String,
    /// The exact digits Kiva sent.
    pub loan_local_price: Option<String>,
    pub loan_currency: Option<String>,
    pub delinquent: Option<bool>,
}

impl KivaClient {
    /// `GET {api_base_url}/v3/partner/{id}/loans?status=..&offset=..&limit=..`, one `status`
    /// pair per entry of `statuses` (none: every status); `limit` is kept between 1 and
    /// [`MAX_LOANS_PAGE`]. Read-only. Kiva documents `status` as one value, so callers that
    /// need several statuses exactly should ask for one at a time.
    pub async fn loans(
        &self,
        partner: &PartnerId,
        statuses: &[&str],
        offset: u32,
        limit: u32,
    ) -> Result<LoansPage, String> {
        let auth = self.partner(partner)?;
        let mut url = self.partner_url(partner, "loans")?;
        {
            let mut query = url.query_pairs_mut();
            for status in statuses {
                query.append_pair("status", status);
            }
            query.append_pair("offset", &offset.to_string());
        }
        let limit = limit.clamp(1, MAX_LOANS_PAGE);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());

        let token = self.token(partner, auth, None).await?;
        let mut answer = self
            .exchange(
                (partner, KivaEndpoint::Loans),
                Method::GET,
                &url,
                &token,
                None,
            )
            .await
            .map_err(|f| format!("loans list: {}", f.into_reason()))?;
        if is_token_refusal(answer.status) {
            let token = self.token(partner, auth, Some(token.generation)).await?;
            answer = self
                .exchange(
                    (partner, KivaEndpoint::Loans),
                    Method::GET,
                    &url,
                    &token,
                    None,
                )
                .await
                .map_err(|f| format!("loans list: {}", f.into_reason()))?;
        }
        if !answer.status.is_success() {
            return Err(format!(
                "loans list: Kiva answered {}: {}",
                answer.status,
                excerpt(&answer.body, REASON_EXCERPT)
            ));
        }
        if answer.over_limit {
            return Err(format!(
                "loans list: the page is larger than {} MiB (asked for at most {limit} loans); \
                 not read further",
                MAX_LOANS_PAGE_BYTES / (1024 * 1024)
            ));
        }
        parse_loans_page(&answer.body, limit).map_err(|e| format!("loans list: {e}"))
    }
}

/// One page, refused when it holds more than the `limit` loans asked for: a list that ignores
/// `limit` has no bound a client can rely on.
fn parse_loans_page(body: &[u8], limit: u32) -> Result<LoansPage, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    // `total_records` from the integration that runs against Kiva, `totalRecords` from Kiva's
    // own typed client.
    let total_records = object
        .get("total_records")
        .or_else(|| object.get("totalRecords"))
        .and_then(as_u64)
        .ok_or("no total_records")?;
    let items: &[Value] = match object.get("data") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => &[],
        Some(_) => return Err("data is not a list".into()),
    };
    if items.len() > limit as usize {
        return Err(format!(
            "Kiva sent {} loans for a page of at most {limit}",
            items.len()
        ));
    }
    let loans = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let loan = item
                .as_object()
                .ok_or_else(|| format!("data[{i}] is not an object"))?;
            kiva_loan(loan).map_err(|e| format!("data[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(LoansPage {
        total_records,
        loans,
    })
}

fn kiva_loan(loan: &Map<String, Value>) -> Result<KivaLoan, String> {
    let field = |key: &str| loan.get(key).and_then(text_of);
    Ok(KivaLoan {
        internal_loan_id: field("internal_loan_id").ok_or("no internal_loan_id")?,
        internal_client_id: field("internal_client_id"),
        kiva_id: loan.get("kiva_id").and_then(as_u64),
        status: field("status").ok_or("no status")?,
        loan_local_price: field("loan_local_price"),
        loan_currency: field("loan_currency"),
        delinquent: loan.get("delinquent").and_then(Value::as_bool),
    })
}
