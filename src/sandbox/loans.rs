//! `GET /v3/partner/{partner_id}/loans?status=..&offset=..&limit=..&query=..`.

use hyper::StatusCode;
use hyper::http::request::Parts;
use serde_json::{Value, json};

use super::reply::{Answer, READ_LOANS, apply_fault, authorize, error_answer, json_answer};
use super::{LoansRequest, Shared, TotalRecordsField};

/// Kiva's largest page.
const MAX_LIMIT: usize = 300;
/// When the request names no limit. Kiva's default is undocumented.
const DEFAULT_LIMIT: usize = 20;

pub(super) async fn handle(shared: &Shared, partner_id: &str, parts: &Parts) -> Answer {
    let parsed = Query::parse(parts.uri.query().unwrap_or_default());
    let fault = {
        let mut state = shared.lock();
        state.loans_requests.push(LoansRequest {
            partner_id: partner_id.to_owned(),
            statuses: parsed
                .as_ref()
                .map(|q| q.statuses.clone())
                .unwrap_or_default(),
            offset: parsed.as_ref().map_or(0, |q| q.offset),
            limit: parsed.as_ref().map_or(0, |q| q.limit),
        });
        state.loans_faults.pop_front()
    };
    if let Some(answer) = apply_fault(shared, fault).await {
        return answer;
    }
    if let Err(refusal) = authorize(shared, &parts.headers, partner_id, READ_LOANS) {
        return Ok(*refusal);
    }
    let query = match parsed {
        Ok(query) => query,
        Err(message) => {
            return Ok(error_answer(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &message,
            ));
        }
    };
    let state = shared.lock();
    let matching: Vec<Value> = state
        .loans
        .iter()
        .filter(|loan| loan.partner_id == partner_id)
        .filter(|loan| query.statuses.is_empty() || query.statuses.contains(&loan.status))
        .filter(|loan| {
            query.search.as_deref().is_none_or(|search| {
                contains_ignoring_case(&loan.internal_loan_id, search)
                    || contains_ignoring_case(&loan.internal_client_id, search)
            })
        })
        .map(|loan| {
            json!({
                "internal_loan_id": loan.internal_loan_id,
                "internal_client_id": loan.internal_client_id,
                "kiva_id": loan.kiva_id,
                "status": loan.status,
                "loan_local_price": loan.loan_local_price,
                "loan_currency": loan.loan_currency,
                "delinquent": loan.delinquent,
            })
        })
        .collect();
    let field = match state.total_records_field {
        TotalRecordsField::Snake => "total_records",
        TotalRecordsField::Camel => "totalRecords",
    };
    let paging = state.loans_paging.clone();
    drop(state);
    let total_records = paging.total_records.unwrap_or(matching.len() as u64);
    let offset = if paging.ignore_offset {
        0
    } else {
        query.offset
    };
    let padding = "x".repeat(paging.padding_bytes);
    let data: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(query.limit + paging.beyond_limit)
        .map(|mut loan| {
            if !padding.is_empty() {
                loan["description"] = Value::String(padding.clone());
            }
            loan
        })
        .collect();
    Ok(json_answer(
        StatusCode::OK,
        &json!({field: total_records, "data": data}),
    ))
}

struct Query {
    statuses: Vec<String>,
    offset: usize,
    limit: usize,
    search: Option<String>,
}

impl Query {
    fn parse(text: &str) -> Result<Query, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text)
            .map_err(|error| format!("the query string is malformed: {error}"))?;
        let mut query = Query {
            statuses: Vec::new(),
            offset: 0,
            limit: DEFAULT_LIMIT,
            search: None,
        };
        let number = |name: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| format!("{name} must be a non-negative integer, not {value:?}"))
        };
        for (name, value) in &pairs {
            match name.as_str() {
                "status" => query.statuses.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|status| !status.is_empty())
                        .map(str::to_owned),
                ),
                "offset" => query.offset = number(name, value)?,
                "limit" => query.limit = number(name, value)?,
                "query" if !value.is_empty() => query.search = Some(value.clone()),
                // Kiva takes more parameters (sort, ...); ignoring them keeps clients honest
                // only about the ones the gateway relies on.
                _ => {}
            }
        }
        if query.limit > MAX_LIMIT {
            return Err(format!("limit must be at most {MAX_LIMIT}"));
        }
        Ok(query)
    }
}

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}
