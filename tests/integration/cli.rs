//! Command-line tests (filled below).
