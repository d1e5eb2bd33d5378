//! changefeed ensure tests.
