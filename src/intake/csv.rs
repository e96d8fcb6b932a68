//! `text/csv` → `Table`: UTF-8 with or without BOM, `,` `;` or tab (given, or detected from
//! the first line), CRLF, LF or CR line ends (mixed too), quoted fields, a header recognised by
//! name or PA2's column order. The body is already bounded by `server.max_body_bytes`; the csv reader holds one
//! record at a time, and rows are counted while read. A record's size is bounded first: a
//! 4 MiB line of 4 million empty fields cost the csv reader and this one 480 MB, so `check_shape`
//! reads the body once with the csv reader's own engine into a fixed buffer, refusing the
//! first record of more than `MAX_FIELDS` fields or field longer than `MAX_CELL_BYTES`.

use super::IntakeError;
use super::files::{self, MAX_CELL_BYTES, MAX_FIELDS, Row, Source, Table};
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
    check_shape(body, delimiter)?;
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
    let mut lines = Lines::new(body);
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
        let start = record.position().map_or(0, |p| p.byte());
        let line = lines.line_at(usize::try_from(start).unwrap_or(usize::MAX));
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

/// Refuses the first record with more than `MAX_FIELDS` fields or a field longer than
/// `MAX_CELL_BYTES`, naming the line it starts on, without holding more than one field.
fn check_shape(body: &[u8], delimiter: u8) -> Result<(), IntakeError> {
    use csv_core::ReadFieldResult;
    let mut reader = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
    let mut field = [0u8; MAX_CELL_BYTES + 1];
    let mut input = body;
    let mut fields = 0;
    let mut len = 0;
    // Where the record starts: its line is counted only for the one refused.
    let mut start = 0;
    let line_of = |start: usize| Lines::new(body).line_at(start);
    loop {
        let (result, read, written) = reader.read_field(input, &mut field[len..]);
        input = &input[read..];
        len += written;
        match result {
            ReadFieldResult::InputEmpty => {}
            ReadFieldResult::OutputFull => {
                let line = line_of(start);
                return Err(files::whole_file(
                    format!(
                        "field {} of line {line} is longer than {MAX_CELL_BYTES} bytes: a loan \
                         ID or client ID has at most 100 characters and an amount a few digits; \
                         a quote (\") left open joins the lines after it into one field",
                        fields + 1
                    ),
                    Some((&Source::Csv, line)),
                ));
            }
            ReadFieldResult::Field { record_end } => {
                fields += 1;
                len = 0;
                if fields > MAX_FIELDS {
                    let line = line_of(start);
                    return Err(files::whole_file(
                        format!(
                            "line {line} has more than {MAX_FIELDS} fields; a report has three \
                             columns at most: delete the empty columns after them"
                        ),
                        Some((&Source::Csv, line)),
                    ));
                }
                if record_end {
                    fields = 0;
                    start = body.len() - input.len();
                }
            }
            ReadFieldResult::End => return Ok(()),
        }
    }
}

/// Line numbers as an editor shows them, for records met in order: a line ends at `\r\n`,
/// `\n` or a lone `\r`. The csv reader's own count is one short on `\r\n` and `\r` files
/// (what Excel on Windows writes), so lines are counted here from the records' byte offsets,
/// each byte once.
struct Lines<'a> {
    body: &'a [u8],
    counted_to: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            counted_to: 0,
            line: 1,
        }
    }

    /// The line of the record that starts at byte `start`: past the line ends before its
    /// first byte (a reader may place a record at the `\n` of the `\r\n` before it, or at
    /// blank lines it skips). A quoted field's newlines count for the records after it.
    fn line_at(&mut self, start: usize) -> u64 {
        let start = start.min(self.body.len());
        let first = start
            + self.body[start..]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
        if first > self.counted_to {
            let between = &self.body[self.counted_to..first];
            let ends = between
                .iter()
                .enumerate()
                .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && between.get(i + 1) != Some(&b'\n')))
                .count();
            self.line += ends as u64;
            self.counted_to = first;
        }
        self.line
    }
}

/// The delimiter the first line uses most outside quotes; on a tie `;` or tab before `,`,
/// which also appears in numbers (`25,50`). A file of one column reads as `,`.
fn detect_delimiter(body: &[u8]) -> u8 {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in body {
        match b {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted && counts.iter().any(|&c| c > 0) => break,
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
