use super::*;

fn intake(format: ColumnFormat) -> (Intake, PartnerScope) {
    let p = PartnerId::parse("p1").unwrap();
    (
        Intake::new([(p.clone(), format)].into(), 10),
        PartnerScope::One(p),
    )
}

fn pointers(err: IntakeError) -> Vec<String> {
    match err {
        IntakeError::Invalid { listed, .. } => listed.into_iter().map(|v| v.pointer).collect(),
        other => panic!("expected violations, got {other:?}"),
    }
}

#[test]
fn reads_a_valid_report_with_exact_amounts() {
    let (intake, scope) = intake(ColumnFormat::ThreeColumn);
    let body = br#"{"period":"2026-10","repayments":[
        {"loan_id":"L1","client_id":"C1","amount":"1234567.891"},
        {"loan_id":1042970,"client_id":7,"amount":1234567.891}]}"#;
    let report = intake.read(body, &scope).unwrap();
    assert_eq!(report.repayments()[1].loan_id.as_str(), "1042970");
    assert_eq!(report.total_amount().to_string(), "2469135.782");
    assert_eq!(report.period().to_string(), "2026-10");
}

#[test]
fn malformed_json_reports_line_and_column() {
    let (intake, scope) = intake(ColumnFormat::TwoColumn);
    match intake.read(b"{\n \"repayments\": [,]}", &scope) {
        Err(IntakeError::MalformedJson { line, column, .. }) => {
            assert_eq!((line, column), (2, 17))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_malformed_json_message_gives_the_position_once() {
    let (intake, scope) = intake(ColumnFormat::TwoColumn);
    let error = intake
        .read(b"{\n \"repayments\": [,]}", &scope)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the body is not valid JSON: expected value (line 2, column 17)"
    );
}

#[test]
fn every_problem_is_listed_in_document_order() {
    let (intake, scope) = intake(ColumnFormat::ThreeColumn);
    let body = br#"{"period":"2026-13","repayments":[
        {"loan_id":"L1","client_id":"C1","amount":"-1"},
        {"loan_id":"","client_id":"C2","amount":"1"},
        {"loan_id":"L3","amount":"1"},
        {"loan_id":"L1","client_id":"C1","amount":"1"}]}"#;
    assert_eq!(
        pointers(intake.read(body, &scope).unwrap_err()),
        [
            "/period",
            "/repayments/0/amount",
            "/repayments/1/loan_id",
            "/repayments/2/client_id",
            "/repayments/3"
        ]
    );
}

#[test]
fn another_partner_is_forbidden_and_an_admin_must_name_one() {
    let (intake, scope) = intake(ColumnFormat::TwoColumn);
    let body =
        br#"{"period":"2026-10","partner_id":"p2","repayments":[{"loan_id":"L1","amount":1}]}"#;
    assert!(matches!(
        intake.read(body, &scope),
        Err(IntakeError::PartnerNotAllowed(_))
    ));
    let body = br#"{"period":"2026-10","repayments":[{"loan_id":"L1","amount":1}]}"#;
    assert_eq!(
        pointers(intake.read(body, &PartnerScope::All).unwrap_err()),
        ["/partner_id"]
    );
    let body =
        br#"{"period":"2026-10","partner_id":"p9","repayments":[{"loan_id":"L1","amount":1}]}"#;
    assert_eq!(
        pointers(intake.read(body, &PartnerScope::All).unwrap_err()),
        ["/partner_id"]
    );
}

#[test]
fn too_many_repayments_is_its_own_error() {
    let (intake, scope) = intake(ColumnFormat::TwoColumn);
    let items: Vec<_> = (0..11)
        .map(|i| format!(r#"{{"loan_id":"L{i}","amount":1}}"#))
        .collect();
    let body = format!(
        r#"{{"period":"2026-10","repayments":[{}]}}"#,
        items.join(",")
    );
    assert!(matches!(
        intake.read(body.as_bytes(), &scope),
        Err(IntakeError::TooManyRepayments {
            at_least: 11,
            max: 10
        })
    ));
}

#[test]
fn numeric_ids_must_be_whole_numbers() {
    let (intake, scope) = intake(ColumnFormat::TwoColumn);
    let body = br#"{"period":"2026-10","repayments":[{"loan_id":12.5,"amount":1}]}"#;
    assert_eq!(
        pointers(intake.read(body, &scope).unwrap_err()),
        ["/repayments/0/loan_id"]
    );
    let body = br#"{"period":"2026-10","repayments":[{"loan_id":12.0,"amount":1}]}"#;
    assert_eq!(
        intake.read(body, &scope).unwrap().repayments()[0]
            .loan_id
            .as_str(),
        "12"
    );
}

#[test]
fn the_violation_list_keeps_the_first_100_in_document_order_and_counts_all() {
    let mut found = Violations::default();
    for i in (0..1_000).rev() {
        found.push(Violation::new(format!("/repayments/{i}/amount"), "bad"));
    }
    found.push(Violation::new("/period", "bad"));
    let (listed, total) = found.into_listed();
    assert_eq!(total, 1_001);
    assert_eq!(listed.len(), MAX_LISTED_VIOLATIONS);
    assert_eq!(listed[0].pointer, "/period");
    assert_eq!(listed[1].pointer, "/repayments/0/amount");
    assert_eq!(listed[99].pointer, "/repayments/98/amount");
}

#[tokio::test]
async fn large_bodies_wait_for_one_of_a_few_permits_and_parse_on_the_parser_threads() {
    use futures_util::FutureExt;
    let (intake, scope) = intake(ColumnFormat::TwoColumn);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut held = Vec::new();
    for _ in 0..cores {
        held.push(intake.large_body_permit().await);
    }
    assert!(intake.large_body_permit().now_or_never().is_none());
    held.pop();
    assert!(intake.large_body_permit().now_or_never().is_some());

    let body = bytes::Bytes::from_static(
        br#"{"period":"2026-10","repayments":[{"loan_id":"L1","amount":"1.5"}]}"#,
    );
    let report = intake.read_large(body, scope.clone()).await.unwrap();
    assert_eq!(report.total_amount().to_string(), "1.5");
    let bad = bytes::Bytes::from_static(
        br#"{"period":"2026-10","repayments":[{"loan_id":"L1","amount":"1.5000"}]}"#,
    );
    assert_eq!(
        pointers(intake.read_large(bad, scope).await.unwrap_err()),
        ["/repayments/0/amount"]
    );
}

/// The body is read in one pass, and its syntax checked on its own only when that read fails:
/// every way the read can stop early must still come out as it did with the syntax pass first.
#[test]
fn a_body_read_in_one_pass_is_refused_as_the_syntax_pass_would_refuse_it() {
    let (intake, scope) = intake(ColumnFormat::TwoColumn);
    let position = |body: &[u8]| match intake.read(body, &scope) {
        Err(IntakeError::MalformedJson { line, column, .. }) => (line, column),
        other => panic!("{other:?}"),
    };
    // Something after the object.
    assert_eq!(
        position(b"{\"period\":\"2026-10\",\"repayments\":[]}\n x"),
        (2, 2)
    );
    // A syntax error inside a repayment: the body's line and column, not the repayment's.
    assert_eq!(
        position(b"{\"period\":\"2026-10\",\n\"repayments\":[{\"loan_id\":\"L1\",\"amount\":1.}]}"),
        (2, 42)
    );
    // Too many repayments, and a syntax error past them: malformed, as before.
    let mut body = String::from("{\"period\":\"2026-10\",\"repayments\":[");
    for i in 0..12 {
        body.push_str(&format!("{{\"loan_id\":\"L{i}\",\"amount\":1}},"));
    }
    body.push_str("oops]}");
    assert!(matches!(
        intake.read(body.as_bytes(), &scope),
        Err(IntakeError::MalformedJson { .. })
    ));
    // White space around the object, as the syntax pass allows.
    let spaced =
        b" \r\n\t{\"period\":\"2026-10\",\"repayments\":[{\"loan_id\":\"L1\",\"amount\":1}]}\n ";
    assert_eq!(intake.read(spaced, &scope).unwrap().repayments().len(), 1);
    // Not UTF-8 in a string: refused, never read as text.
    assert!(
        intake
            .read(
                b"{\"period\":\"2026-10\",\"repayments\":[{\"loan_id\":\"L\xff\",\"amount\":1}]}",
                &scope
            )
            .is_err()
    );
}

#[test]
fn each_repayments_problems_are_listed_in_document_order() {
    // As the MIS wrote them, not sorted by name: a JSON map type that sorts (serde_json
    // without `preserve_order`) would list /amount before /loan_id here.
    let (intake, scope) = intake(ColumnFormat::ThreeColumn);
    let body = br#"{"period":"2026-13","repayments":[
        {"loan_id":true,"amount":[1],"client_id":{}},
        {"loan_id":"L2","client_id":"C2","amount":"25.00"},
        {"nickname":"y","loan_id":[],"amount":"x"}]}"#;
    let found = pointers(intake.read(body, &scope).unwrap_err());
    let at = |p: &str| {
        found
            .iter()
            .position(|f| f == p)
            .unwrap_or_else(|| panic!("{p} in {found:?}"))
    };
    let in_order = [
        "/repayments/0/loan_id",
        "/repayments/0/amount",
        "/repayments/0/client_id",
        "/repayments/2/loan_id",
        "/repayments/2/amount",
    ];
    for pair in in_order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?} in {found:?}");
    }
    assert!(found.contains(&"/period".to_owned()), "{found:?}");
}
