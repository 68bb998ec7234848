//! PostgreSQL's side of `store::rows`: its result rows read by column name and its statements' arguments
//! bound in order.

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};

use super::connection::backend;
use crate::store::rows::{Bind, Column, Param, Row};
use crate::store::StoreError;

impl Row for PgRow {
    type Error = sqlx::Error;

    fn get<T: Column>(&self, column: &'static str) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }

    fn invalid(&self, _column: &'static str, cause: BoxDynError) -> sqlx::Error {
        sqlx::Error::Decode(cause)
    }
}

impl<'v> Bind<'v> for PgArguments {
    type Error = sqlx::Error;

    fn bind<T: Param<'v>>(&mut self, value: T) -> Result<(), sqlx::Error> {
        sqlx::Arguments::add(self, value).map_err(sqlx::Error::Encode)
    }
}

/// Every row decoded by `decode` (one of `store::rows`' decoders).
pub fn all<T>(
    rows: &[PgRow],
    decode: fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(decode)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

/// The row decoded by `decode`, if there is one.
pub fn one<T>(
    row: Option<PgRow>,
    decode: fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Option<T>, StoreError> {
    row.as_ref().map(decode).transpose().map_err(backend)
}
