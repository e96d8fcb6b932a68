//! `text/csv` → `Table`: UTF-8 with or without BOM, `,` `;` or tab (given, or detected from
//! the first line), CRLF or LF, quoted fields, a header recognised by name or PA2's column
//! order. The body is already bounded by `server.max_body_bytes`; the csv reader holds one
//! record at a time, and rows are counted while read.

use super::IntakeError;
use super::files::{self, Row, Source, Table};
use crate::domain::ColumnFormat;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A delimiter as given in a `delimiter` parameter: the character itself or its name.
pub fn delimiter_named(text: &str) -> Option<u8> {
    match text.trim().to_ascii_lowercase().as_str() {
        "," | "comma" => Some(b','),
        ";" | "semicolon" => Some(b';'),
        "\t" | "tab" | "\\t" => Some(b'\t'),
        _ => None,
    }
}

pub(super) fn read(
    body: &[u8],
    delimiter: Option<u8>,
    format: Option<ColumnFormat>,
    max_repayments: usize,
) -> Result<Table, IntakeError> {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    let delimiter = delimiter.unwrap_or_else(|| detect_delimiter(body));
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(body);
    let source = Source::Csv;
    // The columns, and the file's width: the header's, or the first row's.
    let mut layout: Option<(files::Columns, usize)> = None;
    let mut rows = Vec::new();
    let mut record = ::csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            // Reading from memory, with flexible records, the csv reader has no error left to
            // give; should one come, it is the file's.
            Err(e) => {
                return Err(files::whole_file(
                    format!("the file can't be read: {e}"),
                    None,
                ));
            }
        }
        let line = record.position().map_or(0, ::csv::Position::line);
        let fields: Result<Vec<&str>, _> = record
            .iter()
            .map(|f| std::str::from_utf8(f).map(str::trim))
            .collect();
        let Ok(fields) = fields else {
            let unreadable = format!("invalid UTF-8 on line {line}: save as *CSV UTF-8* in Excel");
            if layout.is_none() {
                return Err(files::whole_file(unreadable, Some((&source, line))));
            }
            let row = Row {
                at: line,
                unreadable: Some(unreadable),
                ..Row::default()
            };
            files::push_row(&mut rows, row, max_repayments)?;
            continue;
        };
        // Blank lines, and the `,,` lines spreadsheets leave under the data, are not rows.
        let used = fields.len() - fields.iter().rev().take_while(|f| f.is_empty()).count();
        if used == 0 {
            continue;
        }
        let Some((columns, width)) = layout else {
            let cells: Vec<(usize, String)> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| (i, (*f).to_owned()))
                .collect();
            match files::header_columns(&cells, &source, line) {
                Some(found) => layout = Some((found?, used)),
                None => {
                    let found = files::columns_by_count(used, format, &source, line)?;
                    layout = Some((found, used));
                    push(&mut rows, &found, line, &fields, max_repayments)?;
                }
            }
            continue;
        };
        if used > width {
            let row = Row {
                at: line,
                unreadable: Some(format!(
                    "line {line} has {used} fields where the file has {width}: a value that \
                     contains the delimiter must be in quotes"
                )),
                ..Row::default()
            };
            files::push_row(&mut rows, row, max_repayments)?;
            continue;
        }
        push(&mut rows, &columns, line, &fields, max_repayments)?;
    }
    Ok(Table {
        source,
        columns: layout.map_or(
            files::Columns {
                loan: 0,
                client: None,
                amount: 1,
            },
            |(columns, _)| columns,
        ),
        rows,
    })
}

/// The delimiter the first line uses most outside quotes; on a tie `;` or tab before `,`,
/// which also appears in numbers (`25,50`). A file of one column reads as `,`.
fn detect_delimiter(body: &[u8]) -> u8 {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in body {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted && counts.iter().any(|&c| c > 0) => break,
            b'\t' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b',' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let candidates = [b'\t', b';', b','];
    let best = counts.iter().copied().max().unwrap_or(0);
    if best == 0 {
        return b',';
    }
    candidates[counts.iter().position(|&c| c == best).unwrap_or(2)]
}

fn push(
    rows: &mut Vec<Row>,
    columns: &files::Columns,
    line: u64,
    fields: &[&str],
    max_repayments: usize,
) -> Result<(), IntakeError> {
    let mut row = Row {
        at: line,
        ..Row::default()
    };
    files::fill_row(&mut row, columns, |i| {
        files::Cell::text(fields.get(i).copied().unwrap_or_default().to_owned())
    });
    files::push_row(rows, row, max_repayments)
}
