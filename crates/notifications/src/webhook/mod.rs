//! Signed webhooks (Standard Webhooks).
