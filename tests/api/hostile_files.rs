//! Hostile CSV and `.xlsx` files (issue 22, items 1-2): what a file says about itself (counts,
//! indexes, sizes) never sizes an allocation, and each bound is refused at its first excess
//! with where it is. (The memory such files cost is measured in tests/intake_memory.rs.)

use std::process::Stdio;

use crate::helpers::*;
use crate::workbooks::{quadrillion_strings, with_formats, with_shared_strings, workbook};

const CSV: &str = "text/csv";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

pub(crate) async fn validate(app: &TestApp, content_type: &str, body: Vec<u8>) -> Answer {
    app.send(
        app.client
            .post(format!(
                "{}/v1/repayments/validate?period=2026-10",
                app.address
            ))
            .header("X-Api-Key", plain_key(NAIROBI))
            .header("Content-Type", content_type)
            .body(body),
    )
    .await
}

fn header_and(rows: &str) -> String {
    format!(
        r#"<row r="1"><c r="A1" t="inlineStr"><is><t>loan_id</t></is></c><c r="B1" t="inlineStr"><is><t>client_id</t></is></c><c r="C1" t="inlineStr"><is><t>amount</t></is></c></row>{rows}"#
    )
}

fn assert_malformed(answer: &Answer, says: &str) {
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.content_type(), "application/problem+json");
    assert_eq!(
        answer.body["type"], "/problems/malformed-file",
        "{}",
        answer.text
    );
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{detail}");
}

/// The one violation of a 422 that names the file as a whole.
fn whole_file_problem(answer: &Answer) -> &serde_json::Value {
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.body["error_count"], 1, "{}", answer.text);
    &answer.body["errors"][0]
}

#[tokio::test]
async fn the_binary_survives_a_workbook_that_declares_a_quadrillion_strings() {
    let redis = TestRedis::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = redis.dir().join("gateway.toml");
    std::fs::write(
        &config,
        test_config(&redis.url()).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_repayment-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gateway = Remote::ready(port).await;
    let client = reqwest::Client::new();
    let body = quadrillion_strings();
    assert!(body.len() < 2_500, "{} bytes", body.len());

    for path in ["/v1/repayments/validate", "/v1/repayments"] {
        let sent = client
            .post(format!("{}{path}?period=2026-10", gateway.base))
            .header("X-Api-Key", plain_key(NAIROBI))
            .header("Content-Type", XLSX)
            .body(body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => panic!(
                "{path}: no answer ({error}); the gateway exited with {:?}",
                child.try_wait()
            ),
        };
        assert_eq!(response.status(), 400, "{path}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "/problems/malformed-file", "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("shared strings"),
            "{problem}"
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
    let accepted = gateway
        .post_report(
            &plain_key(NAIROBI),
            &three_column_report(1, "25").to_string(),
        )
        .await;
    assert_eq!(accepted.status(), 202);
    child.start_kill().unwrap();
}

#[tokio::test]
async fn a_shared_string_index_that_is_not_a_plain_index_is_refused() {
    let app = spawn(Backend::Embedded).await;
    let strings = ["loan_id", "client_id", "amount", "L-1", "C-1"];
    let row = |index: &str| {
        format!(
            r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row><row r="2"><c r="A2" t="s"><v>{index}</v></c><c r="B2" t="s"><v>4</v></c><c r="C2"><v>25</v></c></row>"#
        )
    };
    let good = validate(&app, XLSX, with_shared_strings(&row("3"), &strings)).await;
    assert_eq!(good.status, 200, "{}", good.text);

    // calamine reads an index it can't parse as 0, the first string: here the header's.
    for index in ["-1", " 3", "3 ", "+3", "3x", "0x3", "18446744073709551616"] {
        let answer = validate(&app, XLSX, with_shared_strings(&row(index), &strings)).await;
        assert_malformed(&answer, "cell A2");
    }
    let answer = validate(&app, XLSX, with_shared_strings(&row("5"), &strings)).await;
    assert_malformed(&answer, "cell A2");
    assert!(app.stored().await.is_empty());
}

#[tokio::test]
async fn a_shared_string_table_larger_than_any_report_is_refused_while_read() {
    let app = spawn_app_for(Backend::Embedded, |s| s.server.max_repayments = 100, |s| s).await;
    let rows = header_and(
        r#"<row r="2"><c r="A2" t="s"><v>0</v></c><c r="B2" t="s"><v>0</v></c><c r="C2"><v>25</v></c></row>"#,
    );
    let declared = workbook(
        &rows,
        Some(
            r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="1000000"><si><t>X-1</t></si></sst>"#,
        ),
    );
    assert_malformed(&validate(&app, XLSX, declared).await, "shared strings");

    let many: Vec<String> = (0..5_000).map(|i| format!("S-{i}")).collect();
    let items: String = many
        .iter()
        .map(|s| format!("<si><t>{s}</t></si>"))
        .collect();
    let undeclared = workbook(
        &rows,
        Some(&format!(
            r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">{items}</sst>"#
        )),
    );
    assert_malformed(&validate(&app, XLSX, undeclared).await, "shared strings");
}

#[tokio::test]
async fn a_row_of_thousands_of_cells_is_refused_naming_its_row_and_sheet() {
    let app = spawn(Backend::Embedded).await;
    let cells: String = (0..5_000).map(|_| "<c><v>1</v></c>").collect();
    let rows = header_and(&format!(r#"<row r="2">{cells}</row>"#));
    let answer = validate(&app, XLSX, workbook(&rows, None)).await;
    let problem = whole_file_problem(&answer);
    assert_eq!(problem["sheet"], "Sheet1", "{problem}");
    assert_eq!(problem["row"], 2, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("row 2 has more than 1024 filled cells"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_cell_longer_than_any_report_needs_is_refused_where_it_is() {
    let app = spawn(Backend::Embedded).await;
    // Longer than any text Excel writes in one cell: refused before calamine reads the sheet.
    let huge = "x".repeat(200 * 1024);
    let rows = header_and(&format!(
        r#"<row r="2"><c r="A2" t="inlineStr"><is><t>{huge}</t></is></c></row>"#
    ));
    assert_malformed(
        &validate(&app, XLSX, workbook(&rows, None)).await,
        "xl/worksheets/sheet1.xml",
    );
    // The same length in many short runs of one cell.
    let runs = "<r><t>xxxxxxxxxx</t></r>".repeat(20 * 1024);
    let rows = header_and(&format!(
        r#"<row r="2"><c r="A2" t="inlineStr"><is>{runs}</is></c></row>"#
    ));
    assert_malformed(
        &validate(&app, XLSX, workbook(&rows, None)).await,
        "cell A2",
    );

    // Longer than any loan ID, client ID or amount: refused, naming the cell.
    let long = "x".repeat(5_000);
    let rows = header_and(&format!(
        r#"<row r="2"><c r="A2" t="inlineStr"><is><t>L-1</t></is></c><c r="B2" t="inlineStr"><is><t>{long}</t></is></c><c r="C2"><v>25</v></c></row>"#
    ));
    let answer = validate(&app, XLSX, workbook(&rows, None)).await;
    let problem = whole_file_problem(&answer);
    assert_eq!(problem["cell"], "B2", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("more than 1024 bytes"), "{detail}");
    assert!(answer.text.len() < 2_000, "{}", answer.text.len());
}

#[tokio::test]
async fn cell_formats_that_would_copy_a_long_format_code_thousands_of_times_are_refused() {
    let app = spawn(Backend::Embedded).await;
    let rows = header_and(
        r#"<row r="2"><c r="A2" t="inlineStr"><is><t>L-1</t></is></c><c r="B2" t="inlineStr"><is><t>C-1</t></is></c><c r="C2"><v>25</v></c></row>"#,
    );
    // A workbook as Excel writes it: a short format code, a few formats.
    let answer = validate(&app, XLSX, with_formats(&rows, "0.00", 20)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // 100 KiB of format code in each of 2,000 formats: 200 MB (at 100,000 formats, 10 GB).
    let code = "0".repeat(100 * 1024);
    let answer = validate(&app, XLSX, with_formats(&rows, &code, 2_000)).await;
    assert_malformed(&answer, "cell formats");
}

#[tokio::test]
async fn a_csv_line_of_too_many_fields_or_a_field_too_long_is_refused_with_its_line() {
    let app = spawn(Backend::Embedded).await;
    let mut body = b"loan_id,client_id,amount\nL-1,C-1,25\nL-2,C-2,25".to_vec();
    body.extend(std::iter::repeat_n(b',', 5_000));
    body.extend(b"\nL-3,C-3,25\n");
    let problem = whole_file_problem(&validate(&app, CSV, body).await).clone();
    assert_eq!(problem["line"], 3, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("line 3 has more than 1024 fields"),
        "{detail}"
    );

    // Only commas, as the first line: no header can be that wide either.
    let commas = vec![b','; 100_000];
    let problem = whole_file_problem(&validate(&app, CSV, commas).await).clone();
    assert_eq!(problem["line"], 1, "{problem}");

    let body = format!(
        "loan_id,client_id,amount\nL-1,C-1,25\n\"L-2\nstill L-2\",{},25\n",
        "x".repeat(5_000)
    );
    let answer = validate(&app, CSV, body.into_bytes()).await;
    let problem = whole_file_problem(&answer);
    assert_eq!(problem["line"], 3, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("field 2 of line 3 is longer than 1024 bytes"),
        "{detail}"
    );

    // A few fields too many is still that line's own problem, as before.
    let body = b"loan_id,client_id,amount\nL-1,C-1,25,9\nL-2,C-2,25\n".to_vec();
    let answer = validate(&app, CSV, body).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.body["errors"][0]["line"], 2);
    assert!(app.stored().await.is_empty());
}
