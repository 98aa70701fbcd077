//! Helpers for cross-crate tests.
