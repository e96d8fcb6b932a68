use serde_json::json;

use crate::helpers::*;

async fn a_report_shows_its_batches_and_each_repayment_state(backend: Backend) {
    let app = spawn(backend).await;
    let accepted = app.submit(NAIROBI, &three_column_report(250, "2.50")).await;
    let id = accepted.body["id"].as_str().unwrap();

    let answer = app.report(NAIROBI, id).await;

    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["id"], id);
    assert_eq!(answer.body["status"], "queued");
    assert_eq!(answer.body["total_amount"], "625.00");
    let batches = answer.body["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1]["id"], format!("{id}.2"));
    assert_eq!(batches[1]["state"], "queued");
    assert_eq!(batches[1]["repayment_count"], 50);
    assert_eq!(batches[1]["total_amount"], "125.00");
    let repayment = &batches[1]["repayments"][49];
    assert_eq!(
        repayment,
        &json!({"position": 249, "loan_id": "L-249", "client_id": "C-249", "amount": "2.50", "state": "queued"})
    );
}

async fn a_branch_key_cannot_read_another_branchs_report_but_an_admin_can(backend: Backend) {
    let app = spawn(backend).await;
    let accepted = app.submit(NAIROBI, &three_column_report(1, "1")).await;
    let id = accepted.body["id"].as_str().unwrap();

    let other_branch = app.report(MOMBASA, id).await;
    assert_eq!(other_branch.status, 404);
    assert_eq!(other_branch.content_type(), "application/problem+json");
    assert_eq!(
        app.report(TWO_COL_BRANCH, id).await.status,
        404,
        "another partner"
    );
    assert_eq!(app.report(HEAD_OFFICE, id).await.status, 200);
    assert_eq!(app.report(NETWORK_ADMIN, id).await.status, 200);
    assert_eq!(app.report(NAIROBI, "not-a-uuid").await.status, 404);
    assert_eq!(
        app.get(&format!("/v1/reports/{id}"), None).await.status,
        401
    );
}

async fn listing_is_newest_first_filtered_and_paged(backend: Backend) {
    let app = spawn(backend).await;
    let mut ids = Vec::new();
    for (key, period) in [
        (NAIROBI, "2026-09"),
        (MOMBASA, "2026-10"),
        (NAIROBI, "2026-10"),
        (NAIROBI, "2026-10"),
    ] {
        let mut body = three_column_report(1, "1");
        body["period"] = json!(period);
        // A branch corrects only its own branch's loans: Mombasa's loan is its own.
        if key == MOMBASA {
            body["repayments"][0]["loan_id"] = json!("L-mombasa");
        }
        ids.push(
            app.submit(key, &body).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let listed = |answer: &Answer| -> Vec<String> {
        answer.body["reports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = app.get("/v1/reports", Some(HEAD_OFFICE)).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(
        listed(&all),
        [
            ids[3].as_str(),
            ids[2].as_str(),
            ids[1].as_str(),
            ids[0].as_str()
        ]
    );

    let nairobi = app.get("/v1/reports", Some(NAIROBI)).await;
    assert_eq!(
        listed(&nairobi),
        [ids[3].as_str(), ids[2].as_str(), ids[0].as_str()],
        "a branch sees only its own"
    );
    let peeking = app.get("/v1/reports?branch=Mombasa", Some(NAIROBI)).await;
    assert!(listed(&peeking).is_empty());

    let october = app
        .get(
            "/v1/reports?period=2026-10&branch=Nairobi",
            Some(HEAD_OFFICE),
        )
        .await;
    assert_eq!(listed(&october), [ids[3].as_str(), ids[2].as_str()]);
    let queued = app
        .get("/v1/reports?status=queued&limit=2", Some(HEAD_OFFICE))
        .await;
    assert_eq!(listed(&queued), [ids[3].as_str(), ids[2].as_str()]);
    let cursor = queued.body["next_cursor"].as_str().unwrap();
    let rest = app
        .get(
            &format!("/v1/reports?status=queued&limit=2&cursor={cursor}"),
            Some(HEAD_OFFICE),
        )
        .await;
    assert_eq!(listed(&rest), [ids[1].as_str(), ids[0].as_str()]);
    let end = app
        .get(
            &format!(
                "/v1/reports?limit=2&cursor={}",
                rest.body["next_cursor"].as_str().unwrap()
            ),
            Some(HEAD_OFFICE),
        )
        .await;
    assert!(listed(&end).is_empty());
    assert!(end.body.get("next_cursor").is_none());

    assert_eq!(
        app.get("/v1/reports?period=2026-1", Some(HEAD_OFFICE))
            .await
            .status,
        400
    );
    assert_eq!(
        app.get("/v1/reports?limit=0", Some(HEAD_OFFICE))
            .await
            .status,
        400
    );
    assert_eq!(
        app.get("/v1/reports?status=lost", Some(HEAD_OFFICE))
            .await
            .status,
        400
    );
    // An every-partner admin key lists across partners (first_hour.rs tests the paging).
    let across = app.get("/v1/reports", Some(NETWORK_ADMIN)).await;
    assert_eq!(across.status, 200, "{}", across.text);
    let network = app
        .get(
            &format!("/v1/reports?partner_id={THREE_COL}"),
            Some(NETWORK_ADMIN),
        )
        .await;
    assert_eq!(listed(&network).len(), 4);
    let forbidden = app
        .get(
            &format!("/v1/reports?partner_id={TWO_COL}"),
            Some(HEAD_OFFICE),
        )
        .await;
    assert_eq!(forbidden.status, 403);
}

async fn a_report_whose_total_exceeds_the_largest_single_amount_reads_back(backend: Backend) {
    let app = spawn(backend).await;
    let accepted = app
        .submit(NAIROBI, &three_column_report(3, "999999999999999.999"))
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(accepted.body["total_amount"], "2999999999999999.997");
    let id = accepted.body["id"].as_str().unwrap();

    let read = app.report(NAIROBI, id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["total_amount"], "2999999999999999.997");
    let listed = app.get("/v1/reports", Some(NAIROBI)).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
}

on_both_stores!(
    a_report_shows_its_batches_and_each_repayment_state,
    a_branch_key_cannot_read_another_branchs_report_but_an_admin_can,
    listing_is_newest_first_filtered_and_paged,
    a_report_whose_total_exceeds_the_largest_single_amount_reads_back,
);
