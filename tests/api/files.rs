//! Reports sent as CSV and Excel files: the same rules as JSON, every problem located.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
use serde_json::{Value, json};

use crate::helpers::*;

const CSV: &str = "text/csv";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/files")
}

impl TestApp {
    fn post_file(
        &self,
        path_and_query: &str,
        key: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path_and_query}", self.address))
            .header("X-Api-Key", plain_key(key))
            .header("Content-Type", content_type)
            .body(body)
    }

    async fn validate_file(
        &self,
        query: &str,
        key: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        self.send(self.post_file(
            &format!("/v1/repayments/validate{query}"),
            key,
            content_type,
            body,
        ))
        .await
    }
}

/// Each example file, who sends it and how: its answer is `<file>.expected.json` beside it.
const EXAMPLES: &[(&str, &str, &str, &str)] = &[
    ("two-column.csv", TWO_COL_BRANCH, CSV, "?period=2026-10"),
    ("three-column-header.csv", NAIROBI, CSV, "?period=2026-10"),
    ("semicolon.csv", NAIROBI, CSV, "?period=2026-10"),
    ("repayments.xlsx", NAIROBI, XLSX, "?period=2026-10"),
    ("broken-three-column.csv", NAIROBI, CSV, "?period=2026-10"),
    ("broken-four-columns.csv", NAIROBI, CSV, "?period=2026-10"),
    ("broken.xlsx", NAIROBI, XLSX, "?period=2026-10"),
];

#[tokio::test]
async fn each_example_file_gets_its_documented_answer() {
    let app = spawn(Backend::Embedded).await;
    for (file, key, content_type, query) in EXAMPLES {
        let body = std::fs::read(examples().join(file)).unwrap();
        let answer = app.validate_file(query, key, content_type, body).await;
        if std::env::var_os("UPDATE_EXPECTED").is_some() {
            // After a deliberate change of the answers: rewrite them, then review the diff.
            let actual = json!({"status": answer.status, "body": answer.body});
            std::fs::write(
                examples().join(format!("{file}.expected.json")),
                serde_json::to_string_pretty(&actual).unwrap() + "\n",
            )
            .unwrap();
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(examples().join(format!("{file}.expected.json"))).unwrap(),
        )
        .unwrap();
        let actual = json!({"status": answer.status, "body": answer.body});
        assert_eq!(
            actual,
            expected,
            "{file}: got\n{}",
            serde_json::to_string_pretty(&actual).unwrap()
        );
    }
    assert!(app.stored().await.is_empty());
}

#[tokio::test]
async fn five_mistakes_in_a_csv_are_named_in_one_422_with_their_lines() {
    let app = spawn(Backend::Embedded).await;
    let body = std::fs::read(examples().join("broken-three-column.csv")).unwrap();
    let answer = app
        .send(app.post_file("/v1/repayments?period=2026-10", NAIROBI, CSV, body))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.body["error_count"], 5);
    let located: Vec<(String, u64)> = answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        located,
        [
            ("/repayments/0/amount".to_owned(), 2),
            ("/repayments/1/amount".to_owned(), 3),
            ("/repayments/2/client_id".to_owned(), 4),
            ("/repayments/3".to_owned(), 5),
            ("/repayments/4/amount".to_owned(), 6),
        ]
    );
    assert!(app.stored().await.is_empty());
}

/// The same three repayments, amounts as Excel stores them (`25.5`, not `25.50`).
fn report_json(period: &str) -> Value {
    json!({"period": period, "repayments": [
        {"loan_id": "L-1", "client_id": "C-1", "amount": 25.5},
        {"loan_id": "L-2", "client_id": "C-2", "amount": 1200},
        {"loan_id": "L-3", "client_id": "C-3", "amount": 0.125},
    ]})
}

const REPORT_CSV: &str = "loan_id,client_id,amount\nL-1,C-1,25.5\nL-2,C-2,1200\nL-3,C-3,0.125\n";

fn report_xlsx() -> Vec<u8> {
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    for (column, name) in ["loan_id", "client_id", "amount"].iter().enumerate() {
        sheet.write_string(0, column as u16, *name).unwrap();
    }
    for (row, (loan, client, amount)) in [
        ("L-1", "C-1", 25.5),
        ("L-2", "C-2", 1200.0),
        ("L-3", "C-3", 0.125),
    ]
    .into_iter()
    .enumerate()
    {
        let row = row as u32 + 1;
        sheet.write_string(row, 0, loan).unwrap();
        sheet.write_string(row, 1, client).unwrap();
        sheet.write_number(row, 2, amount).unwrap();
    }
    workbook.save_to_buffer().unwrap()
}

#[tokio::test]
async fn the_same_report_as_json_csv_and_xlsx_stores_the_same_and_sends_kiva_identical_bodies() {
    let rig = spawn_delivery_rig(Backend::Embedded).await;
    let app = &rig.app;
    // One period each: the same loans twice in one period would be a repeated report.
    let json_answer = app.submit(NAIROBI, &report_json("2026-01")).await;
    assert_eq!(json_answer.status, 202, "{}", json_answer.text);
    let csv_answer = app
        .send(app.post_file(
            "/v1/repayments?period=2026-02",
            NAIROBI,
            CSV,
            REPORT_CSV.into(),
        ))
        .await;
    assert_eq!(csv_answer.status, 202, "{}", csv_answer.text);
    let xlsx_answer = app
        .send(app.post_file(
            "/v1/repayments?period=2026-03",
            NAIROBI,
            XLSX,
            report_xlsx(),
        ))
        .await;
    assert_eq!(xlsx_answer.status, 202, "{}", xlsx_answer.text);

    let stored: Vec<Value> = [&json_answer, &csv_answer, &xlsx_answer]
        .iter()
        .map(|a| {
            let mut report = a.body.clone();
            for field in ["id", "created_at", "period"] {
                report.as_object_mut().unwrap().remove(field);
            }
            report
        })
        .collect();
    assert_eq!(stored[0], stored[1]);
    assert_eq!(stored[0], stored[2]);

    let worker = rig.worker();
    assert_eq!(rig.drain(&worker).await, 3);
    let bodies: Vec<String> = rig.sandbox.uploads().into_iter().map(|u| u.body).collect();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0], bodies[2]);
    assert!(bodies[0].contains(r#""amount":25.5"#), "{}", bodies[0]);
}

#[tokio::test]
async fn bom_crlf_semicolon_tab_quotes_and_blank_lines_are_read() {
    let app = spawn(Backend::Embedded).await;
    let reference = app
        .send(app.post(
            "/v1/repayments/validate",
            NAIROBI,
            report_json("2026-10").to_string(),
        ))
        .await;
    assert_eq!(reference.status, 200, "{}", reference.text);
    let variants: &[(&str, &[u8])] = &[
        ("text/csv", b"\xEF\xBB\xBFloan_id,client_id,amount\r\nL-1,C-1,25.5\r\nL-2,C-2,1200\r\nL-3,C-3,0.125\r\n\r\n\r\n"),
        ("text/csv", b"LOAN ID;Client ID;Amount\nL-1;C-1;25.5\nL-2;C-2;1200\nL-3;C-3;0.125\n"),
        ("text/csv", b"loan_id\tclient_id\tamount\nL-1\tC-1\t25.5\nL-2\tC-2\t1200\nL-3\tC-3\t0.125\n"),
        ("text/csv", b"\"loan_id\",\"client_id\",\"amount\"\n\"L-1\",\"C-1\",\"25.5\"\n\"L-2\",C-2,1200\n\"L-3\",\"C-3\",0.125\n,,\n"),
        ("text/csv; delimiter=;", b"L-1;C-1;25.5\nL-2;C-2;1200\nL-3;C-3;0.125"),
        ("text/csv", b"amount,loan_id,client_id\n25.5,L-1,C-1\n1200,L-2,C-2\n0.125,L-3,C-3\n"),
    ];
    for (content_type, body) in variants {
        let answer = app
            .validate_file("?period=2026-10", NAIROBI, content_type, body.to_vec())
            .await;
        assert_eq!(
            answer.status,
            200,
            "{}: {}",
            String::from_utf8_lossy(body),
            answer.text
        );
        assert_eq!(
            answer.body,
            reference.body,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // The delimiter named in the query: `1,5` is then one field, a decimal comma.
    let answer = app
        .validate_file(
            "?period=2026-10&delimiter=tab",
            NAIROBI,
            CSV,
            b"L-1\tC-1\t1,5\n".to_vec(),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(
        answer.body["errors"][0]["detail"],
        "amount `1,5` uses a decimal comma: write 1.5"
    );
    assert_eq!(answer.body["errors"][0]["line"], 1);
}

#[tokio::test]
async fn a_quoted_field_may_hold_the_delimiter_and_a_quote() {
    let app = spawn(Backend::Embedded).await;
    let body = b"loan_id,client_id,amount\n\"L-1, group \"\"A\"\"\",C-1,10\n".to_vec();
    let answer = app
        .validate_file("?period=2026-10", NAIROBI, CSV, body)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body["kiva_requests"][0]["repayments"][0]["loan_id"],
        "L-1, group \"A\""
    );
}

#[tokio::test]
async fn invalid_utf8_and_too_many_fields_are_named_with_their_line() {
    let app = spawn(Backend::Embedded).await;
    let body = b"loan_id,client_id,amount\nL-1,C-1,10\nL-\xE9,C-2,10\nL-3,C-3,1,234.50\n".to_vec();
    let answer = app
        .validate_file("?period=2026-10", NAIROBI, CSV, body)
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(
        answer.body["errors"],
        json!([
            {"pointer": "/repayments/1", "line": 3,
             "detail": "invalid UTF-8 on line 3: save as *CSV UTF-8* in Excel"},
            {"pointer": "/repayments/2", "line": 4,
             "detail": "line 4 has 4 fields where the file has 3: a value that contains the delimiter must be in quotes"},
        ])
    );
}

#[tokio::test]
async fn excel_numbers_keep_their_digits_and_numeric_ids_read_as_json_would() {
    let app = spawn(Backend::Embedded).await;
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet().set_name("Repayments").unwrap();
    sheet.write_number(0, 0, 1042970.0).unwrap();
    sheet.write_number(0, 1, 184729.0).unwrap();
    sheet.write_number(0, 2, 25.5).unwrap();
    sheet.write_number(1, 0, 1043223.0).unwrap();
    sheet.write_number(1, 1, 481395.0).unwrap();
    sheet.write_number(1, 2, 0.1 + 0.2).unwrap();
    sheet.write_number(2, 0, 1043301.0).unwrap();
    sheet.write_number(2, 1, 518004.0).unwrap();
    sheet.write_number(2, 2, 1.2345).unwrap();
    let answer = app
        .validate_file(
            "?period=2026-10",
            NAIROBI,
            XLSX,
            workbook.save_to_buffer().unwrap(),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(
        answer.body["errors"],
        json!([
            {"pointer": "/repayments/1/amount", "sheet": "Repayments", "row": 2, "column": "C", "cell": "C2",
             "detail": "\"0.30000000000000004\" has 17 decimal places; at most 3 are allowed"},
            {"pointer": "/repayments/2/amount", "sheet": "Repayments", "row": 3, "column": "C", "cell": "C3",
             "detail": "\"1.2345\" has 4 decimal places; at most 3 are allowed"},
        ])
    );

    let mut workbook = Workbook::new();
    workbook
        .add_worksheet()
        .set_name("Notes")
        .unwrap()
        .write_string(0, 0, "not the report")
        .unwrap();
    let sheet = workbook.add_worksheet().set_name("Repayments").unwrap();
    sheet.write_number(0, 0, 1042970.0).unwrap();
    sheet.write_number(0, 1, 184729.0).unwrap();
    sheet.write_number(0, 2, 25.5).unwrap();
    let answer = app
        .validate_file(
            "?period=2026-10&sheet=Repayments",
            NAIROBI,
            XLSX,
            workbook.save_to_buffer().unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body["kiva_requests"][0]["repayments"][0],
        json!({"loan_id": "1042970", "client_id": "184729", "amount": 25.5})
    );
    let as_json = app
        .send(app.post(
            "/v1/repayments/validate",
            NAIROBI,
            r#"{"period":"2026-10","repayments":[{"loan_id":1042970,"client_id":184729,"amount":25.5}]}"#,
        ))
        .await;
    assert_eq!(answer.body, as_json.body);
}

#[tokio::test]
async fn a_date_in_an_amount_cell_is_refused_not_read_as_its_serial_number() {
    let app = spawn(Backend::Embedded).await;
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    sheet.write_string(0, 0, "L-1").unwrap();
    sheet.write_string(0, 1, "C-1").unwrap();
    let date = ExcelDateTime::from_ymd(2026, 10, 1).unwrap();
    sheet
        .write_datetime_with_format(0, 2, &date, &Format::new().set_num_format("yyyy-mm-dd"))
        .unwrap();
    let answer = app
        .validate_file(
            "?period=2026-10",
            NAIROBI,
            XLSX,
            workbook.save_to_buffer().unwrap(),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.body["errors"][0]["cell"], "C1");
    assert!(
        answer.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("formatted as a date"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn the_same_key_and_the_same_normalized_report_replays_across_formats() {
    let app = spawn(Backend::Embedded).await;
    let first = app
        .submit_idempotent(
            NAIROBI,
            "2026-10-nairobi",
            &report_json("2026-10").to_string(),
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.text);
    let again = app
        .send(
            app.post_file(
                "/v1/repayments?period=2026-10",
                NAIROBI,
                CSV,
                REPORT_CSV.into(),
            )
            .header("Idempotency-Key", "2026-10-nairobi"),
        )
        .await;
    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.body["id"], first.body["id"]);
    let other = app
        .send(
            app.post_file(
                "/v1/repayments?period=2026-10",
                NAIROBI,
                XLSX,
                report_xlsx(),
            )
            .header("Idempotency-Key", "2026-10-nairobi"),
        )
        .await;
    assert_eq!(
        other.header("Idempotent-Replayed"),
        Some("true"),
        "{}",
        other.text
    );
    let changed = app
        .send(
            app.post_file(
                "/v1/repayments?period=2026-10&correction=true",
                NAIROBI,
                CSV,
                REPORT_CSV.into(),
            )
            .header("Idempotency-Key", "2026-10-nairobi"),
        )
        .await;
    assert_eq!(changed.status, 422, "{}", changed.text);
    assert_eq!(changed.body["type"], "/problems/idempotency-key-reused");
    let reports = app.stored().await;
    assert_eq!(
        reports.iter().filter(|s| s.starts_with("report ")).count(),
        1,
        "{reports:?}"
    );
}

#[tokio::test]
async fn rows_over_the_limit_and_an_unknown_content_type_are_refused() {
    let app = spawn(Backend::Embedded).await;
    let mut csv = String::new();
    for i in 0..10_001 {
        csv.push_str(&format!("L-{i},C-{i},1\n"));
    }
    let answer = app
        .validate_file("?period=2026-10", NAIROBI, CSV, csv.into_bytes())
        .await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    let answer = app
        .validate_file("", NAIROBI, "application/vnd.ms-excel", b"x".to_vec())
        .await;
    assert_eq!(answer.status, 415, "{}", answer.text);
    let answer = app
        .validate_file(
            "?period=2026-10&delimiter=pipe",
            NAIROBI,
            CSV,
            b"L-1,C-1,1".to_vec(),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    let answer = app
        .validate_file("?period=2026-10", NAIROBI, XLSX, b"L-1,C-1,1".to_vec())
        .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.body["type"], "/problems/malformed-file");
}

#[tokio::test]
async fn an_admin_key_names_the_partner_in_the_query() {
    let app = spawn(Backend::Embedded).await;
    let body = b"L-1,10\nL-2,20\n".to_vec();
    let answer = app
        .validate_file(
            &format!("?period=2026-10&partner_id={TWO_COL}"),
            NETWORK_ADMIN,
            CSV,
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["partner_id"], TWO_COL);
    let answer = app
        .validate_file(
            &format!("?period=2026-10&partner_id={TWO_COL}"),
            NAIROBI,
            CSV,
            body,
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.text);
}

/// A zip whose one entry unpacks to 1 GiB of zeros: a few MiB, sent as a workbook.
fn zip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file("xl/worksheets/sheet1.xml", options).unwrap();
    let zeros = vec![b'0'; 1024 * 1024];
    for _ in 0..1024 {
        zip.write_all(&zeros).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test]
async fn hostile_files_are_refused_quickly() {
    let app = spawn(Backend::Embedded).await;
    let bomb = zip_bomb();
    assert!(bomb.len() < 4 * 1024 * 1024, "{}", bomb.len());
    let started = Instant::now();
    let answer = app
        .validate_file("?period=2026-10", NAIROBI, XLSX, bomb)
        .await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert!(
        answer.text.contains("unpacks to more than 32 MiB"),
        "{}",
        answer.text
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // 50 MB on one line: refused by its size, as any body over server.max_body_bytes.
    // The gateway answers from the declared length and closes the connection without reading
    // the rest, so the client may see its upload cut instead of the answer.
    let line = vec![b'1'; 50 * 1000 * 1000];
    let sent = app
        .post_file("/v1/repayments/validate?period=2026-10", NAIROBI, CSV, line)
        .send()
        .await;
    match sent {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }
    // Under the limit, one long line is one bad field, answered briefly.
    let mut line = b"L-1,C-1,".to_vec();
    line.extend(std::iter::repeat_n(b'9', 3 * 1024 * 1024));
    let answer = app
        .validate_file("?period=2026-10", NAIROBI, CSV, line)
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert!(answer.text.len() < 2_000, "{}", answer.text.len());
    assert!(app.stored().await.is_empty());
}

/// Rebuilds the example workbooks: `cargo test --test api write_example_workbooks -- --ignored`.
#[test]
#[ignore = "writes examples/files/*.xlsx"]
fn write_example_workbooks() {
    std::fs::write(examples().join("repayments.xlsx"), example_workbook()).unwrap();
    std::fs::write(examples().join("broken.xlsx"), broken_workbook()).unwrap();
}

fn example_workbook() -> Vec<u8> {
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet().set_name("October").unwrap();
    let money = Format::new().set_num_format("#,##0.00");
    for (column, name) in ["Loan ID", "Client ID", "Amount"].iter().enumerate() {
        sheet.write_string(0, column as u16, *name).unwrap();
    }
    sheet.write_string(1, 0, "L-1042970").unwrap();
    sheet.write_string(1, 1, "C-184729").unwrap();
    sheet.write_number_with_format(1, 2, 25.0, &money).unwrap();
    sheet.write_number(2, 0, 1043223.0).unwrap();
    sheet.write_number(2, 1, 481395.0).unwrap();
    sheet.write_number_with_format(2, 2, 40.5, &money).unwrap();
    sheet.write_string(3, 0, "L-1043301").unwrap();
    sheet.write_string(3, 1, "C-518004").unwrap();
    sheet
        .write_number_with_format(3, 2, 1200.0, &money)
        .unwrap();
    workbook.save_to_buffer().unwrap()
}

fn broken_workbook() -> Vec<u8> {
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet().set_name("October").unwrap();
    for (column, name) in ["loan_id", "client_id", "amount"].iter().enumerate() {
        sheet.write_string(0, column as u16, *name).unwrap();
    }
    sheet.write_string(1, 0, "L-1042970").unwrap();
    sheet.write_string(1, 1, "C-184729").unwrap();
    sheet.write_string(1, 2, "1,234.50").unwrap();
    sheet.write_string(2, 0, "L-1043223").unwrap();
    sheet.write_string(2, 1, "C-481395").unwrap();
    sheet.write_number(2, 2, 40.1234).unwrap();
    sheet.write_string(3, 1, "C-518004").unwrap();
    sheet.write_number(3, 2, 12.0).unwrap();
    sheet.write_string(4, 0, "L-1042970").unwrap();
    sheet.write_string(4, 1, "C-184729").unwrap();
    sheet.write_number(4, 2, 10.0).unwrap();
    sheet.write_string(5, 0, "L-1043555").unwrap();
    sheet.write_string(5, 1, "C-530012").unwrap();
    sheet.write_number(5, 2, -5.0).unwrap();
    workbook.save_to_buffer().unwrap()
}
