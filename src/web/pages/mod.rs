//! One file per page (or family of pages).

pub mod attention;
pub mod months;
pub mod reports;
pub mod sign_in;
pub mod upload;
