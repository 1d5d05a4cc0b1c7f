//! The rules about the servers themselves: versions, `wal_level`, replication capacity and
//! the slot's risk to the source's disk, extensions and their versions, the settings that
//! change results, large objects, and Heroku Postgres known by what it is.

use cutover_core::plan::CopyMethod;
use cutover_core::Mode;

use super::{human_bytes, Facts, Finding, Severity};
use crate::connect::ident;

pub(super) const TRIGGER_MODE: &str =
    "set mode = \"trigger\" in [sync] of cutover.toml: trigger-based change capture \
     needs neither logical replication nor the replication privilege, only table ownership";

pub(super) fn versions(f: &Facts, out: &mut Vec<Finding>) {
    if f.target.major() < f.source.major() {
        out.push(
            Finding::new(
                Severity::Error,
                "version",
                "target",
                format!(
                    "the target runs PostgreSQL {}, older than the source's {}; the schema copy and logical replication only move to the same or a newer major version",
                    f.target.version, f.source.version
                ),
            )
            .fix(format!("use a target server of PostgreSQL {} or newer", f.source.major())),
        );
    }
}

/// `db sync` runs pg_dump and pg_restore (the schema) and psql (the copy's snapshot): each must
/// be there, and pg_dump and pg_restore no older than the source (pg_dump refuses a newer
/// server; pg_restore cannot read a newer pg_dump's archive).
pub(super) fn client_programs(f: &Facts, out: &mut Vec<Finding>) {
    let wanted = f.source.major() as u32;
    let install = format!(
        "install the PostgreSQL {wanted} client programs or newer (Debian: apt-get install postgresql-client-{wanted}); cutover runs the ones beside the server programs (pg_config --bindir) when it finds them, else the first on PATH"
    );
    let mut found = vec![];
    for p in &f.client_programs {
        match (&p.version, p.major()) {
            (None, _) | (_, None) => out.push(
                Finding::new(
                    Severity::Error,
                    "client-programs",
                    p.name,
                    format!("{} cannot be run here; db sync needs it", p.name),
                )
                .fix(install.clone()),
            ),
            // pg_dump refuses a newer server and pg_restore a newer archive; an older psql
            // still creates the slot and holds its snapshot.
            (Some(v), Some(major)) if major < wanted => {
                let (severity, consequence) = if p.name == "psql" {
                    (Severity::Warning, "")
                } else {
                    (
                        Severity::Error,
                        "; it cannot copy the schema of a newer server",
                    )
                };
                out.push(
                    Finding::new(
                        severity,
                        "client-programs",
                        p.name,
                        format!(
                            "{} is version {v}, older than the source's PostgreSQL {}{consequence}",
                            p.name, f.source.version
                        ),
                    )
                    .fix(install.clone()),
                )
            }
            (Some(v), _) => found.push(format!("{} {v}", p.name)),
        }
    }
    if !found.is_empty() && found.len() == f.client_programs.len() {
        out.push(Finding::new(
            Severity::Info,
            "client-programs",
            "this machine",
            format!("client programs: {}", found.join(", ")),
        ));
    }
}

pub(super) fn wal_level(f: &Facts, out: &mut Vec<Finding>) {
    if f.source.wal_level == "logical" {
        return;
    }
    let level = &f.source.wal_level;
    if f.mode == Mode::Trigger {
        out.push(Finding::new(
            Severity::Info,
            "wal-level",
            "source",
            format!(
                "wal_level is '{level}' on the source; mode = \"trigger\" does not need 'logical'"
            ),
        ));
        return;
    }
    out.push(
        Finding::new(
            Severity::Error,
            "wal-level",
            "source",
            format!("wal_level is '{level}' on the source; logical replication (mode = \"native\") needs 'logical'"),
        )
        .fix(format!(
            "wal_level is a server setting that takes effect only after a restart: set wal_level = logical \
             in the source's postgresql.conf, or run ALTER SYSTEM SET wal_level = logical; as a superuser, \
             then restart the server. On a managed service set it in the provider's settings and reboot \
             (AWS RDS / Aurora: rds.logical_replication = 1 in the DB parameter group; Google Cloud SQL: \
             the flag cloudsql.logical_decoding = on; Azure: the server parameter wal_level = logical). \
             Where it cannot be changed (Heroku Postgres), {TRIGGER_MODE}"
        )),
    );
}

pub(super) fn capacity(f: &Facts, out: &mut Vec<Finding>) {
    // An existing slot of ours is reused, and its sender comes back with it.
    if f.mode != Mode::Native || f.previous.slot.is_some() {
        return;
    }
    let s = &f.source;
    if s.replication_slots_used >= i64::from(s.max_replication_slots) {
        out.push(
            Finding::new(
                Severity::Error,
                "replication-slots",
                "source",
                format!(
                    "the source has no free replication slot ({} in use, max_replication_slots = {}); the subscription needs one",
                    s.replication_slots_used, s.max_replication_slots
                ),
            )
            .fix(
                "drop a slot nothing uses (SELECT slot_name, active FROM pg_replication_slots; then \
                 SELECT pg_drop_replication_slot('name');), or raise max_replication_slots in postgresql.conf \
                 (or the provider's parameter group) and restart the server",
            ),
        );
    }
    // Each table's initial copy also holds a temporary slot and sender while it runs
    // (max_sync_workers_per_subscription, 2 by default, at once): with fewer free, copies wait.
    let free = i64::from(s.max_replication_slots) - s.replication_slots_used;
    if f.copy == CopyMethod::Subscription && (1..3).contains(&free) && f.tables.len() > 1 {
        out.push(
            Finding::new(
                Severity::Warning,
                "replication-slots-few",
                "source",
                format!(
                    "only {free} free replication slot(s) on the source; the initial copy uses one more per table copied at once (2 by default), so tables will copy one after another"
                ),
            )
            .fix("raise max_replication_slots and max_wal_senders on the source by 2 or more"),
        );
    }
    if f.wal_senders_used >= i64::from(s.max_wal_senders) {
        out.push(
            Finding::new(
                Severity::Error,
                "wal-senders",
                "source",
                format!(
                    "the source has no free WAL sender ({} running, max_wal_senders = {}); the subscription streams through one",
                    f.wal_senders_used, s.max_wal_senders
                ),
            )
            .fix(
                "stop a replication client nothing needs (SELECT pid, application_name FROM pg_stat_replication;), \
                 or raise max_wal_senders in postgresql.conf (or the provider's parameter group) and restart the server",
            ),
        );
    }
}

/// Above this much in `pg_largeobject`, reading it once inside the switch's pause is worth a
/// warning (about a second at the speed of one core's MD5).
const LARGE_OBJECTS_WARN: i64 = 512 << 20;

pub(super) fn large_objects(f: &Facts, out: &mut Vec<Finding>) {
    let (n, bytes) = (f.source.large_objects, f.source.large_object_bytes);
    if n == 0 {
        return;
    }
    let what = format!(
        "the source holds {n} large objects ({} in pg_largeobject); replication does not carry them, so cutover copies them \
         with the data and, those changed since, again inside the switchover's pause, where finding them reads every one once more",
        human_bytes(bytes)
    );
    if bytes < LARGE_OBJECTS_WARN {
        out.push(Finding::new(
            Severity::Info,
            "large-objects",
            "source",
            what,
        ));
        return;
    }
    out.push(
        Finding::new(
            Severity::Warning,
            "large-objects",
            "source",
            format!("{what}: with this much, the pause grows by seconds"),
        )
        .fix(
            "move the large objects into bytea columns (which replicate) before the move, or delete the ones \
             nothing references (vacuumlo), or accept the longer pause",
        ),
    );
}

pub(super) fn extensions(f: &Facts, out: &mut Vec<Finding>) {
    for (name, version) in &f.source_extensions {
        if name == "plpgsql" {
            continue;
        }
        if let Some(there) = f.target_available.iter().find(|a| &a.name == name) {
            // pg_dump's copy runs CREATE EXTENSION without a version: the target's default.
            let default = there.default_version.as_deref().unwrap_or("none");
            if default != version {
                let has = there.versions.iter().any(|v| v == version);
                let lacks = if has {
                    String::new()
                } else {
                    format!(" (the target has no {version})")
                };
                out.push(
                    Finding::new(
                        Severity::Warning,
                        "extension-version",
                        format!("extension {name}"),
                        format!(
                            "extension \"{name}\" is version {version} on the source; the schema copy installs the target's default, {default}{}, \
                             and its functions may behave differently",
                            lacks
                        ),
                    )
                    .fix(if has {
                        format!("after `cutover db sync`, run ALTER EXTENSION {} UPDATE TO '{version}'; on the target, or test the application against {default}", ident(name))
                    } else {
                        format!("install version {version} of \"{name}\" on the target server, or test the application against {default} before the switch")
                    }),
                );
            }
            continue;
        }
        out.push(
            Finding::new(
                Severity::Error,
                "missing-extension",
                format!("extension {name}"),
                format!(
                    "extension \"{name}\" (version {version}) is installed on the source but the target cannot \
                     install it: it is not in the target's pg_available_extensions"
                ),
            )
            .fix(format!(
                "install the package that provides \"{name}\" on the target server (Debian/Ubuntu: \
                 postgresql-{}-{name} or similar), or on a managed service enable it in the provider's \
                 extension settings, then run cutover check again",
                f.target.major()
            )),
        );
    }
}

/// Settings that change what the same SQL returns: a difference is a different application.
pub(super) fn behaviour(f: &Facts, out: &mut Vec<Finding>) {
    let (s, t) = (&f.source.behaviour, &f.target.behaviour);
    if s.encoding != t.encoding {
        out.push(
            Finding::new(
                Severity::Error,
                "encoding",
                "target",
                format!(
                    "the target database's encoding is {}, the source's {}: text the source holds may not be representable there, and the copy would fail or change it",
                    t.encoding, s.encoding
                ),
            )
            .fix(format!(
                "create the target database with the source's encoding (CREATE DATABASE ... ENCODING '{}' TEMPLATE template0 LC_COLLATE '{}' LC_CTYPE '{}') and point target.url at it",
                s.encoding, s.collate, s.ctype
            )),
        );
    }
    if s.collate != t.collate || s.ctype != t.ctype {
        out.push(
            Finding::new(
                Severity::Warning,
                "collation",
                "target",
                format!(
                    "the target database sorts and compares text by {} (ctype {}), the source by {} (ctype {}): ORDER BY, text comparisons and case-insensitive matching can give other results after the switch",
                    t.collate, t.ctype, s.collate, s.ctype
                ),
            )
            .fix(format!(
                "create the target database with LC_COLLATE '{}' LC_CTYPE '{}' (TEMPLATE template0), or test the application's sorting against the target first",
                s.collate, s.ctype
            )),
        );
    }
    if s.timezone != t.timezone {
        out.push(
            Finding::new(
                Severity::Warning,
                "timezone",
                "target",
                format!(
                    "the target's TimeZone is {}, the source's {}: now()::date, timestamptz shown as text and date_trunc give other results after the switch",
                    t.timezone, s.timezone
                ),
            )
            .fix(format!(
                "ALTER DATABASE ... SET timezone = '{}'; on the target (or set it in the provider's parameter group)",
                s.timezone
            )),
        );
    }
    if s.standard_conforming_strings != t.standard_conforming_strings {
        out.push(
            Finding::new(
                Severity::Warning,
                "standard-conforming-strings",
                "target",
                format!(
                    "standard_conforming_strings is {} on the target and {} on the source: string literals with backslashes mean other things after the switch",
                    t.standard_conforming_strings, s.standard_conforming_strings
                ),
            )
            .fix(format!(
                "ALTER DATABASE ... SET standard_conforming_strings = {}; on the target",
                s.standard_conforming_strings
            )),
        );
    }
}

/// Heroku Postgres, known by what it is: its extension schema or its host names.
fn heroku_signs(f: &Facts) -> Vec<String> {
    let mut signs = vec![];
    if f.source.heroku_ext {
        signs.push("schema heroku_ext".to_string());
    }
    let host = f.source_host.to_ascii_lowercase();
    if host.starts_with("ec2-") && host.ends_with(".amazonaws.com") || host.ends_with(".heroku.com")
    {
        signs.push(format!("host {host}"));
    }
    signs
}

pub(super) fn heroku(f: &Facts, out: &mut Vec<Finding>) {
    let signs = heroku_signs(f);
    if signs.is_empty() {
        return;
    }
    out.push(Finding::new(
        if f.mode == Mode::Trigger { Severity::Info } else { Severity::Warning },
        "heroku",
        "source",
        format!(
            "the source is Heroku Postgres ({}): it allows neither logical replication nor the REPLICATION attribute, so the move runs in mode = \"trigger\"{}",
            signs.join(", "),
            if f.mode == Mode::Trigger { "" } else { " (the plan says \"native\")" }
        ),
    ));
    out.push(
        Finding::new(
            Severity::Warning,
            "heroku-credentials",
            "source",
            "Heroku rotates the database's credentials during maintenance (and on `heroku pg:credentials:rotate`); \
             the URL in the plan then stops working half-way through the move: the follower and the proxy's logins fail",
        )
        .fix(
            "see when the next maintenance is (`heroku pg:maintenance --app APP`) and move the window past the move \
             (`heroku pg:maintenance:window`); if the credentials change anyway, set the source URL's variable to the new \
             DATABASE_URL (`heroku config:get DATABASE_URL --app APP`) and run the command again: every step resumes",
        ),
    );
}

/// A replication slot keeps WAL on the source until the target confirms it: the main risk of
/// native mode to the source itself.
pub(super) fn slot_risk(f: &Facts, out: &mut Vec<Finding>) {
    if f.mode != Mode::Native {
        return;
    }
    let free = f.source_free_disk;
    let free_text = free.map_or(
        "the free disk under the source's data directory could not be read from here".to_string(),
        |b| {
            format!(
                "{} free under the source's data directory",
                human_bytes(b as i64)
            )
        },
    );
    let keep = f.source.max_slot_wal_keep_mb;
    let bound = if keep < 0 {
        None
    } else {
        Some(keep.saturating_mul(1 << 20))
    };
    // Less free than the limit, or (no limit) than the database itself: a target stalled for
    // a day of writes could fill it.
    let room = bound.unwrap_or(f.source.database_bytes);
    if let Some(b) = free.filter(|b| (*b as i64) < room) {
        out.push(
            Finding::new(
                Severity::Warning,
                "slot-wal-disk",
                "source",
                format!(
                    "only {} is free under the source's data directory, and {}: a stalled target can fill the source's disk, and a full disk stops the source",
                    human_bytes(b as i64),
                    match bound {
                        Some(l) => format!("max_slot_wal_keep_size lets the slot keep {}", human_bytes(l)),
                        None => format!("max_slot_wal_keep_size is unlimited (the database is {})", human_bytes(f.source.database_bytes)),
                    }
                ),
            )
            .fix("set max_slot_wal_keep_size below the free disk (ALTER SYSTEM SET max_slot_wal_keep_size = '...'; SELECT pg_reload_conf();), or give the source's disk more room"),
        );
        return;
    }
    out.push(match bound {
        None => Finding::new(
            Severity::Info,
            "slot-wal-unlimited",
            "source",
            format!(
                "max_slot_wal_keep_size is unlimited on the source: if the target stops confirming, the slot keeps WAL until the source's disk fills; {free_text}"
            ),
        )
        .fix(
            "watch the slot's retained WAL in `cutover db status`, or set a limit below the free disk \
             (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf();, or the provider's parameter group)",
        ),
        Some(l) => Finding::new(
            Severity::Info,
            "slot-wal-limit",
            "source",
            format!(
                "max_slot_wal_keep_size is {} on the source: if the target falls further behind, the slot is lost and `cutover db sync` has to copy again; {free_text}",
                human_bytes(l)
            ),
        ),
    });
}
