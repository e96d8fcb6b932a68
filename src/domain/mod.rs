//! Types an accepted report is made of. Each is built once, at the edge, by a `parse`
//! constructor; everything after intake trusts them.

mod amount;
mod identifiers;
mod period;
mod report;

pub use amount::Amount;
pub use identifiers::{ClientId, IdError, LoanId, PartnerId};
pub use period::Period;
pub use report::{
    ColumnFormat, KivaRepayment, KivaRequest, Repayment, RepaymentReport, RuleViolation,
    column_rule_violations, total,
};
