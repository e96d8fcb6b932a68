//! Workbooks written entry by entry as raw XML, so they can say what `rust_xlsxwriter` never
//! would: a shared-string table that declares a quadrillion strings, an index of -1, a row of a
//! million cells. Shared by the API tests and the memory test.

#![allow(dead_code)]

use std::io::Write;

/// The `<sheetData>` rows given, and a shared-string table when `shared` is given (the whole
/// `sst` element), as the one sheet `Sheet1` of a workbook.
pub fn workbook(rows: &str, shared: Option<&str>) -> Vec<u8> {
    let sheet = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{rows}</sheetData></worksheet>"#
    );
    let mut entries = vec![
        ("_rels/.rels", RELS.as_bytes().to_vec()),
        ("xl/workbook.xml", WORKBOOK.as_bytes().to_vec()),
        (
            "xl/_rels/workbook.xml.rels",
            WORKBOOK_RELS.as_bytes().to_vec(),
        ),
        ("xl/worksheets/sheet1.xml", sheet.into_bytes()),
    ];
    if let Some(shared) = shared {
        let shared = format!(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{shared}"#);
        entries.push(("xl/sharedStrings.xml", shared.into_bytes()));
    }
    zipped(&entries)
}

/// A workbook of the rows given whose `xl/styles.xml` has `formats` cell formats, each of the
/// number format `code` (calamine gives each format its own copy of the code).
pub fn with_formats(rows: &str, code: &str, formats: usize) -> Vec<u8> {
    let mut bytes = workbook_entries(rows);
    let xfs = r#"<xf numFmtId="164" fontId="0" fillId="0" borderId="0"/>"#.repeat(formats);
    let styles = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><numFmts count="1"><numFmt numFmtId="164" formatCode="{code}"/></numFmts><cellXfs count="{formats}">{xfs}</cellXfs></styleSheet>"#
    );
    bytes.push(("xl/styles.xml", styles.into_bytes()));
    zipped(&bytes)
}

fn workbook_entries(rows: &str) -> Vec<(&'static str, Vec<u8>)> {
    let sheet = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{rows}</sheetData></worksheet>"#
    );
    vec![
        ("_rels/.rels", RELS.as_bytes().to_vec()),
        ("xl/workbook.xml", WORKBOOK.as_bytes().to_vec()),
        (
            "xl/_rels/workbook.xml.rels",
            WORKBOOK_RELS.as_bytes().to_vec(),
        ),
        ("xl/worksheets/sheet1.xml", sheet.into_bytes()),
    ]
}

/// `workbook` with a shared-string table of `strings`, in order.
pub fn with_shared_strings(rows: &str, strings: &[&str]) -> Vec<u8> {
    let items: String = strings
        .iter()
        .map(|s| format!("<si><t>{s}</t></si>"))
        .collect();
    workbook(
        rows,
        Some(&format!(
            r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="{n}" uniqueCount="{n}">{items}</sst>"#,
            n = strings.len()
        )),
    )
}

/// The 1.9 KB workbook of the issue: a good report whose shared-string table declares
/// 10^15 unique strings, which calamine 0.38 reserved room for (24 PB) and aborted.
pub fn quadrillion_strings() -> Vec<u8> {
    let rows = r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row><row r="2"><c r="A2" t="s"><v>3</v></c><c r="B2" t="s"><v>4</v></c><c r="C2"><v>25</v></c></row>"#;
    workbook(
        rows,
        Some(
            r#"<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="5" uniqueCount="1000000000000000"><si><t>loan_id</t></si><si><t>client_id</t></si><si><t>amount</t></si><si><t>L-1</t></si><si><t>C-1</t></si></sst>"#,
        ),
    )
}

/// A zip of the entries, deflated at the fastest level (the hostile ones are large and very
/// repetitive).
pub fn zipped(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1));
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

const RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#;

const WORKBOOK: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"#;

const WORKBOOK_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>"#;
