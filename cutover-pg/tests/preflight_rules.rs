//! `cutover check`'s rules on fabricated facts: what one machine cannot set up (another server
//! version, a missing extension, other settings, a Heroku host, a small disk).

mod findings;

use cutover_core::Mode;
use cutover_pg::inspect::{Available, Behaviour, ReplicaIdentity, Sequence, Server, Table};
use cutover_pg::preflight::{
    self, ClientProgram, Facts, Previous, Report, Severity, TargetState, TargetTable,
};
use findings::{of, one, pair_of, texts};

// ---------------------------------------------------------------------------------------
// The pure rules, on fabricated facts.

fn server(version_num: i32) -> Server {
    Server {
        version: format!("{}.{}", version_num / 10000, version_num % 10000),
        version_num,
        wal_level: "logical".into(),
        max_replication_slots: 10,
        max_wal_senders: 10,
        replication_slots_used: 0,
        role: "app".into(),
        superuser: false,
        replication: true,
        cloud_admin: None,
        database: "app".into(),
        database_bytes: 8 << 20,
        large_objects: 0,
        large_object_bytes: 8192,
        behaviour: Behaviour {
            encoding: "UTF8".into(),
            collate: "C.UTF-8".into(),
            ctype: "C.UTF-8".into(),
            timezone: "UTC".into(),
            standard_conforming_strings: "on".into(),
        },
        max_slot_wal_keep_mb: 100 << 10,
        heroku_ext: false,
        data_directory: None,
    }
}

fn available(name: &str, default: &str, versions: &[&str]) -> Available {
    Available {
        name: name.into(),
        default_version: Some(default.into()),
        versions: versions.iter().map(|v| v.to_string()).collect(),
    }
}

fn table(name: &str) -> Table {
    Table {
        oid: 1,
        schema: "public".into(),
        name: name.into(),
        owner: "app".into(),
        partitioned: false,
        unlogged: false,
        rows_estimate: 100,
        bytes: 8192,
        primary_key: vec!["id".into()],
        replica_identity: ReplicaIdentity::Default,
        identity_index: vec![],
        generated_columns: vec![],
        columns: vec!["id".into()],
    }
}

/// Facts with nothing wrong: PG15 to PG16, a keyed table, every privilege.
fn facts() -> Facts {
    Facts {
        whole_row_tables: vec![],
        mode: Mode::Native,
        copy: cutover_core::plan::CopyMethod::Parallel,
        copy_schema: true,
        source: server(150004),
        target: Server {
            superuser: true,
            ..server(160002)
        },
        tables: vec![table("orders")],
        sequences: vec![],
        source_extensions: vec![("plpgsql".into(), "1.0".into())],
        target_available: vec![available("plpgsql", "1.0", &["1.0"])],
        target_tables: vec![TargetTable {
            schema: "public".into(),
            name: "orders".into(),
            state: TargetState::Missing,
        }],
        source_roles: vec!["app".into()],
        source_can_create: true,
        wal_senders_used: 0,
        target_create_subscription: false,
        previous: Previous::default(),
        partition_issues: vec![],
        source_host: "db.example.com".into(),
        source_free_disk: Some(500 << 30),
        client_programs: ["pg_dump", "pg_restore", "psql"]
            .into_iter()
            .map(|name| ClientProgram {
                name,
                version: Some("15.18".into()),
            })
            .collect(),
    }
}

fn codes(f: &Facts, severity: Severity) -> Vec<&'static str> {
    preflight::rules(f)
        .into_iter()
        .filter(|x| x.severity == severity)
        .map(|x| x.code)
        .collect()
}

#[test]
fn clean_facts_give_information_only() {
    let report = Report::from_facts(facts());
    assert_eq!(report.exit_code(), 0, "{:#?}", report.findings);
    assert_eq!(
        of(&report.findings, Severity::Info),
        [
            pair_of("client-programs", "this machine"),
            pair_of("slot-wal-limit", "source"),
            pair_of("size", "source"),
            pair_of("size", "target")
        ]
    );
    assert_eq!(
        one(&report.findings, "client-programs").message,
        "client programs: pg_dump 15.18, pg_restore 15.18, psql 15.18"
    );
}

/// Clients of the given versions (None: it cannot be run).
fn clients(
    pg_dump: Option<&str>,
    pg_restore: Option<&str>,
    psql: Option<&str>,
) -> Vec<ClientProgram> {
    [
        ("pg_dump", pg_dump),
        ("pg_restore", pg_restore),
        ("psql", psql),
    ]
    .into_iter()
    .map(|(name, v)| ClientProgram {
        name,
        version: v.map(str::to_string),
    })
    .collect()
}

#[test]
fn client_programs_must_be_there_and_not_older_than_the_source() {
    let mut f = facts();
    // pg_dump missing, pg_restore older than the source (15): errors; psql older: a warning.
    f.client_programs = clients(None, Some("14.11"), Some("13.2"));
    let findings = preflight::rules(&f);
    assert_eq!(
        of(&findings, Severity::Error),
        [
            pair_of("client-programs", "pg_dump"),
            pair_of("client-programs", "pg_restore")
        ]
    );
    assert_eq!(
        of(&findings, Severity::Warning)
            .into_iter()
            .filter(|(c, _)| *c == "client-programs")
            .collect::<Vec<_>>(),
        [pair_of("client-programs", "psql")]
    );
    let texts = texts(&findings);
    assert!(
        texts.contains("pg_dump cannot be run here; db sync needs it"),
        "{texts}"
    );
    assert!(
        texts.contains("pg_restore is version 14.11, older than the source's PostgreSQL 15.4; it cannot copy the schema of a newer server"),
        "{texts}"
    );
    assert!(
        texts.contains("install the PostgreSQL 15 client programs or newer (Debian: apt-get install postgresql-client-15)"),
        "{texts}"
    );
    // Newer clients than the server are what PostgreSQL recommends.
    f.client_programs = clients(Some("17.2"), Some("17.2"), Some("17.2"));
    assert!(codes(&f, Severity::Error).is_empty());
    // Versions as the programs print them.
    for (text, want) in [
        (
            "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
            Some("15.18"),
        ),
        ("psql (PostgreSQL) 9.6.24\n", Some("9.6.24")),
        ("pg_restore (PostgreSQL) 17beta1\n", Some("17")),
        ("nothing here\n", None),
    ] {
        assert_eq!(
            preflight::parse_client_version(text).as_deref(),
            want,
            "{text}"
        );
    }
}

#[test]
fn the_target_must_not_be_an_older_major_version() {
    let mut f = facts();
    f.source = server(160002);
    f.client_programs = clients(Some("16.2"), Some("16.2"), Some("16.2"));
    f.target = Server {
        superuser: true,
        ..server(150004)
    };
    let findings = preflight::rules(&f);
    assert_eq!(
        of(&findings, Severity::Error),
        [pair_of("version", "target")]
    );
    assert_eq!(
        one(&findings, "version").fix.as_deref(),
        Some("use a target server of PostgreSQL 16 or newer")
    );

    f.target = Server {
        superuser: true,
        ..server(160009)
    };
    assert!(
        codes(&f, Severity::Error).is_empty(),
        "same major, newer minor is fine"
    );
    f.source = server(110022);
    assert!(codes(&f, Severity::Error).is_empty(), "newer major is fine");
}

#[test]
fn exit_codes_follow_the_worst_finding() {
    let mut f = facts();
    f.tables[0].primary_key.clear();
    f.tables[0].replica_identity = ReplicaIdentity::Full;
    assert_eq!(Report::from_facts(f.clone()).exit_code(), 2);
    f.source.wal_level = "replica".into();
    let report = Report::from_facts(f);
    assert_eq!(report.exit_code(), 1);
    assert_eq!(
        report.errors().map(|e| e.code).collect::<Vec<_>>(),
        ["wal-level"]
    );
    let severities: Vec<Severity> = report.findings.iter().map(|f| f.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        severities, sorted,
        "errors first, then warnings, then information"
    );
}

#[test]
fn an_extension_missing_on_the_target_is_named() {
    let mut f = facts();
    f.source_extensions = vec![
        ("plpgsql".into(), "1.0".into()),
        ("pg_trgm".into(), "1.6".into()),
        ("postgis".into(), "3.4.2".into()),
    ];
    f.target_available = vec![
        available("pg_trgm", "1.6", &["1.5", "1.6"]),
        available("hstore", "1.8", &["1.8"]),
    ];
    let findings = preflight::rules(&f);
    assert_eq!(
        of(&findings, Severity::Error),
        [pair_of("missing-extension", "extension postgis")]
    );
    let missing = one(&findings, "missing-extension");
    assert!(
        missing.message.contains("\"postgis\" (version 3.4.2)"),
        "{}",
        missing.message
    );
    assert!(missing
        .fix
        .as_deref()
        .unwrap()
        .contains("postgresql-16-postgis"));
}

#[test]
fn who_may_create_the_subscription_depends_on_the_target_version() {
    let mut f = facts();
    f.target.superuser = false;
    assert_eq!(codes(&f, Severity::Error), ["subscription-privilege"]);
    assert!(preflight::rules(&f)[0]
        .fix
        .as_deref()
        .unwrap()
        .contains("GRANT pg_create_subscription TO \"app\""));
    f.target_create_subscription = true;
    assert!(
        codes(&f, Severity::Error).is_empty(),
        "PG16: pg_create_subscription is enough"
    );
    f.target = Server {
        version_num: 150004,
        ..f.target.clone()
    };
    f.source = server(150004);
    assert_eq!(
        codes(&f, Severity::Error),
        ["subscription-privilege"],
        "PG15: only a superuser"
    );
    f.target.cloud_admin = Some("rds_superuser".into());
    assert!(codes(&f, Severity::Error).is_empty(), "a cloud admin may");
    f.target.cloud_admin = None;
    f.mode = Mode::Trigger;
    assert!(
        codes(&f, Severity::Error).is_empty(),
        "trigger mode creates no subscription"
    );
}

#[test]
fn replication_capacity_is_needed_unless_our_slot_exists() {
    let mut f = facts();
    f.source.replication_slots_used = 10;
    f.wal_senders_used = 10;
    assert_eq!(
        codes(&f, Severity::Error),
        ["replication-slots", "wal-senders"]
    );
    f.previous.slot = Some("cutover_slot".into());
    assert!(codes(&f, Severity::Error).is_empty());
    f.previous.slot = None;
    f.mode = Mode::Trigger;
    assert!(codes(&f, Severity::Error).is_empty());
}

#[test]
fn table_shapes() {
    let mut f = facts();
    let mut nothing = table("nothing");
    nothing.replica_identity = ReplicaIdentity::Nothing;
    let mut parted = table("parted");
    parted.partitioned = true;
    parted.generated_columns = vec!["total".into(), "tax".into()];
    let mut by_index = table("by_index");
    by_index.primary_key.clear();
    by_index.replica_identity = ReplicaIdentity::Index;
    by_index.identity_index = vec!["code".into()];
    f.tables = vec![nothing, parted, by_index];
    f.target_tables.clear();
    let findings = preflight::rules(&f);
    assert_eq!(
        of(&findings, Severity::Error),
        [pair_of("replica-identity-nothing", "public.nothing")]
    );
    assert!(of(&findings, Severity::Warning).is_empty());
    let info = of(&findings, Severity::Info);
    assert!(
        info.contains(&pair_of("partitioned-table", "public.parted")),
        "{info:?}"
    );
    assert!(
        info.contains(&pair_of("generated-columns", "public.parted")),
        "{info:?}"
    );
    assert!(one(&findings, "generated-columns")
        .message
        .contains("(total, tax)"));
}

#[test]
fn no_table_selected_is_an_error() {
    let mut f = facts();
    f.tables.clear();
    f.target_tables.clear();
    assert_eq!(codes(&f, Severity::Error), ["no-tables"]);
}

#[test]
fn without_schema_copy_the_target_tables_must_exist() {
    let mut f = facts();
    f.copy_schema = false;
    assert_eq!(codes(&f, Severity::Error), ["target-table-missing"]);
    f.target_tables[0].state = TargetState::Empty;
    assert!(codes(&f, Severity::Error).is_empty() && codes(&f, Severity::Warning).is_empty());
    f.target_tables[0].state = TargetState::Unreadable("permission denied for table orders".into());
    assert_eq!(codes(&f, Severity::Warning), ["target-table-unreadable"]);
}

#[test]
fn source_privileges_and_ownership() {
    let mut f = facts();
    f.source.replication = false;
    f.source_can_create = false;
    f.tables[0].owner = "someone".into();
    assert_eq!(
        codes(&f, Severity::Error),
        ["replication-privilege", "create-privilege", "table-owner"]
    );
    f.source.cloud_admin = Some("rds_superuser".into());
    assert_eq!(
        codes(&f, Severity::Error),
        ["create-privilege", "table-owner"]
    );
    f.source.superuser = true;
    assert!(
        codes(&f, Severity::Error).is_empty(),
        "a superuser needs nothing more"
    );
}

#[test]
fn sequences_are_counted_owned_and_not() {
    let mut f = facts();
    f.sequences = vec![
        Sequence {
            schema: "public".into(),
            name: "orders_id_seq".into(),
            owned_by: Some("public.orders.id".into()),
        },
        Sequence {
            schema: "public".into(),
            name: "invoice_no".into(),
            owned_by: None,
        },
    ];
    let findings = preflight::rules(&f);
    assert!(one(&findings, "sequences")
        .message
        .starts_with("2 sequences (1 owned by a column, 1 not owned)"));
}

#[test]
fn no_finding_ever_suggests_pgoptions() {
    // Everything wrong at once.
    let mut f = facts();
    f.source = Server {
        wal_level: "minimal".into(),
        replication: false,
        replication_slots_used: 10,
        large_objects: 3,
        ..server(160002)
    };
    f.target = server(150004);
    f.source_can_create = false;
    f.wal_senders_used = 10;
    f.tables[0].unlogged = true;
    f.tables[0].primary_key.clear();
    f.tables[0].owner = "other".into();
    f.source_extensions.push(("postgis".into(), "3".into()));
    f.target_tables[0].state = TargetState::HasRows;
    let findings = preflight::rules(&f);
    assert!(findings.len() >= 10, "{findings:#?}");
    assert!(
        !texts(&findings).contains("PGOPTIONS"),
        "{}",
        texts(&findings)
    );
    for trigger_mode in ["wal-level", "replication-privilege"] {
        assert!(one(&findings, trigger_mode)
            .fix
            .as_deref()
            .unwrap()
            .contains("mode = \"trigger\""));
    }
}

#[test]
fn settings_that_change_results_are_compared() {
    let mut f = facts();
    f.target.behaviour = Behaviour {
        encoding: "SQL_ASCII".into(),
        collate: "en_US.UTF-8".into(),
        ctype: "en_US.UTF-8".into(),
        timezone: "America/New_York".into(),
        standard_conforming_strings: "off".into(),
    };
    let findings = preflight::rules(&f);
    assert_eq!(
        of(&findings, Severity::Error),
        [pair_of("encoding", "target")]
    );
    assert_eq!(
        codes(&f, Severity::Warning),
        ["collation", "timezone", "standard-conforming-strings"]
    );
    let enc = one(&findings, "encoding");
    assert!(
        enc.fix.as_deref().unwrap().contains("ENCODING 'UTF8'")
            && enc.fix.as_deref().unwrap().contains("LC_COLLATE 'C.UTF-8'"),
        "{enc:?}"
    );
    assert!(one(&findings, "timezone")
        .fix
        .as_deref()
        .unwrap()
        .contains("timezone = 'UTC'"));
    // The same settings on both sides: nothing to say.
    assert!(preflight::rules(&facts()).iter().all(|x| ![
        "encoding",
        "collation",
        "timezone",
        "standard-conforming-strings"
    ]
    .contains(&x.code)));
}

#[test]
fn an_extension_the_target_installs_in_another_version_is_a_warning() {
    let mut f = facts();
    f.source_extensions = vec![
        ("plpgsql".into(), "1.0".into()),
        ("pg_trgm".into(), "1.5".into()),
        ("hstore".into(), "1.7".into()),
        ("citext".into(), "1.6".into()),
    ];
    f.target_available = vec![
        available("plpgsql", "1.0", &["1.0"]),
        available("pg_trgm", "1.6", &["1.5", "1.6"]),
        available("hstore", "1.8", &["1.8"]),
        available("citext", "1.6", &["1.6"]),
    ];
    let findings = preflight::rules(&f);
    assert!(of(&findings, Severity::Error).is_empty(), "{findings:#?}");
    assert_eq!(
        of(&findings, Severity::Warning),
        [
            pair_of("extension-version", "extension pg_trgm"),
            pair_of("extension-version", "extension hstore")
        ]
    );
    let trgm = &findings[0];
    assert!(
        trgm.message.contains("version 1.5 on the source")
            && trgm.message.contains("default, 1.6,"),
        "{}",
        trgm.message
    );
    assert!(
        trgm.fix
            .as_deref()
            .unwrap()
            .contains("ALTER EXTENSION \"pg_trgm\" UPDATE TO '1.5'"),
        "{trgm:?}"
    );
    let hstore = &findings[1];
    assert!(
        hstore.message.contains("the target has no 1.7"),
        "{}",
        hstore.message
    );
    assert!(
        hstore
            .fix
            .as_deref()
            .unwrap()
            .contains("install version 1.7"),
        "{hstore:?}"
    );
}

#[test]
fn a_heroku_source_is_known_by_what_it_is_and_its_credential_rotation_is_a_warning() {
    // By its extension schema.
    let mut f = facts();
    f.source.heroku_ext = true;
    let findings = preflight::rules(&f);
    let heroku = one(&findings, "heroku");
    assert_eq!(heroku.severity, Severity::Warning, "native mode on Heroku");
    assert!(
        heroku.message.contains("schema heroku_ext"),
        "{}",
        heroku.message
    );
    assert!(
        heroku.message.contains("mode = \"trigger\""),
        "{}",
        heroku.message
    );
    let rotate = one(&findings, "heroku-credentials");
    assert_eq!(rotate.severity, Severity::Warning);
    assert!(rotate
        .message
        .contains("rotates the database's credentials"));
    assert!(rotate
        .fix
        .as_deref()
        .unwrap()
        .contains("heroku pg:maintenance"));

    // By its host name, in trigger mode: the move's own mode, so only information.
    let mut f = facts();
    f.mode = Mode::Trigger;
    f.source_host = "ec2-3-225-10-20.compute-1.amazonaws.com".into();
    let findings = preflight::rules(&f);
    let heroku = one(&findings, "heroku");
    assert_eq!(heroku.severity, Severity::Info);
    assert!(
        heroku.message.contains("host ec2-3-225-10-20"),
        "{}",
        heroku.message
    );
    one(&findings, "heroku-credentials");

    // Not Heroku: nothing said.
    assert!(preflight::rules(&facts())
        .iter()
        .all(|x| !x.code.starts_with("heroku")));

    // The fix for a source without logical replication names trigger mode as a thing that is here.
    let mut f = facts();
    f.source.wal_level = "replica".into();
    let fix = one(&preflight::rules(&f), "wal-level").fix.clone().unwrap();
    assert!(fix.contains("mode = \"trigger\""), "{fix}");
    assert!(!fix.contains("later version"), "{fix}");
}

#[test]
fn the_slot_risk_weighs_max_slot_wal_keep_size_against_the_free_disk() {
    // A limit and room for it: information, saying what a lost slot costs.
    let f = facts();
    let limit = one(&preflight::rules(&f), "slot-wal-limit").clone();
    assert_eq!(limit.severity, Severity::Info);
    assert!(
        limit.message.contains("100 GB") && limit.message.contains("copy again"),
        "{}",
        limit.message
    );
    assert!(limit.message.contains("500 GB free"), "{}", limit.message);

    // A limit above the free disk: the disk fills first.
    let mut f = facts();
    f.source_free_disk = Some(50 << 30);
    let disk = one(&preflight::rules(&f), "slot-wal-disk").clone();
    assert_eq!(disk.severity, Severity::Warning);
    assert!(
        disk.message.contains("only 50 GB is free"),
        "{}",
        disk.message
    );

    // No limit: information with the fix, unless the disk has less room than the database.
    let mut f = facts();
    f.source.max_slot_wal_keep_mb = -1;
    f.source_free_disk = None;
    let unlimited = one(&preflight::rules(&f), "slot-wal-unlimited").clone();
    assert_eq!(unlimited.severity, Severity::Info);
    assert!(
        unlimited.message.contains("could not be read from here"),
        "{}",
        unlimited.message
    );
    assert!(unlimited
        .fix
        .as_deref()
        .unwrap()
        .contains("max_slot_wal_keep_size"));
    f.source_free_disk = Some(4 << 20);
    assert_eq!(
        one(&preflight::rules(&f), "slot-wal-disk").severity,
        Severity::Warning
    );

    // Trigger mode holds no slot.
    let mut f = facts();
    f.mode = Mode::Trigger;
    assert!(preflight::rules(&f)
        .iter()
        .all(|x| !x.code.starts_with("slot-wal")));
}

#[test]
fn large_objects_are_copied_and_a_large_volume_is_a_warning_about_the_pause() {
    let mut f = facts();
    f.source.large_objects = 3;
    f.source.large_object_bytes = 64 << 20;
    let lo = one(&preflight::rules(&f), "large-objects").clone();
    assert_eq!(lo.severity, Severity::Info);
    assert!(
        lo.message.contains("3 large objects (64 MB") && lo.message.contains("copies them"),
        "{}",
        lo.message
    );
    f.source.large_object_bytes = 3 << 30;
    let lo = one(&preflight::rules(&f), "large-objects").clone();
    assert_eq!(lo.severity, Severity::Warning);
    assert!(lo.message.contains("the pause grows"), "{}", lo.message);
    assert!(lo.fix.as_deref().unwrap().contains("bytea"));
    f.source.large_objects = 0;
    assert!(preflight::rules(&f)
        .iter()
        .all(|x| x.code != "large-objects"));
}
