//! The loans list: exact values, repeated statuses, errors that name the problem.

use super::*;

#[tokio::test]
async fn a_loans_page_is_read_with_exact_values() {
    let fake = FakeKiva::new().loans(|n, _| {
        if n == 1 {
            return reply(403, "");
        }
        reply(
            200,
            r#"{"total_records": 2, "data": [
                {"internal_loan_id": "L1", "internal_client_id": "C1", "kiva_id": 1042970,
                 "status": "payingBack", "loan_local_price": 1234.50,
                 "loan_currency": "KES", "delinquent": false, "extra": [1]},
                {"internal_loan_id": 16693, "internal_client_id": null, "kiva_id": "77",
                 "status": "defaulted", "loan_local_price": "99.10"}
            ]}"#,
        )
    });
    let running = fake.start();
    let client = client_for(&running);

    let page = client
        .loans(&partner(), &["payingBack"], 600, 1000)
        .await
        .unwrap();
    assert_eq!(page.total_records, 2);
    assert_eq!(
        page.loans,
        vec![
            KivaLoan {
                internal_loan_id: "L1".into(),
                internal_client_id: Some("C1".into()),
                kiva_id: Some(1042970),
                status: "payingBack".into(),
                loan_local_price: Some("1234.50".into()),
                loan_currency: Some("KES".into()),
                delinquent: Some(false),
            },
            KivaLoan {
                internal_loan_id: "16693".into(),
                internal_client_id: None,
                kiva_id: Some(77),
                status: "defaulted".into(),
                loan_local_price: Some("99.10".into()),
                loan_currency: None,
                delinquent: None,
            },
        ]
    );
    let requests = fake.api_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "one resend after the 403");
    assert_eq!(requests[1].path, "/partner-api/v3/partner/123/loans");
    assert_eq!(requests[1].query, "status=payingBack&offset=600&limit=300");
    assert_eq!(requests[1].authorization.as_deref(), Some("Bearer tok-2"));
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test]
async fn a_loans_page_counted_as_total_records_in_camel_case_is_read_and_statuses_repeat() {
    let fake = FakeKiva::new().loans(|_, _| {
        reply(
            200,
            r#"{"totalRecords": 301, "data": [{"internal_loan_id": "L1", "status": "ended"}]}"#,
        )
    });
    let running = fake.start();
    let client = client_for(&running);
    let page = client
        .loans(&partner(), &["payingBack", "defaulted"], 300, 300)
        .await
        .unwrap();
    assert_eq!(page.total_records, 301);
    assert_eq!(page.loans.len(), 1);
    let requests = fake.api_requests.lock().unwrap().clone();
    assert_eq!(
        requests[0].query,
        "status=payingBack&status=defaulted&offset=300&limit=300"
    );
}

#[tokio::test]
async fn loans_errors_name_the_problem() {
    let fake = FakeKiva::new().loans(|n, _| match n {
        1 => reply(500, "boom"),
        2 => reply(200, "not json"),
        _ => reply(200, r#"{"total_records":1,"data":[{"status":"ended"}]}"#),
    });
    let running = fake.start();
    let client = client_for(&running);
    let mut errors = Vec::new();
    for _ in 0..3 {
        errors.push(client.loans(&partner(), &[], 0, 10).await.unwrap_err());
    }
    assert!(
        errors[0].contains("500") && errors[0].contains("boom"),
        "{errors:?}"
    );
    assert!(errors[1].contains("not JSON"), "{errors:?}");
    assert!(
        errors[2].contains("data[0]: no internal_loan_id"),
        "{errors:?}"
    );
}
