//! What the CSV and Excel readers share: a file becomes a `Table` of rows (the raw text of
//! each cell that matters, and where the row was), which becomes the same bounded JSON tree
//! the JSON path builds, so every rule is the JSON path's own; its violations are then given
//! the row's place in the file and, where a clerk needs other words than a developer, a
//! detail of their own.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{IntakeError, Violation};
use crate::domain::ColumnFormat;

/// Most fields a CSV record, or filled cells an Excel row, may have: a report has at most three
/// columns, and a spreadsheet's export rarely more than a few dozen (empty) ones.
pub(super) const MAX_FIELDS: usize = 1024;
/// Longest text one field or cell may hold: a loan or client ID has at most 100 characters
/// (400 bytes), an amount a few digits.
pub(super) const MAX_CELL_BYTES: usize = 1024;

/// The sheet, or the CSV, the rows came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Csv,
    Sheet(String),
}

/// Which column (0-based, as in the file) holds each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Columns {
    pub loan: usize,
    pub client: Option<usize>,
    pub amount: usize,
}

impl Columns {
    /// PA2's order when there is no header: loan, amount; or loan, client, amount.
    pub fn by_count(count: usize) -> Option<Self> {
        match count {
            2 => Some(Self {
                loan: 0,
                client: None,
                amount: 1,
            }),
            3 => Some(Self {
                loan: 0,
                client: Some(1),
                amount: 2,
            }),
            _ => None,
        }
    }

    fn of(&self, field: &str) -> Option<usize> {
        match field {
            "loan_id" => Some(self.loan),
            "client_id" => self.client,
            "amount" => Some(self.amount),
            _ => None,
        }
    }
}

/// One data row: its line (CSV) or row number (Excel), both 1-based as a clerk sees them.
#[derive(Debug, Default)]
pub(super) struct Row {
    pub at: u64,
    pub loan: Option<String>,
    pub client: Option<String>,
    pub amount: Option<String>,
    /// What makes the whole row unreadable (wrong number of fields, invalid UTF-8): the row
    /// then stands as `null`, which the schema refuses, and this replaces its message.
    pub unreadable: Option<String>,
    /// Per field, a message that replaces the one the rules give (e.g. a thousands separator).
    pub notes: Vec<(&'static str, String)>,
    /// Fields whose cell can't stand as text (a date, an Excel error): they stand as `false`,
    /// which the rules refuse, and their note says why.
    pub refused: Vec<&'static str>,
}

/// A cell's text, or why it can't be taken as text.
#[derive(Debug, Default)]
pub(super) struct Cell {
    pub text: String,
    pub refused: Option<String>,
}

impl Cell {
    pub fn text(text: String) -> Self {
        Self {
            text,
            refused: None,
        }
    }

    pub fn refused(text: &str, why: &str) -> Self {
        Self {
            text: text.to_owned(),
            refused: Some(why.to_owned()),
        }
    }
}

#[derive(Debug)]
pub(super) struct Table {
    pub source: Source,
    pub columns: Columns,
    pub rows: Vec<Row>,
}

/// A problem with the file as a whole (no header the rules can use, a wrong number of
/// columns): the answer names it alone, as no row can be read until it is fixed.
pub(super) fn whole_file(detail: String, at: Option<(&Source, u64)>) -> IntakeError {
    let mut violation = Violation::new("", detail);
    if let Some((source, at)) = at {
        place(&mut violation, source, at, None);
    }
    IntakeError::Invalid {
        listed: vec![violation],
        total: 1,
    }
}

/// A problem with one cell that stops the reading of the whole file (a cell far too long),
/// placed at that cell.
pub(super) fn cell_problem(detail: String, source: &Source, at: u64, column: usize) -> IntakeError {
    let mut violation = Violation::new("", detail);
    place(&mut violation, source, at, Some(column));
    IntakeError::Invalid {
        listed: vec![violation],
        total: 1,
    }
}

/// What the header names, or `None` if the row is not a header: a row is one when any of its
/// cells names a field. Names are matched case-insensitively, `_` and ` ` alike.
pub(super) fn header_columns(
    cells: &[(usize, String)],
    source: &Source,
    at: u64,
) -> Option<Result<Columns, IntakeError>> {
    let named: Vec<(usize, Option<&'static str>, &str)> = cells
        .iter()
        .map(|(column, text)| (*column, field_named(text), text.as_str()))
        .collect();
    if named.iter().all(|(_, field, _)| field.is_none()) {
        return None;
    }
    let mut found: HashMap<&'static str, usize> = HashMap::new();
    for (column, field, text) in &named {
        let problem = match field {
            None if text.trim().is_empty() => continue,
            None => format!(
                "column {} is headed {:?}, which is not a column of a repayment report: the \
                 columns are loan_id, client_id (three-column partners) and amount; remove \
                 the others",
                letters(*column),
                super::schema::truncate((*text).to_owned())
            ),
            Some(field) => match found.insert(field, *column) {
                None => continue,
                Some(first) => format!(
                    "columns {} and {} are both headed {field}: keep one",
                    letters(first),
                    letters(*column)
                ),
            },
        };
        return Some(Err(whole_file(problem, Some((source, at)))));
    }
    for field in ["loan_id", "amount"] {
        if !found.contains_key(field) {
            return Some(Err(whole_file(
                format!("the header has no {field} column"),
                Some((source, at)),
            )));
        }
    }
    Some(Ok(Columns {
        loan: found["loan_id"],
        client: found.get("client_id").copied(),
        amount: found["amount"],
    }))
}

fn field_named(text: &str) -> Option<&'static str> {
    let name = text.trim().to_ascii_lowercase().replace(' ', "_");
    match name.as_str() {
        "loan_id" | "internal_loan_id" | "loan" => Some("loan_id"),
        "client_id" | "internal_client_id" | "client" => Some("client_id"),
        "amount" | "repayment_amount" => Some("amount"),
        _ => None,
    }
}

/// The columns of a file without a header, from how many it has; the problem if the
/// partner's format can't have that many.
pub(super) fn columns_by_count(
    count: usize,
    format: Option<ColumnFormat>,
    source: &Source,
    at: u64,
) -> Result<Columns, IntakeError> {
    let expected = match format {
        Some(ColumnFormat::ThreeColumn) => {
            "a three-column partner's file has loan ID, client ID, amount"
        }
        _ => {
            "a two-column file has loan ID, amount; a three-column file loan ID, client ID, amount"
        }
    };
    match Columns::by_count(count) {
        Some(columns) if !(format == Some(ColumnFormat::ThreeColumn) && count == 2) => Ok(columns),
        _ => Err(whole_file(
            format!(
                "the file has {count} column{}; {expected}",
                if count == 1 { "" } else { "s" }
            ),
            Some((source, at)),
        )),
    }
}

/// Column letters as Excel shows them: 0 → `A`, 25 → `Z`, 26 → `AA`.
pub(super) fn letters(column: usize) -> String {
    let mut n = column + 1;
    let mut name = Vec::new();
    while n > 0 {
        let rest = (n - 1) % 26;
        name.push(b'A' + rest as u8);
        n = (n - 1) / 26;
    }
    name.reverse();
    String::from_utf8(name).expect("ASCII letters")
}

/// Refuses, with words a clerk can act on, the amount forms the rules would only call
/// invalid: thousands separators and decimal commas. Never guessed: `1,234` is asked about.
pub(super) fn amount_note(text: &str) -> Option<String> {
    let groups_of_three = |s: &str, sep: &[char]| {
        let parts: Vec<&str> = s.split(sep).collect();
        parts.len() > 1
            && (1..=3).contains(&parts[0].len())
            && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
            && parts[1..].iter().all(|p| p.len() == 3)
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let plain = |int: &str, frac: Option<&str>| {
        let int: String = int.chars().filter(char::is_ascii_digit).collect();
        match frac {
            Some(frac) => format!("{int}.{frac}"),
            None => int,
        }
    };
    let shown = super::schema::truncate(text.to_owned());
    // `1,234.50`, `1 234.50`, `1'234.50`: a separator, then a decimal point (or none).
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) if digits(frac) => (int, Some(frac)),
        _ => (text, None),
    };
    let spaces = [' ', '\u{a0}', '\u{202f}', '\'', '’'];
    if groups_of_three(int, &spaces) || (frac.is_some() && groups_of_three(int, &[','])) {
        return Some(format!(
            "amount `{shown}` uses a thousands separator: write {}",
            plain(int, frac)
        ));
    }
    if groups_of_three(int, &[',']) && int.matches(',').count() > 1 {
        return Some(format!(
            "amount `{shown}` uses a thousands separator: write {}",
            plain(int, None)
        ));
    }
    // `25,50`, `1.234,50`, `1 234,50`: a decimal comma.
    if let Some((int, frac)) = text.rsplit_once(',')
        && digits(frac)
    {
        let separated = groups_of_three(int, &['.']) || groups_of_three(int, &spaces);
        if separated || digits(int) {
            if frac.len() == 3 && !separated && int.len() <= 3 {
                return Some(format!(
                    "amount `{shown}` is ambiguous: write {} if the comma separates thousands, \
                     or {int}.{frac} if it is a decimal comma",
                    plain(text, None)
                ));
            }
            return Some(format!(
                "amount `{shown}` uses {}a decimal comma: write {}",
                if separated {
                    "a thousands separator and "
                } else {
                    ""
                },
                plain(int, Some(frac))
            ));
        }
    }
    None
}

/// The tree the JSON path would have read from the same report, the period (and, for an
/// admin key, the partner) from the query parameters.
pub(super) fn as_json(table: &Table, period: Option<&str>, partner_id: Option<&str>) -> Value {
    let mut top = Map::new();
    if let Some(period) = period {
        top.insert("period".into(), period.into());
    }
    if let Some(partner) = partner_id {
        top.insert("partner_id".into(), partner.into());
    }
    let items = table
        .rows
        .iter()
        .map(|row| {
            if row.unreadable.is_some() {
                return Value::Null;
            }
            let mut item = Map::new();
            for (field, text) in [
                ("loan_id", &row.loan),
                ("client_id", &row.client),
                ("amount", &row.amount),
            ] {
                if row.refused.contains(&field) {
                    item.insert(field.into(), Value::Bool(false));
                // An empty cell is a missing value: "amount is required", not "" is invalid.
                } else if let Some(text) = text.as_ref().filter(|t| !t.is_empty()) {
                    item.insert(field.into(), text.as_str().into());
                }
            }
            Value::Object(item)
        })
        .collect();
    top.insert("repayments".into(), Value::Array(items));
    Value::Object(top)
}

/// Gives each violation of the JSON path its place in the file, and a clerk's words where
/// the row has them.
pub(super) fn locate(table: &Table, listed: Vec<Violation>) -> Vec<Violation> {
    listed
        .into_iter()
        .map(|mut violation| {
            if violation.pointer == "/repayments" && table.rows.is_empty() {
                violation.detail = "the file has no repayment rows".into();
            }
            let Some((position, field)) = position_of(&violation.pointer) else {
                return violation;
            };
            let Some(row) = table.rows.get(position) else {
                return violation;
            };
            let note = match field {
                None => row.unreadable.clone(),
                Some(field) => row
                    .notes
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map(|(_, note)| note.clone()),
            };
            if let Some(note) = note {
                violation.detail = note;
            }
            let column = field.and_then(|f| table.columns.of(f));
            place(&mut violation, &table.source, row.at, column);
            violation
        })
        .collect()
}

fn place(violation: &mut Violation, source: &Source, at: u64, column: Option<usize>) {
    match source {
        Source::Csv => violation.line = Some(at),
        Source::Sheet(name) => {
            violation.sheet = Some(name.clone());
            violation.row = Some(at);
            if let Some(column) = column {
                let letters = letters(column);
                violation.cell = Some(format!("{letters}{at}"));
                violation.column = Some(letters);
            }
        }
    }
}

/// `(3, Some("amount"))` for `/repayments/3/amount`, `(3, None)` for `/repayments/3`.
fn position_of(pointer: &str) -> Option<(usize, Option<&str>)> {
    let rest = pointer.strip_prefix("/repayments/")?;
    let (position, field) = match rest.split_once('/') {
        Some((position, field)) => (position, Some(field)),
        None => (rest, None),
    };
    Some((position.parse().ok()?, field))
}

/// Counts rows as they are read, refusing the one past the limit (the rest is not read).
pub(super) fn push_row(
    rows: &mut Vec<Row>,
    row: Row,
    max_repayments: usize,
) -> Result<(), IntakeError> {
    if rows.len() >= max_repayments {
        return Err(IntakeError::TooManyRepayments {
            at_least: max_repayments + 1,
            max: max_repayments,
        });
    }
    rows.push(row);
    Ok(())
}

/// Fills a row's fields from its cells by column, noting the amounts a clerk must rewrite.
pub(super) fn fill_row(row: &mut Row, columns: &Columns, mut cell: impl FnMut(usize) -> Cell) {
    let fields = [
        ("loan_id", Some(columns.loan)),
        ("client_id", columns.client),
        ("amount", Some(columns.amount)),
    ];
    for (field, column) in fields {
        let Some(column) = column else { continue };
        let Cell { text, refused } = cell(column);
        if let Some(why) = refused {
            row.refused.push(field);
            row.notes.push((field, why));
        } else if field == "amount"
            && let Some(note) = amount_note(&text)
        {
            row.notes.push((field, note));
        }
        let slot = match field {
            "loan_id" => &mut row.loan,
            "client_id" => &mut row.client,
            _ => &mut row.amount,
        };
        *slot = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_letters() {
        assert_eq!(letters(0), "A");
        assert_eq!(letters(2), "C");
        assert_eq!(letters(25), "Z");
        assert_eq!(letters(26), "AA");
        assert_eq!(letters(701), "ZZ");
        assert_eq!(letters(702), "AAA");
    }

    #[test]
    fn separators_are_refused_with_what_to_write() {
        let note = |t: &str| amount_note(t).unwrap_or_default();
        assert_eq!(
            note("1,234.50"),
            "amount `1,234.50` uses a thousands separator: write 1234.50"
        );
        assert_eq!(
            note("1 234.50"),
            "amount `1 234.50` uses a thousands separator: write 1234.50"
        );
        assert_eq!(
            note("1,234,567"),
            "amount `1,234,567` uses a thousands separator: write 1234567"
        );
        assert_eq!(
            note("25,50"),
            "amount `25,50` uses a decimal comma: write 25.50"
        );
        assert_eq!(
            note("1.234,50"),
            "amount `1.234,50` uses a thousands separator and a decimal comma: write 1234.50"
        );
        assert_eq!(
            note("1,234"),
            "amount `1,234` is ambiguous: write 1234 if the comma separates thousands, or 1.234 \
             if it is a decimal comma"
        );
        for fine in ["25.00", "1234.5", "abc", "", "-5", "1e3"] {
            assert_eq!(amount_note(fine), None, "{fine}");
        }
    }
}
