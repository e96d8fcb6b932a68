//! Kiva's answers to the repayments endpoint.

/// What could be read of Kiva's answer (placeholder type, the client helper replaces it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UploadResult;
