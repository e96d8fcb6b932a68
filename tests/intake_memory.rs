//! The memory one hostile body costs the intake, measured by a counting global allocator (its
//! own test binary, so nothing else allocates through it; its tests take turns, so nothing
//! runs beside the one measured). An 8 MiB `{"repayments":[0,0,…]}` used to cost 450 MB before
//! its 413; a 4 MiB CSV of commas 480 MB, an `.xlsx` of one 1.15 M-cell row 250 MB, and one
//! that declared 10^15 shared strings aborted the process.

#[path = "support/workbooks.rs"]
mod workbooks;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use repayment_gateway::domain::{ColumnFormat, PartnerId};
use repayment_gateway::intake::{
    FileFields, FileKind, Intake, IntakeError, MAX_LISTED_VIOLATIONS, PartnerScope,
};

/// Held by each test: the allocator's peak is the process's, so one measures at a time.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BODY_BYTES: usize = 8 * 1024 * 1024;
/// What reading one 8 MiB body may allocate beyond the body itself: the tree of at most
/// 10,000 repayments (its strings at most a copy of the body's) and their violations; well
/// under 1 MiB for the hostile shapes, about 24 MiB for 10,000 long bad lines.
const MAX_EXTRA_BYTES: usize = 32 * 1024 * 1024;

/// `head`, then `item` repeated (separated by commas) up to about 8 MiB, then `tail`.
fn hostile(head: &str, item: impl Fn(usize) -> String, tail: &str) -> Vec<u8> {
    let mut body = head.as_bytes().to_vec();
    let mut i = 0;
    while body.len() < BODY_BYTES - tail.len() - 64 {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item(i).as_bytes());
        i += 1;
    }
    body.extend_from_slice(tail.as_bytes());
    body
}

/// Reads `body` and returns the result with the most bytes allocated at once while reading.
fn measured(intake: &Intake, body: &[u8]) -> (Result<usize, IntakeError>, usize) {
    let scope = PartnerScope::One(PartnerId::parse("p1").unwrap());
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = intake.read(body, &scope).map(|r| r.repayments().len());
    let extra = PEAK.load(Ordering::Relaxed) - before;
    eprintln!(
        "{} bytes of body: {extra} bytes allocated at most",
        body.len()
    );
    (result, extra)
}

#[test]
fn hostile_8_mib_bodies_cost_a_bounded_amount_of_memory() {
    let _turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let partner = PartnerId::parse("p1").unwrap();
    let intake = Intake::new([(partner, ColumnFormat::TwoColumn)].into(), 10_000);

    let zeros = hostile(
        r#"{"period":"2026-10","repayments":["#,
        |_| "0".into(),
        "]}",
    );
    let (result, extra) = measured(&intake, &zeros);
    assert!(extra <= MAX_EXTRA_BYTES, "bare zeros: {extra} bytes");
    assert!(
        matches!(
            result,
            Err(IntakeError::TooManyRepayments { max: 10_000, .. })
        ),
        "{result:?}"
    );

    let unknown_in_a_repayment = hostile(
        r#"{"period":"2026-10","repayments":[{"loan_id":"L1","amount":1,"#,
        |i| format!(r#""p{i}":0"#),
        "}]}",
    );
    let (result, extra) = measured(&intake, &unknown_in_a_repayment);
    assert!(
        extra <= MAX_EXTRA_BYTES,
        "unknown properties: {extra} bytes"
    );
    match result {
        Err(IntakeError::Invalid { listed, total }) => {
            assert_eq!(listed.len(), MAX_LISTED_VIOLATIONS);
            assert!(total > 500_000, "{total}");
            assert_eq!(listed[0].pointer, "/repayments/0/p0");
        }
        other => panic!("{other:?}"),
    }

    let unknown_at_the_top = hostile("{", |i| format!(r#""p{i}":[0]"#), "}");
    let (result, extra) = measured(&intake, &unknown_at_the_top);
    assert!(
        extra <= MAX_EXTRA_BYTES,
        "top-level properties: {extra} bytes"
    );
    assert!(matches!(result, Err(IntakeError::Invalid { .. })));

    let array_for_an_id = hostile(
        r#"{"period":"2026-10","repayments":[{"amount":1,"loan_id":["#,
        |_| "0".into(),
        "]}]}",
    );
    let (result, extra) = measured(&intake, &array_for_an_id);
    assert!(
        extra <= MAX_EXTRA_BYTES,
        "an array for an id: {extra} bytes"
    );
    assert!(matches!(result, Err(IntakeError::Invalid { total: 1, .. })));

    let bad_lines = hostile(
        r#"{"period":"2026-10","repayments":["#,
        |i| format!(r#"{{"loan_id":"L{i}","amount":"{}"}}"#, "x".repeat(900)),
        "]}",
    );
    let (result, extra) = measured(&intake, &bad_lines);
    assert!(extra <= MAX_EXTRA_BYTES, "10,000 bad lines: {extra} bytes");
    assert!(matches!(result, Err(IntakeError::Invalid { total, .. }) if total > 10_000 / 2));
}

/// Reads `body` as a file and returns the result with the most bytes allocated at once.
fn measured_file(
    intake: &Intake,
    body: &[u8],
    kind: FileKind,
    what: &str,
) -> (Result<usize, IntakeError>, usize) {
    let scope = PartnerScope::One(PartnerId::parse("p1").unwrap());
    let fields = FileFields {
        period: Some("2026-10".into()),
        partner_id: None,
    };
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = intake
        .read_file(body, &kind, &fields, &scope)
        .map(|r| r.repayments().len());
    let extra = PEAK.load(Ordering::Relaxed) - before;
    eprintln!(
        "{what}: {} bytes of body, {extra} bytes allocated at most: {:?}",
        body.len(),
        result.as_ref().map_err(ToString::to_string)
    );
    (result, extra)
}

#[test]
fn hostile_csv_and_xlsx_files_cost_a_bounded_amount_of_memory() {
    let _turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let partner = PartnerId::parse("p1").unwrap();
    let intake = Intake::new([(partner, ColumnFormat::TwoColumn)].into(), 10_000);
    let csv = || FileKind::Csv { delimiter: None };
    let xlsx = || FileKind::Xlsx { sheet: None };
    let four_mib = 4 * 1024 * 1024;

    let mut files: Vec<(&str, Vec<u8>, FileKind)> = vec![
        ("a CSV of only commas", vec![b','; four_mib], csv()),
        (
            "a CSV whose second line is all commas",
            {
                let mut body = b"loan_id,amount\n".to_vec();
                body.resize(four_mib, b',');
                body
            },
            csv(),
        ),
        (
            "a CSV of one 4 MiB field",
            {
                let mut body = b"loan_id,amount\nL-1,".to_vec();
                body.resize(four_mib, b'9');
                body
            },
            csv(),
        ),
    ];
    let cells = "<c><v>1</v></c>".repeat(1_150_000);
    files.push((
        "an xlsx row of 1.15 M cells",
        workbooks::workbook(&format!("<row r=\"1\">{cells}</row>"), None),
        xlsx(),
    ));
    drop(cells);
    let cell = "x".repeat(30 * 1024 * 1024);
    files.push((
        "an xlsx cell of 30 MiB",
        workbooks::workbook(
            &format!(r#"<row r="1"><c r="A1" t="inlineStr"><is><t>{cell}</t></is></c></row>"#),
            None,
        ),
        xlsx(),
    ));
    drop(cell);
    let strings = "<si><t>a</t></si>".repeat(1_900_000);
    files.push((
        "an xlsx of 1.9 M shared strings",
        workbooks::workbook(
            r#"<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1"><v>1</v></c></row>"#,
            Some(&format!("<sst>{strings}</sst>")),
        ),
        xlsx(),
    ));
    drop(strings);
    files.push((
        "an xlsx of 99,000 cell formats of a 100 KiB format code",
        workbooks::with_formats(
            r#"<row r="1"><c r="A1"><v>1</v></c><c r="B1"><v>1</v></c></row>"#,
            &"0".repeat(100 * 1024),
            99_000,
        ),
        xlsx(),
    ));
    // The longest text a report's cell may hold, shared by every cell of 10,000 rows: each
    // cell gets its own copy.
    let long = "x".repeat(1_000);
    let rows: String = (1..=10_000)
        .map(|r| {
            format!(
                r#"<row r="{r}"><c r="A{r}" t="s"><v>0</v></c><c r="B{r}" t="s"><v>0</v></c></row>"#
            )
        })
        .collect();
    files.push((
        "an xlsx of 10,000 rows sharing one long string",
        workbooks::with_shared_strings(&rows, &[long.as_str()]),
        xlsx(),
    ));
    files.push((
        "an xlsx that declares 10^15 shared strings",
        workbooks::quadrillion_strings(),
        xlsx(),
    ));

    for (what, body, kind) in files {
        assert!(body.len() <= four_mib, "{what}: {} bytes", body.len());
        let (result, extra) = measured_file(&intake, &body, kind, what);
        assert!(extra <= MAX_EXTRA_BYTES, "{what}: {extra} bytes");
        assert!(result.is_err(), "{what}");
    }
}
