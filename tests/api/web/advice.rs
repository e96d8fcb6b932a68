//! What the pages advise can be done where it is read: a loan Kiva refused because it ended is
//! not to be "reported again", and the upload page points at its own checkbox, not at a JSON
//! field.

use super::browser::Browser;

/// On the month's page: Kiva refused the fixture's `L-7` because it ended.
pub(super) async fn month_page(b: &Browser) {
    let reasons = b.text("#h-summary ~ ul.reasons").await;
    assert!(
        reasons.contains("1 loan(s) refused by Kiva because Kiva takes no more repayments"),
        "{reasons}"
    );
    assert!(!reasons.contains("report them again"), "{reasons}");
}

/// On the upload page, signed in as the clerk who has just sent `file` for 2026-10: the same
/// file again is refused, with advice that names the form's checkbox; ticked, the file checks.
pub(super) async fn the_same_file_again_names_the_checkbox(b: &Browser, address: &str, file: &str) {
    b.goto(&format!("{address}/web/upload")).await;
    b.type_into("#file", file).await;
    b.type_into("#period", "2026-10").await;
    b.click("#check").await;
    b.wait_for("#refused").await;
    let rows = b.text("#problems tbody").await;
    assert!(rows.contains("already reported"), "{rows}");
    assert!(!rows.contains("\"correction\": true"), "{rows}");
    assert!(
        rows.contains("tick “This report corrects one already sent for the month”"),
        "{rows}"
    );
    b.screenshot("upload-already-reported-en").await;
    b.type_into("#file", file).await;
    b.click("input[name=correction]").await;
    b.click("#check").await;
    b.wait_for("#checked").await;
}
