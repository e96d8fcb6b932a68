//! The upload page in the browser: problems by line, fixed, sent once however often it is sent.

use super::Month;
use super::browser::Browser;

/// The MIS export with two problems, then fixed; sent twice from the same page (a double
/// click, or the back button): one report.
pub(super) async fn a_clerk_uploads_a_file_fixes_its_problems_and_sends_it_once(
    b: &Browser,
    m: &Month,
) {
    let address = &m.rig.app.address;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web-uploads");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nairobi-2026-10.csv");
    std::fs::write(
        &file,
        "loan_id,client_id,amount\nL-10,C-10,1.2345\nL-11,,5\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();

    b.goto(&format!("{address}/web/upload")).await;
    b.screenshot("upload-en").await;
    b.type_into("#file", path).await;
    b.type_into("#period", "2026-10").await;
    b.click("#check").await;
    b.wait_for("#refused").await;
    assert!(b.text("#refused").await.contains("2 problem(s)"));
    let rows = b.text("#problems tbody").await;
    assert!(rows.contains("line 2") && rows.contains("line 3"), "{rows}");
    // Each problem names its column, as the file's header does.
    let column = |n: usize| format!("#problems tbody tr:nth-child({n}) td:nth-child(2)");
    assert_eq!(b.text(&column(1)).await.trim(), "amount", "{rows}");
    assert_eq!(b.text(&column(2)).await.trim(), "client_id", "{rows}");
    b.screenshot("upload-problems-en").await;
    let reports = async || {
        let stored = m.rig.app.stored().await;
        stored.iter().filter(|s| s.starts_with("report ")).count()
    };
    let reports_before = reports().await;

    std::fs::write(
        &file,
        "loan_id,client_id,amount\nL-10,C-10,1.234\nL-11,C-11,5\n",
    )
    .unwrap();
    b.type_into("#file", path).await;
    b.click("#check").await;
    b.wait_for("#checked").await;
    assert!(
        b.text("#checked")
            .await
            .contains("2 repayment(s), 6.234 in total, month 2026-10")
    );
    b.screenshot("upload-checked-en").await;
    // What the page's form will post: its idempotency key and CSRF token.
    let key = b
        .attr("input[name=idempotency_key]", "value")
        .await
        .unwrap();
    let csrf = b.attr("form.card input[name=csrf]", "value").await.unwrap();
    b.type_into("#file", path).await;
    b.click("#send").await;
    b.wait_for("#done").await;
    let first = b.path().await;
    assert!(first.starts_with("/web/reports/"), "{first}");
    assert!(b.text("#done").await.contains("stored"));
    // The second click of a double click: the very same form posted again. One report.
    let boundary = "----rg-test-boundary";
    let part = |name: &str, value: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
    };
    let body = [
        part("csrf", &csrf),
        part("idempotency_key", &key),
        part("period", "2026-10"),
        part("step", "send"),
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"nairobi-2026-10.csv\"\r\nContent-Type: text/csv\r\n\r\n{}\r\n--{boundary}--\r\n",
            std::fs::read_to_string(&file).unwrap()
        ),
    ]
    .concat();
    let again = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{address}/web/upload"))
        .header(
            "Cookie",
            format!("rg_session={}", b.cookie("rg_session").await.unwrap()),
        )
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 303);
    assert_eq!(
        again.headers()["location"].to_str().unwrap(),
        format!("{first}?done=sent")
    );
    assert_eq!(reports().await, reports_before + 1);
    assert_eq!(m.rig.drain(&m.worker).await, 1);
    super::advice::the_same_file_again_names_the_checkbox(b, address, path).await;
    assert_eq!(
        reports().await,
        reports_before + 1,
        "a check stores nothing"
    );
}
