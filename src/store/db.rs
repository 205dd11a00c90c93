//! One connection type for both backends. Store code is written once, in SQL both SQLite
//! and PostgreSQL accept, with `?N` placeholders (rewritten to `$N` for PostgreSQL); the few
//! statements that differ ask `dialect()`. Calls run on the blocking pool: a PostgreSQL
//! statement is driven to completion there on the runtime's handle, so store code stays
//! synchronous and a closure is one unit of work on one connection.

use std::ops::Deref;

use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement parameter, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

pub trait ToParam {
    fn param(&self) -> Param<'_>;
}

impl ToParam for str {
    fn param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToParam for String {
    fn param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToParam for [u8] {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for Vec<u8> {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl<const N: usize> ToParam for [u8; N] {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for bool {
    fn param(&self) -> Param<'_> {
        Param::Int(*self as i64)
    }
}
impl ToParam for f64 {
    fn param(&self) -> Param<'_> {
        Param::Real(*self)
    }
}
macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl ToParam for $t {
            fn param(&self) -> Param<'_> {
                Param::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u64, usize, u16, u8);
impl<T: ToParam + ?Sized> ToParam for &T {
    fn param(&self) -> Param<'_> {
        (**self).param()
    }
}
impl<T: ToParam> ToParam for Option<T> {
    fn param(&self) -> Param<'_> {
        match self {
            Some(v) => v.param(),
            None => Param::Null,
        }
    }
}

/// The parameters of one statement: `params![a, b]`, or an array of one type.
pub trait Params {
    fn list(&self) -> Vec<Param<'_>>;
}

impl Params for &[&dyn ToParam] {
    fn list(&self) -> Vec<Param<'_>> {
        self.iter().map(|p| p.param()).collect()
    }
}

impl<T: ToParam, const N: usize> Params for [T; N] {
    fn list(&self) -> Vec<Param<'_>> {
        self.iter().map(|p| p.param()).collect()
    }
}

/// `params![a, b]`: the parameters of one statement.
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::db::ToParam] };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::db::ToParam),+] as &[&dyn $crate::store::db::ToParam]
    };
}
pub(crate) use params;

/// A column value as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

pub trait FromValue: Sized {
    fn from_value(v: Value) -> Result<Self, String>;
}

impl FromValue for Value {
    fn from_value(v: Value) -> Result<Self, String> {
        Ok(v)
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            Value::Null => Err("expected bytes, found NULL".into()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Real(r) => Ok(r),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl FromValue for bool {
    fn from_value(v: Value) -> Result<Self, String> {
        i64::from_value(v).map(|i| i != 0)
    }
}
macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).map_err(|_| format!("{i} is out of range")),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_value!(i64, i32, u32, u64, usize, u16, u8);
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self
            .0
            .get(i)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} missing")))?;
        T::from_value(v).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
    }
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres {
        client: deadpool_postgres::Object,
        rt: tokio::runtime::Handle,
    },
}

/// One connection, lent to a store closure.
pub struct Db {
    inner: Inner,
    in_tx: bool,
}

impl Db {
    pub(super) fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            inner: Inner::Sqlite(conn),
            in_tx: false,
        }
    }

    pub(super) fn postgres(client: deadpool_postgres::Object, rt: tokio::runtime::Handle) -> Self {
        Self {
            inner: Inner::Postgres { client, rt },
            in_tx: false,
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// SQL for the JSON member at `path` (field names) of the text column `column`, as text.
    /// `path` comes from code, never from a request.
    pub fn json_text(&self, column: &str, path: &[&str]) -> String {
        debug_assert!(
            path.iter()
                .all(|p| p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        );
        match self.dialect() {
            Dialect::Sqlite => format!("json_extract({column}, '$.{}')", path.join(".")),
            Dialect::Postgres => format!("({column}::jsonb #>> '{{{}}}')", path.join(",")),
        }
    }

    /// The same member as a number (NULL where absent).
    pub fn json_number(&self, column: &str, path: &[&str]) -> String {
        match self.dialect() {
            Dialect::Sqlite => self.json_text(column, path),
            Dialect::Postgres => {
                format!("CAST({} AS DOUBLE PRECISION)", self.json_text(column, path))
            }
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub fn exec(&self, sql: &str, params: impl Params) -> Result<usize, StoreError> {
        let ps = params.list();
        match &self.inner {
            Inner::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(ps.iter()))?),
            Inner::Postgres { client, rt } => {
                let sql = postgres_sql(sql);
                rt.block_on(async {
                    let stmt = client.prepare_cached(&sql).await?;
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        ps.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                    client.execute(&stmt, &refs).await
                })
                .map(|n| n as usize)
                .map_err(StoreError::from)
            }
        }
    }

    pub fn query(&self, sql: &str, params: impl Params) -> Result<Vec<Row>, StoreError> {
        let ps = params.list();
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(ps.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut vals = Vec::with_capacity(n);
                    for i in 0..n {
                        vals.push(sqlite_value(r.get_ref(i)?));
                    }
                    out.push(Row(vals));
                }
                Ok(out)
            }
            Inner::Postgres { client, rt } => {
                let sql = postgres_sql(sql);
                let rows = rt.block_on(async {
                    let stmt = client.prepare_cached(&sql).await?;
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        ps.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                    client.query(&stmt, &refs).await
                })?;
                rows.into_iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.try_get::<_, Value>(i).map_err(StoreError::from))
                            .collect::<Result<Vec<_>, _>>()
                            .map(Row)
                    })
                    .collect()
            }
        }
    }

    pub fn query_opt(&self, sql: &str, params: impl Params) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub fn query_one(&self, sql: &str, params: impl Params) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Corrupt("a query that returns one row returned none".into()))
    }

    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    pub fn query_opt_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.query_opt(sql, params)?.as_ref().map(f).transpose()
    }

    /// The same statement run several times (rusqlite's prepared-statement shape).
    pub fn prepare_sql(&self, sql: &str) -> Result<Prepared<'_>, StoreError> {
        Ok(Prepared {
            db: self,
            sql: sql.to_owned(),
        })
    }

    /// One row that must exist.
    pub fn query_one_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.query_one(sql, params)?)
    }

    /// Statements without parameters, separated by `;` (migrations, transaction control).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres { client, rt } => Ok(rt.block_on(client.batch_execute(sql))?),
        }
    }

    /// Whether a transaction of this connection is open.
    pub fn in_transaction(&self) -> bool {
        self.in_tx
    }

    /// A transaction on this connection: rolled back unless committed.
    pub fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        if self.in_tx {
            return Err(StoreError::Worker("nested transaction".into()));
        }
        self.batch(match self.dialect() {
            // Take the write lock at once: two writers never deadlock upgrading.
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        self.in_tx = true;
        Ok(Tx {
            db: self,
            done: false,
        })
    }
}

pub struct Prepared<'a> {
    db: &'a Db,
    sql: String,
}

impl Prepared<'_> {
    pub fn execute(&self, params: impl Params) -> Result<usize, StoreError> {
        self.db.exec(&self.sql, params)
    }

    pub fn query_map<T>(
        &self,
        params: impl Params,
        f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<std::vec::IntoIter<Result<T, StoreError>>, StoreError> {
        Ok(self
            .db
            .query(&self.sql, params)?
            .iter()
            .map(f)
            .collect::<Vec<_>>()
            .into_iter())
    }
}

pub struct Tx<'a> {
    db: &'a mut Db,
    done: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.done = true;
        self.db.in_tx = false;
        let out = self.db.batch("COMMIT");
        // SQLite may keep a transaction open after a failed COMMIT (disk full): end it, or
        // every later BEGIN on the one connection fails.
        if out.is_err() {
            let _ = self.db.batch("ROLLBACK");
        }
        out
    }
}

impl Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.db.in_tx = false;
            if let Err(e) = self.db.batch("ROLLBACK") {
                tracing::warn!(error = %e, "store transaction could not be rolled back");
            }
        }
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => Value::Null,
        V::Integer(i) => Value::Int(i),
        V::Real(r) => Value::Real(r),
        V::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        V::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// `?N` (and bare `?`) placeholders as PostgreSQL's `$N`, outside quoted text.
pub fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    let mut next = 0u32;
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    next += 1;
                    digits = next.to_string();
                }
                out.push('$');
                out.push_str(&digits);
            }
            _ => out.push(c),
        }
    }
    out
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::Int(i) => ValueRef::Integer(i),
            Param::Real(r) => ValueRef::Real(r),
            Param::Text(t) => ValueRef::Text(t.as_bytes()),
            Param::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn is_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

/// Parameters take the type the server inferred for them: the schema keeps integers as
/// BIGINT, text as TEXT and bytes as BYTEA, so each value has one natural form.
impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                ref t if is_text(t) => i.to_string().as_str().to_sql(&Type::TEXT, out),
                ref t => Err(format!("an integer cannot be sent as {t}").into()),
            },
            Param::Real(r) => match *ty {
                Type::FLOAT8 => r.to_sql(ty, out),
                Type::FLOAT4 => (r as f32).to_sql(ty, out),
                ref t => Err(format!("a number cannot be sent as {t}").into()),
            },
            Param::Text(s) => match *ty {
                ref t if is_text(t) => s.to_sql(&Type::TEXT, out),
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                ref t => Err(format!("text cannot be sent as {t}").into()),
            },
            Param::Blob(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                ref t => Err(format!("bytes cannot be sent as {t}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)? as i64),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::JSONB => Value::Text(String::from_utf8(raw.get(1..).unwrap_or(&[]).to_vec())?),
            Type::JSON => Value::Text(String::from_utf8(raw.to_vec())?),
            ref t if is_text(t) => Value::Text(String::from_utf8(raw.to_vec())?),
            ref t => return Err(format!("column type {t} is not read by the store").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::postgres_sql;

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            postgres_sql("SELECT ?1, '?2', ?10 FROM t WHERE a = ? AND b = ?"),
            "SELECT $1, '?2', $10 FROM t WHERE a = $1 AND b = $2"
        );
    }
}
