//! Schema drift: the source's schema changing while the databases are kept in sync (a team
//! deploys migrations for days). Neither the publication nor the trigger capture carries
//! DDL, and Heroku gives no event triggers (they need a superuser), so the schema is
//! compared by reading both catalogs: works everywhere, for every role that can read them.
//!
//! Each table of the selection has a fingerprint: its columns (name, type, NOT NULL,
//! default or generation expression, identity), constraints and indexes, by name. The
//! difference between the source's and the target's is a list of [`Drift`]s, each one of:
//!
//! - **additive** and applied to the target on its own (`sync.schema_changes = "apply"`):
//!   a new table (created, then copied from a consistent point by the replication), a new
//!   column without a volatile default, a default or NOT NULL changed, a new or dropped
//!   index or constraint;
//! - **held**: what cannot be applied without a person deciding: a dropped or renamed
//!   column, a type change, a dropped table, a new column whose default the source computed
//!   row by row (`now()`, `nextval`, ...: the target would compute other values). The table's
//!   replication waits (native: the subscription stops at its first change the target cannot
//!   take; trigger mode: the applier leaves the table alone), `db status` names it with the
//!   command that resolves it, and switchover refuses until it is resolved.
//!
//! Nothing is lost meanwhile: native mode's slot keeps every change; trigger mode's log does,
//! and a held table is copied again when it is resolved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::connect::{ident, qualified};
use crate::error::{PgError, Side, SqlContext};

/// One column as the catalog has it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: String,
    pub not_null: bool,
    /// The default, or the generation expression of a generated column.
    pub default: Option<String>,
    /// `s` for a stored generated column, else empty.
    pub generated: String,
    /// `a` or `d` for an identity column, else empty.
    pub identity: String,
}

/// One table's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// (name, definition).
    pub constraints: BTreeMap<String, String>,
    /// (name, definition) of indexes that no constraint owns.
    pub indexes: BTreeMap<String, String>,
}

impl Shape {
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

const SHAPES: &str = concat!(
    "
SELECT n.nspname::text, c.relname::text,
       coalesce((SELECT json_agg(json_build_object(
                    'name', a.attname, 'ty', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull,
                    'default', pg_get_expr(d.adbin, d.adrelid), 'generated', a.attgenerated::text,
                    'identity', a.attidentity::text) ORDER BY a.attnum)
                   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')::text,
       coalesce((SELECT json_object_agg(co.conname, pg_get_constraintdef(co.oid))
                   FROM pg_constraint co WHERE co.conrelid = c.oid), '{}')::text,
       coalesce((SELECT json_object_agg(i.relname, pg_get_indexdef(x.indexrelid))
                   FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                  WHERE x.indrelid = c.oid
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = x.indexrelid AND co.conrelid = c.oid)), '{}')::text
",
    crate::inspect::selected_tables!(),
    " ORDER BY 1, 2"
);

/// The fingerprint of every table of the selection on this side.
pub async fn shapes(
    client: &Client,
    side: Side,
    sync: &cutover_core::plan::SyncSettings,
) -> Result<Vec<Shape>, PgError> {
    let rows = client
        .query(SHAPES, &[&sync.schemas])
        .await
        .ctx(side, "read the schema")?;
    let mut out = vec![];
    for r in rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        if sync
            .exclude_tables
            .iter()
            .any(|(s, n)| *s == schema && *n == name)
        {
            continue;
        }
        let parse = |i: usize| -> Result<serde_json::Value, PgError> {
            serde_json::from_str(r.get::<_, &str>(i))
                .map_err(|e| PgError::Io(format!("the {side}'s catalog for {schema}.{name}: {e}")))
        };
        let columns: Vec<Column> = serde_json::from_value(parse(2)?)
            .map_err(|e| PgError::Io(format!("the {side}'s columns of {schema}.{name}: {e}")))?;
        let constraints: BTreeMap<String, String> =
            serde_json::from_value(parse(3)?).map_err(|e| {
                PgError::Io(format!("the {side}'s constraints of {schema}.{name}: {e}"))
            })?;
        let indexes: BTreeMap<String, String> = serde_json::from_value(parse(4)?)
            .map_err(|e| PgError::Io(format!("the {side}'s indexes of {schema}.{name}: {e}")))?;
        out.push(Shape {
            schema,
            name,
            columns,
            constraints,
            indexes,
        });
    }
    Ok(out)
}

/// What changed in one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    NewTable,
    DroppedTable,
    NewColumn {
        column: String,
        ty: String,
        default: Option<String>,
        not_null: bool,
        generated: bool,
        identity: String,
    },
    DroppedColumn {
        column: String,
    },
    RenamedColumn {
        from: String,
        to: String,
    },
    TypeChanged {
        column: String,
        from: String,
        to: String,
    },
    DefaultChanged {
        column: String,
        default: Option<String>,
    },
    NotNullChanged {
        column: String,
        not_null: bool,
    },
    NewIndex {
        index: String,
        definition: String,
    },
    DroppedIndex {
        index: String,
    },
    NewConstraint {
        constraint: String,
        definition: String,
    },
    DroppedConstraint {
        constraint: String,
    },
}

/// One difference between the source's schema and the target's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub schema: String,
    pub table: String,
    #[serde(flatten)]
    pub change: Change,
    /// Applied on its own; otherwise held until `cutover db schema apply`.
    pub additive: bool,
    /// What it is, for people.
    pub describe: String,
}

/// A default the source filled existing rows with that the target could compute the same:
/// none, or a constant (a literal with casts, no function call).
fn constant_default(default: &Option<String>) -> bool {
    match default {
        None => true,
        Some(d) => !d.contains('('),
    }
}

impl Drift {
    fn new(shape: &Shape, change: Change) -> Drift {
        let t = shape.display();
        let additive = match &change {
            Change::NewTable
            | Change::DefaultChanged { .. }
            | Change::NotNullChanged { .. }
            | Change::NewIndex { .. }
            | Change::DroppedIndex { .. }
            | Change::NewConstraint { .. }
            | Change::DroppedConstraint { .. } => true,
            Change::NewColumn {
                default,
                generated,
                identity,
                ..
            } => (*generated || constant_default(default)) && identity.is_empty(),
            Change::DroppedTable
            | Change::DroppedColumn { .. }
            | Change::RenamedColumn { .. }
            | Change::TypeChanged { .. } => false,
        };
        let describe = match &change {
            Change::NewTable => format!("new table {t}"),
            Change::DroppedTable => format!("table {t} was dropped on the source"),
            Change::NewColumn { column, ty, default, .. } if !additive => format!(
                "new column {t}.{column} ({ty}) whose default {} the source computed for every existing row: the target would compute other values",
                default.as_deref().unwrap_or("(identity)")
            ),
            Change::NewColumn { column, ty, default, .. } => format!(
                "new column {t}.{column} ({ty}{})",
                default.as_ref().map(|d| format!(" DEFAULT {d}")).unwrap_or_default()
            ),
            Change::DroppedColumn { column } => format!("column {t}.{column} was dropped on the source"),
            Change::RenamedColumn { from, to } => format!("column {t}.{from} was renamed to {to} on the source"),
            Change::TypeChanged { column, from, to } => {
                format!("column {t}.{column} changed type on the source: {from} -> {to}")
            }
            Change::DefaultChanged { column, default } => format!(
                "default of {t}.{column} is now {}",
                default.as_deref().unwrap_or("none")
            ),
            Change::NotNullChanged { column, not_null } => format!(
                "column {t}.{column} is now {}",
                if *not_null { "NOT NULL" } else { "nullable" }
            ),
            Change::NewIndex { index, .. } => format!("new index {index} on {t}"),
            Change::DroppedIndex { index } => format!("index {index} on {t} was dropped on the source"),
            Change::NewConstraint { constraint, definition } => {
                format!("new constraint {constraint} on {t}: {definition}")
            }
            Change::DroppedConstraint { constraint } => {
                format!("constraint {constraint} on {t} was dropped on the source")
            }
        };
        Drift {
            schema: shape.schema.clone(),
            table: shape.name.clone(),
            change,
            additive,
            describe,
        }
    }

    pub fn display_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    pub fn qualified_table(&self) -> String {
        qualified(&self.schema, &self.table)
    }

    /// The statement that brings the target's table to the source's, when one statement does
    /// (a new table is created from `pg_dump`'s definition instead; a new column with a
    /// default computed row by row, or a dropped table, has none: the table is copied again).
    pub fn target_sql(&self) -> Option<String> {
        let q = self.qualified_table();
        Some(match &self.change {
            Change::NewTable | Change::DroppedTable => return None,
            Change::NewColumn {
                column,
                ty,
                default,
                not_null,
                generated,
                ..
            } => {
                if !self.additive {
                    return None;
                }
                let mut sql = format!("ALTER TABLE {q} ADD COLUMN {} {ty}", ident(column));
                match default {
                    Some(d) if *generated => {
                        sql.push_str(&format!(" GENERATED ALWAYS AS ({d}) STORED"))
                    }
                    Some(d) => sql.push_str(&format!(" DEFAULT {d}")),
                    None => {}
                }
                if *not_null {
                    sql.push_str(" NOT NULL");
                }
                sql
            }
            Change::DroppedColumn { column } => {
                format!("ALTER TABLE {q} DROP COLUMN {}", ident(column))
            }
            Change::RenamedColumn { from, to } => {
                format!(
                    "ALTER TABLE {q} RENAME COLUMN {} TO {}",
                    ident(from),
                    ident(to)
                )
            }
            Change::TypeChanged { column, to, .. } => format!(
                "ALTER TABLE {q} ALTER COLUMN {c} TYPE {to} USING {c}::{to}",
                c = ident(column)
            ),
            Change::DefaultChanged { column, default } => match default {
                Some(d) => format!(
                    "ALTER TABLE {q} ALTER COLUMN {} SET DEFAULT {d}",
                    ident(column)
                ),
                None => format!(
                    "ALTER TABLE {q} ALTER COLUMN {} DROP DEFAULT",
                    ident(column)
                ),
            },
            Change::NotNullChanged { column, not_null } => format!(
                "ALTER TABLE {q} ALTER COLUMN {} {} NOT NULL",
                ident(column),
                if *not_null { "SET" } else { "DROP" }
            ),
            Change::NewIndex { definition, .. } => definition.clone(),
            Change::DroppedIndex { index } => {
                format!("DROP INDEX IF EXISTS {}", qualified(&self.schema, index))
            }
            Change::NewConstraint {
                constraint,
                definition,
            } => format!(
                "ALTER TABLE {q} ADD CONSTRAINT {} {definition}",
                ident(constraint)
            ),
            Change::DroppedConstraint { constraint } => {
                format!(
                    "ALTER TABLE {q} DROP CONSTRAINT IF EXISTS {}",
                    ident(constraint)
                )
            }
        })
    }
}

/// The differences that bring `target` to `source`, table by table in name order.
pub fn compare(source: &[Shape], target: &[Shape]) -> Vec<Drift> {
    let mut out = vec![];
    for s in source {
        let Some(t) = target
            .iter()
            .find(|t| t.schema == s.schema && t.name == s.name)
        else {
            out.push(Drift::new(s, Change::NewTable));
            continue;
        };
        out.extend(compare_table(s, t));
    }
    for t in target {
        if !source
            .iter()
            .any(|s| s.schema == t.schema && s.name == t.name)
        {
            out.push(Drift::new(t, Change::DroppedTable));
        }
    }
    out
}

fn compare_table(s: &Shape, t: &Shape) -> Vec<Drift> {
    let mut out = vec![];
    let added: Vec<&Column> = s
        .columns
        .iter()
        .filter(|c| t.column(&c.name).is_none())
        .collect();
    let dropped: Vec<&Column> = t
        .columns
        .iter()
        .filter(|c| s.column(&c.name).is_none())
        .collect();
    // One column gone and one of the same type come: a rename (ALTER TABLE ... RENAME COLUMN
    // keeps everything else), which must not be applied as a drop and an add (the data would go).
    let renamed = match (added.as_slice(), dropped.as_slice()) {
        ([a], [d]) if a.ty == d.ty => Some((*d, *a)),
        _ => None,
    };
    if let Some((d, a)) = renamed {
        out.push(Drift::new(
            s,
            Change::RenamedColumn {
                from: d.name.clone(),
                to: a.name.clone(),
            },
        ));
    } else {
        for c in &added {
            out.push(Drift::new(
                s,
                Change::NewColumn {
                    column: c.name.clone(),
                    ty: c.ty.clone(),
                    default: c.default.clone(),
                    not_null: c.not_null,
                    generated: !c.generated.is_empty(),
                    identity: c.identity.clone(),
                },
            ));
        }
        for c in &dropped {
            out.push(Drift::new(
                s,
                Change::DroppedColumn {
                    column: c.name.clone(),
                },
            ));
        }
    }
    for c in &s.columns {
        let Some(o) = t.column(&c.name) else { continue };
        if c.ty != o.ty || c.generated != o.generated || c.identity != o.identity {
            out.push(Drift::new(
                s,
                Change::TypeChanged {
                    column: c.name.clone(),
                    from: o.ty.clone(),
                    to: c.ty.clone(),
                },
            ));
            continue;
        }
        if c.default != o.default {
            out.push(Drift::new(
                s,
                Change::DefaultChanged {
                    column: c.name.clone(),
                    default: c.default.clone(),
                },
            ));
        }
        if c.not_null != o.not_null {
            out.push(Drift::new(
                s,
                Change::NotNullChanged {
                    column: c.name.clone(),
                    not_null: c.not_null,
                },
            ));
        }
    }
    for (name, def) in &s.indexes {
        if t.indexes.get(name) != Some(def) {
            if t.indexes.contains_key(name) {
                out.push(Drift::new(
                    s,
                    Change::DroppedIndex {
                        index: name.clone(),
                    },
                ));
            }
            out.push(Drift::new(
                s,
                Change::NewIndex {
                    index: name.clone(),
                    definition: def.clone(),
                },
            ));
        }
    }
    for name in t.indexes.keys().filter(|n| !s.indexes.contains_key(*n)) {
        out.push(Drift::new(
            s,
            Change::DroppedIndex {
                index: name.clone(),
            },
        ));
    }
    for (name, def) in &s.constraints {
        if t.constraints.get(name) != Some(def) {
            if t.constraints.contains_key(name) {
                out.push(Drift::new(
                    s,
                    Change::DroppedConstraint {
                        constraint: name.clone(),
                    },
                ));
            }
            out.push(Drift::new(
                s,
                Change::NewConstraint {
                    constraint: name.clone(),
                    definition: def.clone(),
                },
            ));
        }
    }
    for name in t
        .constraints
        .keys()
        .filter(|n| !s.constraints.contains_key(*n))
    {
        out.push(Drift::new(
            s,
            Change::DroppedConstraint {
                constraint: name.clone(),
            },
        ));
    }
    out
}

/// Reads both schemas and compares them: what `primary` has that `follower` has not.
pub async fn drift_between(
    primary: (&Client, Side),
    follower: (&Client, Side),
    sync: &cutover_core::plan::SyncSettings,
) -> Result<Vec<Drift>, PgError> {
    let (s, t) = tokio::try_join!(
        shapes(primary.0, primary.1, sync),
        shapes(follower.0, follower.1, sync)
    )?;
    Ok(compare(&s, &t))
}

/// The source's schema against the target's.
pub async fn drift(
    source: &Client,
    target: &Client,
    sync: &cutover_core::plan::SyncSettings,
) -> Result<Vec<Drift>, PgError> {
    drift_between((source, Side::Source), (target, Side::Target), sync).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, default: Option<&str>) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            not_null: false,
            default: default.map(str::to_string),
            generated: String::new(),
            identity: String::new(),
        }
    }

    fn shape(name: &str, columns: Vec<Column>) -> Shape {
        Shape {
            schema: "public".into(),
            name: name.into(),
            columns,
            constraints: BTreeMap::new(),
            indexes: BTreeMap::new(),
        }
    }

    fn kinds(d: &[Drift]) -> Vec<(String, bool)> {
        d.iter().map(|d| (d.describe.clone(), d.additive)).collect()
    }

    #[test]
    fn the_same_schema_has_no_drift() {
        let s = vec![shape("orders", vec![col("id", "bigint", None)])];
        assert!(compare(&s, &s.clone()).is_empty());
    }

    #[test]
    fn additive_changes_are_applied_and_the_others_held() {
        let target = vec![
            shape(
                "orders",
                vec![col("id", "bigint", None), col("note", "text", None)],
            ),
            shape("gone", vec![col("id", "int", None)]),
        ];
        let mut orders = shape(
            "orders",
            vec![
                col("id", "bigint", None),
                col("note", "text", Some("'none'::text")),
                col("status", "text", Some("'new'::text")),
                col("at", "timestamp with time zone", Some("now()")),
            ],
        );
        orders.indexes.insert(
            "orders_status".into(),
            "CREATE INDEX orders_status ON public.orders USING btree (status)".into(),
        );
        let source = vec![orders, shape("fresh", vec![col("id", "int", None)])];
        let d = compare(&source, &target);
        assert_eq!(
            kinds(&d),
            [
                ("new column public.orders.status (text DEFAULT 'new'::text)".to_string(), true),
                ("new column public.orders.at (timestamp with time zone) whose default now() the source computed for every existing row: the target would compute other values".to_string(), false),
                ("default of public.orders.note is now 'none'::text".to_string(), true),
                ("new index orders_status on public.orders".to_string(), true),
                ("new table public.fresh".to_string(), true),
                ("table public.gone was dropped on the source".to_string(), false),
            ]
        );
        assert_eq!(
            d[0].target_sql().unwrap(),
            "ALTER TABLE \"public\".\"orders\" ADD COLUMN \"status\" text DEFAULT 'new'::text"
        );
        assert_eq!(d[1].target_sql(), None);
        assert_eq!(
            d[3].target_sql().unwrap(),
            "CREATE INDEX orders_status ON public.orders USING btree (status)"
        );
    }

    #[test]
    fn a_rename_is_a_rename_not_a_drop_and_an_add() {
        let target = vec![shape(
            "users",
            vec![col("id", "int", None), col("mail", "text", None)],
        )];
        let source = vec![shape(
            "users",
            vec![col("id", "int", None), col("email", "text", None)],
        )];
        let d = compare(&source, &target);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].change,
            Change::RenamedColumn {
                from: "mail".into(),
                to: "email".into()
            }
        );
        assert!(!d[0].additive);
        assert_eq!(
            d[0].target_sql().unwrap(),
            "ALTER TABLE \"public\".\"users\" RENAME COLUMN \"mail\" TO \"email\""
        );
        // A type change is held too.
        let source = vec![shape(
            "users",
            vec![col("id", "bigint", None), col("mail", "text", None)],
        )];
        let d = compare(&source, &target);
        assert_eq!(
            kinds(&d),
            [(
                "column public.users.id changed type on the source: int -> bigint".to_string(),
                false
            )]
        );
        assert_eq!(
            d[0].target_sql().unwrap(),
            "ALTER TABLE \"public\".\"users\" ALTER COLUMN \"id\" TYPE bigint USING \"id\"::bigint"
        );
    }
}
