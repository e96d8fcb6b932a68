//! The HTTP client.
