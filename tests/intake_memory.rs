//! The memory one hostile body costs the intake, measured by a counting global allocator (its
//! own test binary, so nothing else allocates through it; one test, so nothing runs beside it).
//! An 8 MiB `{"repayments":[0,0,…]}` used to cost 450 MB before its 413.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use repayment_gateway::domain::{ColumnFormat, PartnerId};
use repayment_gateway::intake::{Intake, IntakeError, MAX_LISTED_VIOLATIONS, PartnerScope};

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
