//! `POST /v3/partner/{partner_id}/repayments`.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::http::request::Parts;
use serde_json::{Map, Value, json};

use super::reply::{
    Answer, CREATE_REPAYMENT, DroppedOnPurpose, Reply, answer, apply_fault, authorize, cut_short,
    error_answer, has_media_type, json_answer,
};
use super::{Fault, ResponseShape, Shared, State, Upload};

/// Kiva asks for at most 200–300 loans per call; the sandbox refuses more than 300.
pub const MAX_REPAYMENTS_PER_CALL: usize = 300;

/// One repayment as sent: what problems are matched on.
struct Line {
    loan_id: String,
    client_id: Option<String>,
}

pub(super) async fn handle(
    shared: &Shared,
    partner_id: &str,
    parts: &Parts,
    body: Bytes,
) -> Answer {
    shared.repayment_requests.send_modify(|count| *count += 1);
    let fault = shared.lock().faults.pop_front();
    let after = match fault {
        Some(fault) if fault.after_handling() => Some(fault),
        fault => {
            if let Some(answer) = apply_fault(shared, fault).await {
                return answer;
            }
            None
        }
    };
    let checked = check(shared, partner_id, parts, &body);
    let latency = shared.lock().latency;
    if !shared.pause(latency).await {
        return Err(DroppedOnPurpose);
    }
    let (authorization, json, lines) = match checked {
        Ok(accepted) => accepted,
        Err(refusal) => return Ok(*refusal),
    };
    if let Some(loan_id) = unknown_outcome_once(shared, partner_id, &lines) {
        return Ok(error_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &format!("the sandbox fails the first batch with loan {loan_id} on purpose"),
        ));
    }
    let (mut problems, shape) = {
        let state = shared.lock();
        (problems(&state, partner_id, &lines), state.shape)
    };
    if let Some(Fault::ProblemsForOtherLoans(others)) = &after {
        problems.extend(others.iter().map(|loan_id| {
            loan_problem(
                loan_id,
                "this loan was not in the batch",
                "loan_not_found",
                "error",
            )
        }));
    }
    let mut upload_id = 0;
    shared.uploads.send_modify(|uploads| {
        upload_id = uploads.len() as u64 + 1;
        uploads.push(Upload {
            upload_id,
            partner_id: partner_id.to_owned(),
            // `check` has parsed it as JSON, so it is UTF-8.
            body: String::from_utf8_lossy(&body).into_owned(),
            json,
            authorization,
        });
    });
    let result = json!({
        "code": "ok",
        "message": "Repayments received",
        "upload_id": upload_id,
        "problems": problems,
    });
    let body = match shape {
        ResponseShape::Object => result,
        ResponseShape::Array => json!([result]),
    };
    Ok(match after {
        Some(Fault::HtmlAfterUpload(html)) => {
            answer(StatusCode::OK, "text/html; charset=utf-8", html.into())
        }
        Some(Fault::TruncatedAfterUpload { sent_bytes }) => {
            let full = Bytes::from(body.to_string());
            cut_short(StatusCode::OK, "application/json", full, sent_bytes)
        }
        _ => json_answer(StatusCode::OK, &body),
    })
}

/// The first batch of a partner with a loan of `unknown_outcome_once` is not processed.
fn unknown_outcome_once(shared: &Shared, partner_id: &str, lines: &[Line]) -> Option<String> {
    let mut state = shared.lock();
    let state = &mut *state;
    let loan_id = lines
        .iter()
        .map(|line| &line.loan_id)
        .find(|id| state.unknown_outcome_once.contains(id))?;
    state
        .answered_unknown
        .insert((partner_id.to_owned(), loan_id.clone()))
        .then(|| loan_id.clone())
}

type Accepted = (String, Value, Vec<Line>);

/// Authorization, then media type, then the body's shape, in the order Kiva's gateway would.
fn check(
    shared: &Shared,
    partner_id: &str,
    parts: &Parts,
    body: &[u8],
) -> Result<Accepted, Box<Reply>> {
    let authorization = authorize(shared, &parts.headers, partner_id, CREATE_REPAYMENT)?;
    if !has_media_type(&parts.headers, "application/json") {
        return Err(Box::new(error_answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the repayments as application/json",
        )));
    }
    let json: Value = serde_json::from_slice(body).map_err(|error| {
        bad_request(vec![problem(
            None,
            &format!("the body is not JSON: {error}"),
        )])
    })?;
    let lines = read_lines(&json).map_err(bad_request)?;
    Ok((authorization, json, lines))
}

/// The repayments in `{"repayments": [...]}`, or every way the body breaks the format.
fn read_lines(json: &Value) -> Result<Vec<Line>, Vec<Value>> {
    let Some(top) = json.as_object() else {
        return Err(vec![problem(None, "the body must be a JSON object")]);
    };
    let mut problems: Vec<Value> = top
        .keys()
        .filter(|key| *key != "repayments")
        .map(|key| problem(None, &format!("unknown field {key:?}")))
        .collect();
    let Some(entries) = top.get("repayments").and_then(Value::as_array) else {
        problems.push(problem(None, "repayments must be an array"));
        return Err(problems);
    };
    if entries.is_empty() || entries.len() > MAX_REPAYMENTS_PER_CALL {
        problems.push(problem(
            None,
            &format!(
                "repayments must hold 1 to {MAX_REPAYMENTS_PER_CALL} entries, not {}",
                entries.len()
            ),
        ));
    }
    let mut lines = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match read_line(entry) {
            Ok(line) => lines.push(line),
            Err((loan_id, details)) => problems.extend(
                details
                    .iter()
                    .map(|detail| problem(loan_id, &format!("repayments[{index}]: {detail}"))),
            ),
        }
    }
    if problems.is_empty() {
        Ok(lines)
    } else {
        Err(problems)
    }
}

/// One entry, or its loan id (when readable) with what is wrong with it.
fn read_line(entry: &Value) -> Result<Line, (Option<&str>, Vec<String>)> {
    let Some(fields) = entry.as_object() else {
        return Err((None, vec!["must be an object".to_owned()]));
    };
    let mut details = Vec::new();
    let loan_id = match fields.get("loan_id") {
        Some(Value::String(id)) if !id.is_empty() => Some(id.as_str()),
        Some(Value::String(_)) => {
            details.push("loan_id must not be empty".to_owned());
            None
        }
        Some(other) => {
            details.push(format!("loan_id must be a string, not {}", kind(other)));
            None
        }
        None => {
            details.push("loan_id is required".to_owned());
            None
        }
    };
    let client_id = match fields.get("client_id") {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(other) => {
            details.push(format!("client_id must be a string, not {}", kind(other)));
            None
        }
    };
    match fields.get("amount") {
        Some(Value::Number(amount)) if is_negative(amount) => {
            details.push(format!("amount must not be negative, got {amount}"));
        }
        Some(Value::Number(_)) => {}
        Some(other) => details.push(format!("amount must be a JSON number, not {}", kind(other))),
        None => details.push("amount is required".to_owned()),
    }
    details.extend(
        fields
            .keys()
            .filter(|key| !matches!(key.as_str(), "loan_id" | "client_id" | "amount"))
            .map(|key| format!("unknown field {key:?}")),
    );
    match loan_id {
        Some(loan_id) if details.is_empty() => Ok(Line {
            loan_id: loan_id.to_owned(),
            client_id,
        }),
        _ => Err((loan_id, details)),
    }
}

/// With arbitrary precision the number keeps its text, so "-0.00" is zero, not negative.
fn is_negative(amount: &serde_json::Number) -> bool {
    let text = amount.to_string();
    text.strip_prefix('-').is_some_and(|magnitude| {
        magnitude
            .split(['e', 'E'])
            .next()
            .is_some_and(|mantissa| mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b)))
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What PA2 would say about each loan of an accepted upload.
fn problems(state: &State, partner_id: &str, lines: &[Line]) -> Vec<Value> {
    let mut problems = Vec::new();
    for line in lines {
        let mut same_id = state
            .loans
            .iter()
            .filter(|loan| loan.partner_id == partner_id && loan.internal_loan_id == line.loan_id)
            .peekable();
        let known_id = same_id.peek().is_some();
        // Three-column partners may reuse a loan id across clients (group loans).
        let loan = match &line.client_id {
            Some(client_id) => same_id.find(|loan| &loan.internal_client_id == client_id),
            None => same_id.next(),
        };
        match loan {
            Some(loan) if loan.status != "payingBack" && loan.status != "defaulted" => {
                problems.push(loan_problem(
                    &line.loan_id,
                    &format!(
                        "Loan is not in payingBack or defaulted status (status: {})",
                        loan.status
                    ),
                    "loan_not_paying_back",
                    "error",
                ));
            }
            Some(_) => {}
            None if known_id => problems.push(loan_problem(
                &line.loan_id,
                &format!(
                    "Loan {} has no client {}",
                    line.loan_id,
                    line.client_id.as_deref().unwrap_or_default()
                ),
                "loan_not_found",
                "error",
            )),
            None => problems.push(loan_problem(
                &line.loan_id,
                &format!("Loan {} not found", line.loan_id),
                "loan_not_found",
                "error",
            )),
        }
        if let Some(details) = state
            .warnings
            .get(&(partner_id.to_owned(), line.loan_id.clone()))
        {
            problems.push(loan_problem(&line.loan_id, details, "warning", "warning"));
        }
    }
    problems
}

fn loan_problem(loan_id: &str, details: &str, code: &str, severity: &str) -> Value {
    json!({"loan_id": loan_id, "details": details, "code": code, "severity": severity})
}

/// A format problem; `loan_id` only when the entry had a readable one.
fn problem(loan_id: Option<&str>, details: &str) -> Value {
    let mut fields = Map::new();
    if let Some(loan_id) = loan_id {
        fields.insert("loan_id".to_owned(), loan_id.into());
    }
    fields.insert("details".to_owned(), details.into());
    fields.insert("code".to_owned(), "invalid_repayment".into());
    fields.insert("severity".to_owned(), "error".into());
    Value::Object(fields)
}

fn bad_request(problems: Vec<Value>) -> Box<Reply> {
    Box::new(json_answer(
        StatusCode::BAD_REQUEST,
        &json!({
            "code": "bad_request",
            "message": "The repayments are not in the expected format",
            "problems": problems,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> serde_json::Number {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn negative_zero_is_not_negative() {
        assert!(!is_negative(&number("-0.00")));
        assert!(!is_negative(&number("-0e5")));
        assert!(is_negative(&number("-0.01")));
        assert!(is_negative(&number("-1e-9")));
        assert!(!is_negative(&number("25.00")));
    }

    #[test]
    fn every_problem_of_a_body_is_reported() {
        let body: Value = serde_json::from_str(
            r#"{"repayments": [
                {"loan_id": "L-1", "amount": "25.00"},
                {"loan_id": "", "amount": 1, "extra": true},
                {"loan_id": "L-3", "client_id": 7, "amount": -2}
            ], "batch": 1}"#,
        )
        .unwrap();
        let problems = read_lines(&body).err().unwrap();
        let details: Vec<&str> = problems
            .iter()
            .map(|p| p["details"].as_str().unwrap())
            .collect();
        assert_eq!(
            details,
            [
                "unknown field \"batch\"",
                "repayments[0]: amount must be a JSON number, not a string",
                "repayments[1]: loan_id must not be empty",
                "repayments[1]: unknown field \"extra\"",
                "repayments[2]: client_id must be a string, not a number",
                "repayments[2]: amount must not be negative, got -2",
            ]
        );
        assert_eq!(problems[1]["loan_id"], "L-1");
        assert!(problems[2].get("loan_id").is_none());
    }

    #[test]
    fn the_entry_count_is_bounded() {
        let entry = json!({"loan_id": "L-1", "amount": 1});
        let empty = json!({"repayments": []});
        let too_many = json!({"repayments": vec![entry.clone(); MAX_REPAYMENTS_PER_CALL + 1]});
        let most = json!({"repayments": vec![entry; MAX_REPAYMENTS_PER_CALL]});
        assert!(read_lines(&empty).is_err());
        assert!(read_lines(&too_many).is_err());
        assert_eq!(
            read_lines(&most).ok().unwrap().len(),
            MAX_REPAYMENTS_PER_CALL
        );
    }
}
