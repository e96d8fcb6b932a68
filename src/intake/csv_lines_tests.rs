//! The line each CSV row is reported at, as an editor numbers lines: a line ends at `\r\n`,
//! `\n` or a lone `\r` (Excel on Windows writes `\r\n`, old Mac exports `\r`); a row is at the
//! line it starts on, and a quoted field's newlines count for the rows after it.

use super::csv::read;

/// The line of each row read, and of the first problem row (an amount that is not a number).
fn lines(body: &[u8]) -> Vec<u64> {
    read(body, None, None, 100)
        .expect("the file reads")
        .rows
        .iter()
        .map(|r| r.at)
        .collect()
}

/// The one problem of a file refused whole.
fn detail(body: &[u8]) -> String {
    match read(body, None, None, 100) {
        Err(super::IntakeError::Invalid { listed, .. }) => listed[0].detail.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const ROWS: [&str; 5] = [
    "L-1,C-1,1.00",
    "L-2,C-2,2.00",
    "L-3,C-3,3.00",
    "L-4,C-4,4.00",
    "L-5,C-5,not-a-number",
];

fn file(end: &str) -> Vec<u8> {
    let mut text = format!("loan_id,client_id,amount{end}");
    for row in ROWS {
        text.push_str(row);
        text.push_str(end);
    }
    text.into_bytes()
}

#[test]
fn a_row_is_at_its_line_whatever_ends_the_lines() {
    // The bad amount is on line 6 in every editor.
    for end in ["\n", "\r\n", "\r"] {
        assert_eq!(lines(&file(end)), [2, 3, 4, 5, 6], "{end:?}");
    }
}

#[test]
fn mixed_line_ends_and_blank_lines_count_as_an_editor_counts_them() {
    let body = b"loan_id,client_id,amount\r\nL-1,C-1,1\nL-2,C-2,2\r\r\nL-3,C-3,3\r\n\r\nL-4,C-4,4\rL-5,C-5,5";
    // header 1, L-1 2, L-2 3, blank 4, L-3 5, blank 6, L-4 7, L-5 8.
    assert_eq!(lines(body), [2, 3, 5, 7, 8]);
}

#[test]
fn a_row_with_a_quoted_newline_is_at_the_line_it_starts_on() {
    for end in ["\n", "\r\n", "\r"] {
        let body = format!(
            "loan_id,client_id,amount{end}L-1,\"C-1{end}second line\",1{end}L-2,C-2,x{end}\"L-3\",C-3,3{end}"
        );
        assert_eq!(lines(body.as_bytes()), [2, 4, 5], "{end:?}");
    }
}

#[test]
fn a_file_with_a_bom_and_no_header_starts_at_line_1() {
    let body = b"\xEF\xBB\xBFL-1,C-1,1\r\nL-2,C-2,2\r\n";
    assert_eq!(lines(body), [1, 2]);
}

#[test]
fn a_row_too_wide_names_its_line_on_crlf_files() {
    let mut body = b"loan_id,client_id,amount\r\nL-1,C-1,1\r\nL-2,C-2,2\r\n".to_vec();
    body.extend_from_slice(&[b','; super::files::MAX_FIELDS + 1]);
    body.extend_from_slice(b"\r\n");
    let error = detail(&body);
    assert!(error.contains("line 4 has more than"), "{error}");
    let cell = "x".repeat(super::files::MAX_CELL_BYTES + 1);
    let body = format!("loan_id,client_id,amount\rL-1,C-1,1\r\"L\rM\",C,1\rL-3,{cell},1\r");
    let error = detail(body.as_bytes());
    assert!(error.contains("field 2 of line 5"), "{error}");
}
