//! Excel workbooks (`.xlsx`) → `Table`, with `calamine`, one cell at a time.
//!
//! An `.xlsx` is a zip: a 4 MiB body can unpack to gigabytes, and its parts can declare counts
//! calamine believes. Before calamine sees it, `xlsx_scan` unpacks and reads every part within
//! bounds. The sheet is then read with calamine's cell reader, never as a `Range`: a range is
//! allocated over the cells' bounding box, and a sheet with one cell at `A1` and one at
//! `XFD1048576` would be 17 billion cells. A row is refused at its `MAX_FIELDS`-th filled cell,
//! and a cell longer than `MAX_CELL_BYTES` before its text is copied.
//!
//! Numbers: calamine reads a numeric cell's stored text into an `f64`; Rust prints an `f64`
//! as the shortest text that reads back as the same `f64`, which for any text Excel stores
//! with at most 15 significant digits is that very text (`25.5`, `1042970`). A stored value
//! with more digits than the amount rule allows (`0.30000000000000004`) stays that long and
//! is refused by the rule, never rounded.

use std::io::Cursor;

use calamine::{DataRef, Reader, Xlsx};

use super::IntakeError;
use super::files::{self, Cell, Columns, MAX_CELL_BYTES, MAX_FIELDS, Row, Source, Table};
use crate::domain::ColumnFormat;

/// Most bytes of text the report's cells may hold in all.
const MAX_KEPT_BYTES: usize = 4 * 1024 * 1024;

pub(super) fn read(
    body: &[u8],
    sheet: Option<&str>,
    format: Option<ColumnFormat>,
    max_repayments: usize,
) -> Result<Table, IntakeError> {
    super::xlsx_scan::check(body, max_repayments)?;
    let mut workbook = Xlsx::new(Cursor::new(body)).map_err(|e| not_a_workbook(&e))?;
    let names = workbook.sheet_names();
    let name = match sheet {
        Some(wanted) => names
            .iter()
            .find(|n| *n == wanted)
            .cloned()
            .ok_or_else(|| {
                files::whole_file(
                    format!(
                        "the workbook has no sheet named {wanted:?}; its sheets are {}",
                        names
                            .iter()
                            .take(10)
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None,
                )
            })?,
        None => names
            .first()
            .cloned()
            .ok_or_else(|| files::whole_file("the workbook has no sheets".into(), None))?,
    };
    let source = Source::Sheet(name.clone());
    let mut cells = workbook
        .worksheet_cells_reader(&name)
        .map_err(|e| not_a_workbook(&e))?;

    let mut sheet = Sheet {
        source: &source,
        format,
        max_repayments,
        layout: None,
        rows: Vec::new(),
        kept: 0,
    };
    // The filled cells of the row being read, by column.
    let mut current: Option<(u32, Vec<(usize, Cell)>)> = None;
    while let Some(cell) = cells.next_cell().map_err(|e| not_a_workbook(&e))? {
        let (row, column) = cell.get_position();
        let at = u64::from(row) + 1;
        if let Some(len) = long_text(cell.get_value()) {
            return Err(files::cell_problem(
                format!(
                    "cell {}{at} holds {len} bytes of text, more than {MAX_CELL_BYTES} bytes: a \
                     loan ID or client ID has at most 100 characters and an amount a few digits; \
                     is this the report's sheet?",
                    files::letters(column as usize)
                ),
                &source,
                at,
                column as usize,
            ));
        }
        let Some(value) = text_of(cell.get_value()) else {
            continue;
        };
        match &mut current {
            Some((at_row, filled)) if *at_row == row => {
                if filled.len() >= MAX_FIELDS {
                    return Err(files::whole_file(
                        format!(
                            "row {at} has more than {MAX_FIELDS} filled cells; a report has \
                             three columns at most: clear the others, or move them to another \
                             sheet"
                        ),
                        Some((&source, at)),
                    ));
                }
                filled.push((column as usize, value));
            }
            _ => {
                if let Some((at, filled)) = current.take() {
                    sheet.row(u64::from(at) + 1, filled)?;
                }
                current = Some((row, vec![(column as usize, value)]));
            }
        }
    }
    if let Some((at, filled)) = current.take() {
        sheet.row(u64::from(at) + 1, filled)?;
    }
    let columns = sheet.layout.map_or(
        Columns {
            loan: 0,
            client: None,
            amount: 1,
        },
        |(columns, _)| columns,
    );
    let rows = sheet.rows;
    Ok(Table {
        source,
        columns,
        rows,
    })
}

struct Sheet<'a> {
    source: &'a Source,
    format: Option<ColumnFormat>,
    max_repayments: usize,
    /// The columns, and all the columns the header (or first row) fills.
    layout: Option<(Columns, Vec<usize>)>,
    rows: Vec<Row>,
    /// Bytes of cell text kept in `rows` so far.
    kept: usize,
}

impl Sheet<'_> {
    /// One row of the sheet (1-based, as Excel shows it) with its filled cells.
    fn row(&mut self, at: u64, filled: Vec<(usize, Cell)>) -> Result<(), IntakeError> {
        let Some((_, used)) = &self.layout else {
            let texts: Vec<(usize, String)> = filled
                .iter()
                .map(|(column, cell)| (*column, cell.text.clone()))
                .collect();
            let used: Vec<usize> = filled.iter().map(|(column, _)| *column).collect();
            let columns = match files::header_columns(&texts, self.source, at) {
                Some(found) => found?,
                None => {
                    let by_count =
                        files::columns_by_count(used.len(), self.format, self.source, at)?;
                    // PA2's order, over the columns the first row fills (not necessarily A…).
                    let columns = Columns {
                        loan: used[by_count.loan],
                        client: by_count.client.map(|i| used[i]),
                        amount: used[by_count.amount],
                    };
                    self.layout = Some((columns, used));
                    return self.data(at, filled);
                }
            };
            self.layout = Some((columns, used));
            return Ok(());
        };
        if let Some((outside, _)) = filled.iter().find(|(column, _)| !used.contains(column)) {
            let row = Row {
                at,
                unreadable: Some(format!(
                    "row {at} has a value in column {}, outside the report's columns: remove \
                     it, or move it to another sheet",
                    files::letters(*outside)
                )),
                ..Row::default()
            };
            return files::push_row(&mut self.rows, row, self.max_repayments);
        }
        self.data(at, filled)
    }

    fn data(&mut self, at: u64, mut filled: Vec<(usize, Cell)>) -> Result<(), IntakeError> {
        let (columns, _) = self.layout.as_ref().expect("the layout is known");
        let mut row = Row {
            at,
            ..Row::default()
        };
        files::fill_row(&mut row, columns, |column| {
            filled
                .iter_mut()
                .find(|(c, _)| *c == column)
                .map(|(_, cell)| std::mem::take(cell))
                .unwrap_or_default()
        });
        // Each cell is a copy, however many cells share one string: a 1,000-byte string in
        // 20,000 cells was 65 MB by the time the rules had read it.
        self.kept += [&row.loan, &row.client, &row.amount]
            .iter()
            .filter_map(|text| text.as_ref().map(String::len))
            .sum::<usize>();
        if self.kept > MAX_KEPT_BYTES {
            return Err(files::whole_file(
                format!(
                    "the report's cells hold more than {} MiB of text by row {at}, where a \
                     report of 10,000 rows holds well under 1 MiB: is this the report's sheet?",
                    MAX_KEPT_BYTES / (1024 * 1024)
                ),
                Some((self.source, at)),
            ));
        }
        files::push_row(&mut self.rows, row, self.max_repayments)
    }
}

/// The length of a cell's text when it is longer than any report's cell may be.
fn long_text(value: &DataRef<'_>) -> Option<usize> {
    let len = match value {
        DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => s.trim().len(),
        DataRef::SharedString(s) => s.trim().len(),
        _ => 0,
    };
    (len > MAX_CELL_BYTES).then_some(len)
}

/// A cell as the text the JSON path would have had; `None` for an empty one.
fn text_of(value: &DataRef<'_>) -> Option<Cell> {
    let text = |t: String| Some(Cell::text(t));
    match value {
        DataRef::Empty => None,
        DataRef::String(s) if s.trim().is_empty() => None,
        DataRef::SharedString(s) if s.trim().is_empty() => None,
        DataRef::String(s) => text(s.trim().to_owned()),
        DataRef::SharedString(s) => text(s.trim().to_owned()),
        DataRef::Int(n) => text(n.to_string()),
        // Shortest round trip: `1042970.0` prints as `1042970`, `25.5` as `25.5`.
        DataRef::Float(n) => text(n.to_string()),
        DataRef::Bool(b) => Some(Cell::refused(
            if *b { "TRUE" } else { "FALSE" },
            "the cell holds TRUE or FALSE, not a loan ID, client ID or amount",
        )),
        DataRef::DateTime(d) => Some(Cell::refused(
            &d.as_f64().to_string(),
            "the cell is formatted as a date or time: format the column as Number (amounts) \
             or Text (IDs)",
        )),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => Some(Cell::refused(
            s,
            "the cell holds a date or time: format the column as Number (amounts) or Text (IDs)",
        )),
        DataRef::Error(e) => Some(Cell::refused(
            &e.to_string(),
            &format!("the cell shows the Excel error {e}: fix the formula or type the value"),
        )),
    }
}

fn not_a_workbook(error: &dyn std::fmt::Display) -> IntakeError {
    IntakeError::MalformedFile(format!(
        "the body is not an Excel workbook (.xlsx) that can be read: {}",
        super::schema::truncate(error.to_string())
    ))
}
