//! Operator actions confirmed against what was seen (issue 22, item 6): a stale confirmation,
//! from a second operator, a second tab or an API client, is refused and sends nothing.

use repayment_gateway::domain::PartnerId;
use repayment_gateway::sandbox::Fault;

use crate::helpers::*;

/// A batch Kiva refused with a 400: `(rig, report id, batch id)`.
async fn a_rejected_batch(backend: Backend) -> (DeliveryRig, String, String) {
    let rig = spawn_delivery_rig(backend).await;
    let id = rig.submit(NAIROBI, &three_column_report(2, "5")).await;
    rig.sandbox
        .push_fault(Fault::status(400, r#"{"error":"bad"}"#));
    rig.drain(&rig.worker()).await;
    assert_eq!(batch_states(&rig.report(&id).await), ["rejected"]);
    let batch = format!("{id}.1");
    (rig, id, batch)
}

async fn operate_if_match(rig: &DeliveryRig, batch: &str, action: &str, version: &str) -> Answer {
    rig.app
        .send(
            rig.app
                .client
                .post(format!("{}/v1/batches/{batch}/{action}", rig.app.address))
                .header("X-Api-Key", plain_key(HEAD_OFFICE))
                .header("If-Match", version),
        )
        .await
}

async fn a_stale_api_resend_is_refused_and_kiva_gets_nothing_more(backend: Backend) {
    let (rig, id, batch) = a_rejected_batch(backend).await;
    let worker = rig.worker();
    let seen = rig.report(&id).await["batches"][0]["version"]
        .as_str()
        .expect("a batch shows its version")
        .to_owned();
    assert_eq!(seen, "rejected.1.0");

    // Operator B resends; Kiva processes it but answers 500: held.
    let b = operate_if_match(&rig, &batch, "resend", &format!("\"{seen}\"")).await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.headers["etag"], "\"queued.1.1\"");
    rig.sandbox.push_fault(Fault::status(500, "oops"));
    rig.drain(&worker).await;
    let report = rig.report(&id).await;
    assert_eq!(batch_states(&report), ["held"]);
    assert_eq!(rig.sandbox.repayment_requests(), 2);

    // Operator A confirms what they saw: a rejected batch. Refused, for both actions.
    for action in ["resend", "mark-delivered"] {
        let a = operate_if_match(&rig, &batch, action, &seen).await;
        assert_eq!(a.status, 409, "{action}: {}", a.text);
        assert_eq!(a.headers["content-type"], "application/problem+json");
        let detail = a.body["detail"].as_str().unwrap();
        assert!(detail.contains("changed since"), "{detail}");
        assert!(detail.contains("held.2.1"), "{detail}");
    }
    assert_eq!(
        rig.report(&id).await,
        report,
        "a refused action changes nothing"
    );
    let partner = PartnerId::parse(THREE_COL).unwrap();
    assert!(
        rig.app
            .store
            .queued_batches(&partner)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(rig.drain(&worker).await, 0);
    assert_eq!(
        rig.sandbox.repayment_requests(),
        2,
        "Kiva saw 400 and 500 only"
    );

    // Not a version at all: 400, nothing changed.
    let bad = operate_if_match(&rig, &batch, "resend", "held").await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(rig.report(&id).await, report);

    // With what is there now, the action goes through; an old client without If-Match too.
    let closed = operate_if_match(&rig, &batch, "mark-delivered", "held.2.1").await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    assert_eq!(closed.body["version"], "delivered.2.2");
    assert_eq!(rig.drain(&worker).await, 0);
    assert_eq!(rig.sandbox.repayment_requests(), 2);
}

/// A batch rejected, resent, and rejected again is back in the state the stale confirmation
/// saw: the version still tells them apart.
async fn a_batch_back_in_the_same_state_is_still_a_changed_batch(backend: Backend) {
    let (rig, id, batch) = a_rejected_batch(backend).await;
    let resent = rig.operate(HEAD_OFFICE, &batch, "resend").await;
    assert_eq!(
        resent.status, 200,
        "an old client without If-Match still works"
    );
    rig.sandbox
        .push_fault(Fault::status(400, r#"{"error":"bad"}"#));
    rig.drain(&rig.worker()).await;
    assert_eq!(batch_states(&rig.report(&id).await), ["rejected"]);
    let stale = operate_if_match(&rig, &batch, "resend", "rejected.1.0").await;
    assert_eq!(stale.status, 409, "{}", stale.text);
    assert_eq!(rig.drain(&rig.worker()).await, 0);
    assert_eq!(rig.sandbox.repayment_requests(), 2);
}

fn hidden(html: &str, name: &str) -> Option<String> {
    html.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
}

/// An admin's session cookie (`rg_session=...`), signed in through the page as a browser is.
async fn admin_session(address: &str, client: &reqwest::Client) -> String {
    let form = client
        .get(format!("{address}/web/sign-in"))
        .send()
        .await
        .unwrap();
    let cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("rg_sign_in="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let token = hidden(&form.text().await.unwrap(), "csrf").unwrap();
    let signed_in = client
        .post(format!("{address}/web/sign-in"))
        .header("Cookie", cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("api_key", &plain_key(HEAD_OFFICE)),
        ])
        .send()
        .await
        .unwrap();
    signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("rg_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// One operator, two tabs on the same confirmation (or two operators): the first resends, Kiva
/// answers 500, and the second tab's confirmation is refused with a page that says why.
async fn a_stale_confirmation_page_is_refused_with_a_clear_message(backend: Backend) {
    let (rig, id, batch) = a_rejected_batch(backend).await;
    let address = &rig.app.address;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = admin_session(address, &client).await;
    let open_tab = async || {
        let page = client
            .get(format!("{address}/web/batches/{batch}/resend"))
            .header("Cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let fields = ["csrf", "version"].map(|n| (n, hidden(&html, n).unwrap_or_default()));
        fields.into_iter().collect::<Vec<_>>()
    };
    let (tab_a, tab_b) = (open_tab().await, open_tab().await);
    let confirm = async |fields: &[(&str, String)]| {
        client
            .post(format!("{address}/web/batches/{batch}/resend"))
            .header("Cookie", &session)
            .form(fields)
            .send()
            .await
            .unwrap()
    };
    let b = confirm(&tab_b).await;
    assert_eq!(b.status(), 303);
    rig.sandbox.push_fault(Fault::status(500, "oops"));
    rig.drain(&rig.worker()).await;
    assert_eq!(batch_states(&rig.report(&id).await), ["held"]);

    let a = confirm(&tab_a).await;
    assert_eq!(a.status(), 409);
    let html = a.text().await.unwrap();
    assert!(
        html.contains("changed since this page was opened"),
        "{html}"
    );
    // A form that carries no version is refused the same way.
    let a = confirm(&tab_a[..1]).await;
    assert_eq!(a.status(), 409);

    assert_eq!(batch_states(&rig.report(&id).await), ["held"]);
    assert_eq!(rig.drain(&rig.worker()).await, 0);
    assert_eq!(
        rig.sandbox.repayment_requests(),
        2,
        "Kiva saw 400 and 500 only"
    );
}

on_both_stores!(
    a_stale_api_resend_is_refused_and_kiva_gets_nothing_more,
    a_batch_back_in_the_same_state_is_still_a_changed_batch,
    a_stale_confirmation_page_is_refused_with_a_clear_message,
);
