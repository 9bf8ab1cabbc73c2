//! Placeholder: filled in by issue 11's work.
