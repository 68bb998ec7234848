//! SQLite's side of `store::rows`: its result rows read by column name, its statements' parameters bound in
//! order, and its errors sorted into the store's.

use std::cell::Cell;

use sqlx::error::BoxDynError;

use crate::domain::{Agent, Message, Session, SessionEvent};
use crate::store::rows::{self, Bind, Column, Param, Row};
use crate::store::{SessionCounts, StoreError};

/// A rusqlite row, read by column name.
struct ByName<'a, 'stmt> {
    row: &'a rusqlite::Row<'stmt>,
    /// The column after the last one read.
    next: Cell<usize>,
}

impl<'a, 'stmt> ByName<'a, 'stmt> {
    fn new(row: &'a rusqlite::Row<'stmt>) -> Self {
        Self {
            row,
            next: Cell::new(0),
        }
    }

    /// The decoders read the columns in the order of their lists, so the column after the last one read is
    /// tried first: a lookup then costs one comparison, not rusqlite's search through every column name,
    /// which on the hottest reads (a session: 16 columns) would cost more than the read itself.
    fn index(&self, column: &str) -> rusqlite::Result<usize> {
        let statement = self.row.as_ref();
        let next = self.next.get();
        let index = if statement.column_name(next).is_ok_and(|name| name == column) {
            next
        } else {
            statement.column_index(column)?
        };
        self.next.set(index + 1);
        Ok(index)
    }
}

impl Row for ByName<'_, '_> {
    type Error = rusqlite::Error;

    fn get<T: Column>(&self, column: &str) -> rusqlite::Result<T> {
        self.row.get(self.index(column)?)
    }

    fn invalid(&self, column: &str, cause: BoxDynError) -> rusqlite::Error {
        let index = self.row.as_ref().column_index(column).unwrap_or(usize::MAX);
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, cause)
    }
}

/// `rows::session` for rusqlite's row mapping.
pub fn session(row: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    rows::session(&ByName::new(row))
}

pub fn message(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    rows::message(&ByName::new(row))
}

pub fn event(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionEvent> {
    rows::event(&ByName::new(row))
}

pub fn agent(row: &rusqlite::Row<'_>) -> rusqlite::Result<Agent> {
    rows::agent(&ByName::new(row))
}

pub fn session_counts(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionCounts> {
    rows::session_counts(&ByName::new(row))
}

/// A prepared statement's parameters, bound one after the other.
pub struct Params<'a, 'conn> {
    statement: &'a mut rusqlite::Statement<'conn>,
    bound: usize,
}

impl<'a, 'conn> Params<'a, 'conn> {
    pub fn new(statement: &'a mut rusqlite::Statement<'conn>) -> Self {
        Self {
            statement,
            bound: 0,
        }
    }

    /// Runs the statement once every parameter is bound (a cached statement would otherwise run with NULLs
    /// where a binder fell short).
    pub fn execute(self) -> rusqlite::Result<usize> {
        let expected = self.statement.parameter_count();
        if self.bound != expected {
            return Err(rusqlite::Error::InvalidParameterCount(self.bound, expected));
        }
        self.statement.raw_execute()
    }
}

impl<'v> Bind<'v> for Params<'_, '_> {
    type Error = rusqlite::Error;

    fn bind<T: Param<'v>>(&mut self, value: T) -> rusqlite::Result<()> {
        self.bound += 1;
        self.statement.raw_bind_parameter(self.bound, value)
    }
}

/// Sorts a SQLite error into "the database cannot serve this right now" (503: a full disk, a file that
/// became read-only or unreadable, a lock held too long by another process) and anything else (500).
pub fn store_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(
            DiskFull
            | ReadOnly
            | SystemIoFailure
            | CannotOpen
            | PermissionDenied
            | DatabaseBusy
            | DatabaseLocked
            | FileLockingProtocolFailed
            | OutOfMemory,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn a_full_disk_or_a_read_only_file_is_unavailable_and_corruption_is_not() {
        use rusqlite::ffi;
        for (code, unavailable) in [
            (ffi::SQLITE_FULL, true),
            (ffi::SQLITE_READONLY, true),
            (ffi::SQLITE_IOERR_WRITE, true),
            (ffi::SQLITE_CANTOPEN, true),
            (ffi::SQLITE_BUSY, true),
            (ffi::SQLITE_CORRUPT, false),
            (ffi::SQLITE_CONSTRAINT, false),
            (ffi::SQLITE_ERROR, false),
        ] {
            match store_error(sqlite(code)) {
                StoreError::Unavailable(_) => assert!(unavailable, "{code}"),
                StoreError::Backend(_) => assert!(!unavailable, "{code}"),
            }
        }
    }

    /// Read by name, a row decodes whatever the order of its columns.
    #[test]
    fn columns_are_read_by_name_in_any_order() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let agent = conn
            .query_row(
                "SELECT 7 AS created_at, '{}' AS session_defaults, X'00112233445566778899AABBCCDDEEFF' AS id, \
                 '{\"type\":\"echo\"}' AS backend, 'a' AS name",
                [],
                super::agent,
            )
            .unwrap();
        assert_eq!(agent.name, "a");
        assert_eq!(agent.created_at.timestamp_millis(), 7);
        assert_eq!(agent.id.as_bytes()[15], 0xff);
    }
}
