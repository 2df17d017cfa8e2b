//! End-to-end tests of search.
