//! SQLite's side of `store::rows`: its result rows read by column name, its statements' parameters bound in
//! order, and its errors sorted into the store's.

use std::cell::{Cell, RefCell};

use sqlx::error::BoxDynError;

use crate::domain::{Agent, Delivery, IdempotencyRecord, Message, Session, SessionEvent, Webhook};
use crate::store::rows::{self, Bind, Column, Param, Row};
use crate::store::{SessionCounts, StoreError};

/// Most columns a record reads (a session's), the size of a `Layout`.
const MAX_COLUMNS: usize = 16;

/// Where one query's columns are, in the order its decoder reads them, learnt from its first row: every row
/// of one statement has the same columns, so later rows find theirs without asking SQLite.
struct Layout {
    known: RefCell<[(&'static str, usize); MAX_COLUMNS]>,
    len: Cell<usize>,
}

impl Layout {
    fn new() -> Self {
        Self {
            known: RefCell::new([("", 0); MAX_COLUMNS]),
            len: Cell::new(0),
        }
    }

    /// Where an earlier row found `column`, if it was that row's `nth` read too.
    fn learnt(&self, nth: usize, column: &str) -> Option<usize> {
        let known = self.known.borrow();
        match known[..self.len.get()].get(nth) {
            Some(&(name, index)) if name == column => Some(index),
            _ => None,
        }
    }

    /// Keeps where the first row found its `nth` read.
    fn learn(&self, nth: usize, column: &'static str, index: usize) {
        if nth == self.len.get() && nth < MAX_COLUMNS {
            self.known.borrow_mut()[nth] = (column, index);
            self.len.set(nth + 1);
        }
    }
}

/// A rusqlite row, read by column name.
struct ByName<'a, 'stmt> {
    row: &'a rusqlite::Row<'stmt>,
    layout: &'a Layout,
    /// How many columns the decoder has read so far.
    read: Cell<usize>,
    /// The column after the last one read.
    next: Cell<usize>,
}

impl<'a, 'stmt> ByName<'a, 'stmt> {
    fn new(row: &'a rusqlite::Row<'stmt>, layout: &'a Layout) -> Self {
        Self {
            row,
            layout,
            read: Cell::new(0),
            next: Cell::new(0),
        }
    }

    /// Rusqlite finds a column by name by comparing it with every column's name, through SQLite, on every
    /// row: more than the read itself on the hottest reads (a session has 16 columns). So a row of a query
    /// whose first row was read takes the column the first row found under that name; a first row tries the
    /// column after the last one read first, which is where the decoders, reading in the order of their
    /// column lists, find it.
    fn index(&self, column: &'static str) -> rusqlite::Result<usize> {
        let nth = self.read.get();
        self.read.set(nth + 1);
        let index = match self.layout.learnt(nth, column) {
            Some(index) => index,
            None => {
                let index = self.look_up(column)?;
                self.layout.learn(nth, column, index);
                index
            }
        };
        self.next.set(index + 1);
        Ok(index)
    }

    fn look_up(&self, column: &str) -> rusqlite::Result<usize> {
        let statement = self.row.as_ref();
        let next = self.next.get();
        if statement.column_name(next).is_ok_and(|name| name == column) {
            Ok(next)
        } else {
            statement.column_index(column)
        }
    }
}

impl Row for ByName<'_, '_> {
    type Error = rusqlite::Error;

    fn get<T: Column>(&self, column: &'static str) -> rusqlite::Result<T> {
        self.row.get(self.index(column)?)
    }

    fn invalid(&self, column: &'static str, cause: BoxDynError) -> rusqlite::Error {
        let index = self.row.as_ref().column_index(column).unwrap_or(usize::MAX);
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, cause)
    }
}

/// Decoders for rusqlite's row mapping, one a query (each learns its query's columns): `rows::session`, ….
pub fn session() -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    let layout = Layout::new();
    move |row| rows::session(&ByName::new(row, &layout))
}

pub fn message() -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let layout = Layout::new();
    move |row| rows::message(&ByName::new(row, &layout))
}

pub fn event_with_horizon(
) -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<(SessionEvent, i64)> {
    let layout = Layout::new();
    move |row| rows::event_with_horizon(&ByName::new(row, &layout))
}

pub fn agent() -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<Agent> {
    let layout = Layout::new();
    move |row| rows::agent(&ByName::new(row, &layout))
}

pub fn webhook() -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<Webhook> {
    let layout = Layout::new();
    move |row| rows::webhook(&ByName::new(row, &layout))
}

pub fn delivery() -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let layout = Layout::new();
    move |row| rows::delivery(&ByName::new(row, &layout))
}

pub fn session_counts() -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<SessionCounts> {
    let layout = Layout::new();
    move |row| rows::session_counts(&ByName::new(row, &layout))
}

pub fn idempotency_record() -> impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<IdempotencyRecord>
{
    let layout = Layout::new();
    move |row| rows::idempotency_record(&ByName::new(row, &layout))
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
                super::agent(),
            )
            .unwrap();
        assert_eq!(agent.name, "a");
        assert_eq!(agent.created_at.timestamp_millis(), 7);
        assert_eq!(agent.id.as_bytes()[15], 0xff);
    }

    /// The rows after the first take the columns the first row found, and still read each by its name.
    #[test]
    fn every_row_of_a_query_decodes_whole() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let agents: Vec<Agent> = conn
            .prepare(
                "SELECT X'00112233445566778899AABBCCDDEEFF' AS id, 'a' AS name, '{\"type\":\"echo\"}' AS backend, \
                 '{}' AS session_defaults, 1 AS created_at \
                 UNION ALL SELECT X'FFEEDDCCBBAA99887766554433221100', 'b', '{\"type\":\"echo\"}', '{}', 2",
            )
            .unwrap()
            .query_map([], super::agent())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let names: Vec<_> = agents
            .iter()
            .map(|a| (a.name.as_str(), a.created_at.timestamp_millis()))
            .collect();
        assert_eq!(names, [("a", 1), ("b", 2)]);
        assert_eq!(agents[1].id.as_bytes()[0], 0xff);
    }
}
