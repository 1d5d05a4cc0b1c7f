use cutover_pg::{connect, PgError, Side};
use cutover_testkit::{Pair, Pg};

#[tokio::test]
async fn connects_and_explains_what_fails() {
    let pg = Pg::start(Default::default(), Side::Source).await;
    let client = connect(&pg.url(), Side::Source).await.unwrap();
    let v: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert!(v.starts_with(char::is_numeric));

    let wrong = pg
        .url()
        .with_password(Some(cutover_core::Secret::new("not-the-password")));
    let err = connect(&wrong, Side::Source).await.unwrap_err();
    let shown = err.to_string();
    assert_eq!(
        shown,
        format!(
            "cannot connect to the source database (127.0.0.1:{}/{}): password authentication failed for user \"postgres\"; check the password in source.url",
            pg.cluster.port(),
            pg.db
        )
    );
    assert!(!shown.contains("not-the-password"));

    let nodb = pg.url().with_dbname("nope");
    let err = connect(&nodb, Side::Target).await.unwrap_err();
    assert!(err.to_string().ends_with("database \"nope\" does not exist; create it (createdb nope) or fix the database name in target.url"), "{err}");

    let port = pg.cluster.port();
    drop(client);
    drop(pg);
    let refused = cutover_core::ConnString::parse(&format!(
        "postgres://u:p@127.0.0.1:{port}/d?sslmode=disable"
    ))
    .unwrap();
    let err = connect(&refused, Side::Source).await.unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }));
    assert!(err.to_string().ends_with(&format!("connection refused; check that PostgreSQL is running and listening on 127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn a_pair_starts_with_the_right_wal_levels() {
    let pair = Pair::heroku_like().await;
    assert_eq!(
        pair.source.value("SHOW wal_level").await.as_deref(),
        Some("replica")
    );
    assert_eq!(
        pair.target.value("SHOW wal_level").await.as_deref(),
        Some("logical")
    );
}
